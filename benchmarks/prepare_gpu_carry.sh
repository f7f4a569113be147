#!/usr/bin/env bash
# Makes .gpu-carry/, what benchmarks/gpu.sh needs on the GPU machine beside the repository, and checks that it
# fits. Run here before the device call (gpu.sh's header has it); the device machine reaches no network.
#   bash benchmarks/prepare_gpu_carry.sh        (COMFYUI_PATH=<checkout> to copy another one than ~/ComfyUI)
#
# - .gpu-carry/ComfyUI: the checkout (v0.3.64 at ~/ComfyUI) without .git, virtual environments, models, user data,
#   inputs and outputs, custom nodes, tests, CI files, frontend builds and bytecode; then imported from the copy
#   (comfy.model_base, model_patcher, sd, samplers) to prove nothing it needs was left out.
# - .gpu-carry/wheels: the packages that import, and the diffusers fallback, need and the GPU machine lacks
#   (benchmarks/gpu_carry.py reads them off the imports against benchmarks/gpu_machine_packages.txt; for v0.3.64:
#   torchsde, trampoline, diffusers), fetched for its Python 3.12 with the device notes' pip download command.
#   Without a package index here that fails, and so does this script: gpu.sh would then lack torchsde, and
#   ComfyUI's comfy.samplers could not be imported there.
# - .gpu-carry/ is git-ignored (added to .gitignore), so the device call names it in `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."

SOURCE=${COMFYUI_PATH:-$HOME/ComfyUI}
SOURCE=${SOURCE%%:*}                    # the first checkout where COMFYUI_PATH lists several (scripts/test.sh)
CARRY=.gpu-carry
LIMIT_MIB=64                            # what may travel with the working tree, carried paths included
PIP_PYTHON=${PIP_PYTHON:-python3}

fail() {
    echo "prepare_gpu_carry.sh: $*" >&2
    exit 1
}

[[ -f $SOURCE/comfy/model_patcher.py ]] || fail "no ComfyUI checkout at $SOURCE (set COMFYUI_PATH)"
SOURCE=$(cd "$SOURCE" && pwd)
# the Python that runs this checkout imports it here: its own virtual environment, else the repository's
COMFY_PYTHON=$SOURCE/.venv/bin/python
[[ -x $COMFY_PYTHON ]] || COMFY_PYTHON=.venv/bin/python

grep -qxF '.gpu-carry/' .gitignore || echo '.gpu-carry/' >>.gitignore

copy_comfyui() {
    rm -rf "$CARRY/ComfyUI"
    mkdir -p "$CARRY/ComfyUI"
    # --anchored: only the checkout's own top-level folders of these names (comfy/ldm/models is code)
    tar -C "$SOURCE" --anchored \
        --exclude=./.git --exclude='./.venv*' --exclude=./venv --exclude=./.github --exclude=./.ci \
        --exclude=./models --exclude=./user --exclude=./input --exclude=./output --exclude=./temp \
        --exclude=./custom_nodes --exclude=./tests --exclude=./tests-unit --exclude=./web \
        --exclude=./script_examples --no-anchored --exclude=__pycache__ --exclude='*.pyc' \
        -cf - . | tar -C "$CARRY/ComfyUI" -xf -
}

# the wheels the GPU machine lacks, for its Python: pure-Python ones and the usual manylinux tags (pip matches a
# platform tag exactly)
download_wheels() {
    local needs=("$@") fresh
    fresh=$(mktemp -d)
    if ! "$PIP_PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -q -d "$fresh" "${needs[@]}"; then
        rm -rf "$fresh"
        fail "pip download of ${needs[*]} failed (no package index reachable from here?). They must travel in" \
            "$CARRY/wheels: the GPU machine has no network. Fetch them where pip works and put the .whl files there."
    fi
    rm -rf "$CARRY/wheels"
    mv "$fresh" "$CARRY/wheels"
}

mib() {
    echo $((($1 + 1048575) / 1048576))
}

# bytes of what travels besides the carried paths: tracked files and untracked ones git does not ignore (a tracked
# file deleted here counts nothing)
working_tree_bytes() {
    git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
        awk '{s += $1} END {print s + 0}' || true
}

copy_comfyui
echo "prepare_gpu_carry.sh: copied ComfyUI $(cut -d'"' -f2 <"$SOURCE/comfyui_version.py" | tail -1) from $SOURCE"
# imported from the copy, with no bytecode written into it
errors=$(mktemp)
if ! needs_text=$(PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1 "$COMFY_PYTHON" -m benchmarks.gpu_carry \
    --comfyui "$CARRY/ComfyUI" --diffusers 2>"$errors"); then
    tail -20 "$errors" >&2
    fail "ComfyUI's model code does not import from the copy in $CARRY/ComfyUI with $COMFY_PYTHON (above)"
fi
rm -f "$errors"
NEEDS=()
if [[ -n $needs_text ]]; then
    mapfile -t NEEDS <<<"$needs_text"
fi
echo "prepare_gpu_carry.sh: the GPU machine lacks: ${NEEDS[*]:-nothing}"
if ((${#NEEDS[@]})); then
    download_wheels "${NEEDS[@]}"
else
    rm -rf "$CARRY/wheels"
fi

comfy_bytes=$(du -sb "$CARRY/ComfyUI" | cut -f1)
wheel_bytes=0
if [[ -d $CARRY/wheels ]]; then
    wheel_bytes=$(du -sb "$CARRY/wheels" | cut -f1)
fi
tree_bytes=$(working_tree_bytes)
total=$((comfy_bytes + wheel_bytes + tree_bytes))
echo "prepare_gpu_carry.sh: $CARRY/ComfyUI $(mib "$comfy_bytes") MiB, $CARRY/wheels $(mib "$wheel_bytes") MiB" \
    "($(ls "$CARRY/wheels" 2>/dev/null | tr '\n' ' ')), working tree $(mib "$tree_bytes") MiB:" \
    "$(mib "$total") MiB of the $LIMIT_MIB MiB that may travel"
((total < LIMIT_MIB * 1048576)) || fail "too big to travel: leave something out"
