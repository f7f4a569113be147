#!/usr/bin/env bash
# Runs both test tiers: the engine tier always, the ComfyUI tier against $COMFYUI_PATH (default ~/ComfyUI)
# when a checkout is there. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1   # tiny convolutions are ~100x slower with 2 threads on small machines
exec .venv/bin/python -m pytest "$@"
