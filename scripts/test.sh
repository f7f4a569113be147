#!/usr/bin/env bash
# Runs the test tiers: the engine tier once, the ComfyUI tier once per ComfyUI checkout (COMFYUI_PATH,
# several separated by ':'; default ~/ComfyUI plus ~/ComfyUI-new if present), each with that checkout's
# Python. `--all` adds the tests marked slow. Other arguments go to pytest. See scripts/run_tests.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1   # tiny convolutions are ~100x slower with 2 threads on small machines
exec .venv/bin/python scripts/run_tests.py "$@"
