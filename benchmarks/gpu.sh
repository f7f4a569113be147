#!/usr/bin/env bash
# Training speed and memory on the GPU machine, in one call: the engine's step against the bare loop on the
# full-size SD1.5 UNet (512 px; batch 1 and 4, rank 16 and 32) and SDXL UNet (1024 px, batch 1), bf16, each with
# gradient checkpointing off and on, beside the published H100 figures; then full-size Flux.1 dev (bf16, random
# weights, 512 and 1024 px, batch 1, rank 16, checkpointing on; ComfyUI's classes only, last, so the time budget
# cuts them first: `--model flux` runs them alone). Prints a Markdown table and writes it
# (gpu_train_speed.md / .json, and this run's log gpu.log) to $OUT, or to benchmark-output/ where OUT is unset.
# The measuring is benchmarks/gpu_train_speed.py; its docstring says what each column is.
#
# Before the call, here:  bash benchmarks/prepare_gpu_carry.sh
#   (ComfyUI v0.3.64 without its .git, models and tests into .gpu-carry/ComfyUI, and the wheels the GPU machine
#   lacks into .gpu-carry/wheels; it prints the size that travels)
# The device call (the run tool), one call, under 6 minutes:
#   run(command="bash benchmarks/gpu.sh", carry=[".gpu-carry"], timeout_s=400)
# Then paste the table into benchmarks/RESULTS.md ("GPU (benchmarks/gpu.sh)").
#
# Here, before that: bash benchmarks/gpu.sh --smoke   (tiny models on the CPU, every configuration, one step each;
# tests/engine/test_gpu_script.py runs it). Other arguments go to gpu_train_speed.py (--backend comfyui|diffusers,
# --model sd15|sdxl, --steps N, --budget-s S, ...).
#
# Models: ComfyUI's own classes when a checkout is at hand (COMFYUI_PATH, else .gpu-carry/ComfyUI), else diffusers'
# UNet through the engine's adapter (the diffusers wheel travels in .gpu-carry/wheels for that).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}               # the GPU machine's python3 is the one with torch
CARRY=.gpu-carry
SITE=${GPU_SITE:-/tmp/site}             # where the carried wheels are installed
LIMIT_S=${GPU_SH_LIMIT_S:-340}          # the measuring's hard stop; its own budget (--budget-s) is 290 s
OUT_DIR=${OUT:-benchmark-output}
started=$SECONDS

smoke=0
for argument in "$@"; do
    if [[ $argument == --smoke ]]; then smoke=1; fi
done

# The GPU machine has no registry: the packages it lacks travel as wheels and go into a folder of their own.
# Not in a smoke run: here they are installed already, and an install would only cost the test its seconds.
if [[ $smoke == 0 ]] && compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$CARRY"/wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu.sh: installed $(ls "$CARRY"/wheels | tr '\n' ' ')"
fi
if [[ -z ${COMFYUI_PATH:-} && -f $CARRY/ComfyUI/comfy/model_patcher.py ]]; then
    export COMFYUI_PATH="$PWD/$CARRY/ComfyUI"
fi
export HF_HUB_OFFLINE=1                 # nothing outside the GPU machine can be reached; never wait for it

mkdir -p "$OUT_DIR"
echo "gpu.sh: $("$PYTHON" --version 2>&1), COMFYUI_PATH=${COMFYUI_PATH:-unset}, results in $OUT_DIR"
if [[ $smoke == 0 ]] && command -v nvidia-smi >/dev/null; then     # the card and driver, for the record
    echo "gpu.sh: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true)"
fi
# SIGINT at the limit: the measuring marks what it could not run as skipped and keeps the table it has
status=0
timeout --signal=INT --kill-after=20 "$LIMIT_S" "$PYTHON" -m benchmarks.gpu_train_speed --out-dir "$OUT_DIR" "$@" \
    2>&1 | tee "$OUT_DIR/gpu.log" || status=$?
echo "gpu.sh: done in $((SECONDS - started)) s, exit status $status" | tee -a "$OUT_DIR/gpu.log"
exit "$status"
