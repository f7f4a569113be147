#!/usr/bin/env bash
# One-time setup for development and tests.
# - .venv: the engine tier's environment, torch + torchvision pinned as a working pair, the test packages.
# - every ComfyUI checkout in COMFYUI_PATH (several separated by ':'; unset: ~/ComfyUI, plus ~/ComfyUI-new
#   when it exists) gets its own <checkout>/.venv, the Python that runs that ComfyUI in the ComfyUI tier:
#   torch, torchvision and torchaudio as a trio (newer ComfyUI imports torchaudio at start), the checkout's
#   requirements.txt and the test packages. A checkout's own pins (its frontend package, say) never meet
#   another checkout's. An existing <checkout>/.venv is updated, not replaced.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_PIN=${TORCH_PIN:-"torch==2.14.1 torchvision==0.29.1"}
COMFYUI_TORCH_PIN=${COMFYUI_TORCH_PIN:-"torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0"}

# make_venv FOLDER "PINS": a venv whose every later install resolves against the pins
make_venv() {
  local folder=$1 pins=$2
  [ -x "$folder/bin/python" ] || "$PYTHON" -m venv "$folder"
  printf '%s\n' $pins > "$folder/torch-constraints.txt"
  "$folder/bin/python" -m pip install --quiet --upgrade pip
  "$folder/bin/python" -m pip install --quiet -c "$folder/torch-constraints.txt" $pins ".[test]"
}

make_venv .venv "$TORCH_PIN"
echo "setup: .venv ready ($(.venv/bin/python -c 'import sys, torch; print("Python", sys.version.split()[0], "torch", torch.__version__)'))"

# the oldest Python that pyproject.toml's requires-python claims: the engine tier runs on it too
OLDEST=$(sed -n 's/^requires-python = ">=\([0-9.]*\)".*/\1/p' pyproject.toml)
found_oldest=""
for candidate in "${OLDEST_PYTHON:-}" "python$OLDEST" "$HOME"/.pyenv/versions/"$OLDEST".*/bin/python; do
  # a pyenv shim exists even where it cannot run that version: ask the interpreter itself
  if [ -n "$candidate" ] && "$candidate" -c "import sys; sys.exit(sys.version.startswith('$OLDEST.') is False)" 2>/dev/null; then
    found_oldest=$candidate
    break
  fi
done
if [ -n "$found_oldest" ]; then
  PYTHON=$found_oldest make_venv .venv-oldest "$TORCH_PIN"
  echo "setup: .venv-oldest ready ($(.venv-oldest/bin/python -c 'import sys, torch; print("Python", sys.version.split()[0], "torch", torch.__version__)'))"
else
  echo "setup: no Python $OLDEST found (set OLDEST_PYTHON); the engine tier will not run on the oldest claimed Python"
fi

checkouts=()
if [ -n "${COMFYUI_PATH:-}" ]; then
  IFS=':' read -r -a checkouts <<< "$COMFYUI_PATH"
else
  checkouts=("$HOME/ComfyUI")
  [ -d "$HOME/ComfyUI-new" ] && checkouts+=("$HOME/ComfyUI-new")
fi
for checkout in "${checkouts[@]}"; do
  [ -n "$checkout" ] || continue
  if [ ! -f "$checkout/requirements.txt" ]; then
    echo "setup: no ComfyUI checkout at $checkout; the ComfyUI tier will skip it"
    continue
  fi
  make_venv "$checkout/.venv" "$COMFYUI_TORCH_PIN"
  # the checkout's torch lines are replaced by the pinned trio above
  grep -vE '^(torch|torchvision|torchaudio)([<>=!~ ;]|$)' "$checkout/requirements.txt" > "$checkout/.venv/comfyui-requirements.txt"
  "$checkout/.venv/bin/python" -m pip install --quiet -c "$checkout/.venv/torch-constraints.txt" \
    -r "$checkout/.venv/comfyui-requirements.txt"
  # the browser test (tests/comfyui/test_frontend.py) drives Debian's chromium with playwright, where it is installed
  if command -v chromium > /dev/null; then
    "$checkout/.venv/bin/python" -m pip install --quiet -c "$checkout/.venv/torch-constraints.txt" playwright
  fi
  echo "setup: $checkout/.venv ready for ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$checkout/comfyui_version.py" 2>/dev/null) ($("$checkout/.venv/bin/python" -c 'import sys, torch; print("Python", sys.version.split()[0], "torch", torch.__version__)'))"
done
echo "setup: done"
