#!/usr/bin/env bash
# One-time setup for development and tests: a virtual environment in .venv with torch + torchvision
# pinned as a working pair, the test packages, and, when a ComfyUI checkout exists at $COMFYUI_PATH
# (default ~/ComfyUI), ComfyUI's own requirements so the ComfyUI test tier can run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
COMFYUI_PATH=${COMFYUI_PATH:-$HOME/ComfyUI}
TORCH_PIN=${TORCH_PIN:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# pip resolves every later install against the pinned pair, so nothing pulls in another torch
printf '%s\n' $TORCH_PIN > .venv/torch-constraints.txt
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c .venv/torch-constraints.txt $TORCH_PIN -r tests/requirements.txt

if [ -f "$COMFYUI_PATH/requirements.txt" ]; then
  # torchaudio has no build matching the pinned torch on PyPI; ComfyUI runs without it (audio nodes only)
  grep -vE '^(torch|torchvision|torchaudio)([<>=!~ ;]|$)' "$COMFYUI_PATH/requirements.txt" > .venv/comfyui-requirements.txt
  .venv/bin/python -m pip install --quiet -c .venv/torch-constraints.txt -r .venv/comfyui-requirements.txt requests
  echo "setup: ComfyUI requirements installed from $COMFYUI_PATH"
else
  echo "setup: no ComfyUI checkout at $COMFYUI_PATH; the ComfyUI test tier will be skipped"
fi
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
