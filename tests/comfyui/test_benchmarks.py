"""The benchmarks that need ComfyUI run on this checkout. Only that they run and report: timings on a shared
machine are not something a test can check."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from . import harness

TABLE_HEADER = ("| model | settings | bare ms/step | ours ms/step | built-in ms/step | ours / bare | built-in / ours "
                "| ours setup + 1st step s | built-in setup + 1st step s |")


def test_vs_comfyui_builtin_smoke_prints_its_table(comfy):
    env = dict(os.environ, OMP_NUM_THREADS="1", COMFYUI_PATH=harness.comfyui_path())
    completed = subprocess.run([sys.executable, "-m", "benchmarks.vs_comfyui_builtin", "--smoke"],
                               cwd=harness.REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = completed.stdout.splitlines()
    assert TABLE_HEADER in lines, completed.stdout[-4000:]
    rows = [line for line in lines[lines.index(TABLE_HEADER) + 2:] if line.startswith("| ")]
    settings = [row.split(" | ")[1] for row in rows]
    assert settings[0] == "checkpointing off" and settings[-1] == "checkpointing on (its default)", rows
    for row in rows:
        cells = row.strip("| ").split(" | ")
        assert len(cells) == 9, row
        for cell in cells[2:]:
            float(cell)         # every figure printed as a number


def test_flow_memory_counts_checkpointing_fp8_casts_and_the_lora(comfy, pack, tiny):
    """benchmarks/flow_memory.py on the tiny Flux (meta device): checkpointing keeps less than the whole forward,
    fp8 weights are half of bf16's, and without checkpointing ComfyUI's fp8 manual cast leaves in the saved
    activations a bf16 copy of each Linear weight the backward passes through (every one after the first block's
    LoRA; the layers before it need no backward); the LoRA part is 16 bytes for each of its parameters."""
    from benchmarks import flow_memory

    tiny_models, flow, networks, adapter = flow_memory.start()
    rank = 4
    bf16 = flow_memory.measure(tiny_models, flow, networks, adapter, "flux_dev", "bf16", 64, 1, rank, smoke=True)
    fp8 = flow_memory.measure(tiny_models, flow, networks, adapter, "flux_dev", "fp8", 64, 1, rank, smoke=True)
    plain, checkpointed = bf16
    assert 0 < checkpointed.activation_bytes < plain.activation_bytes
    assert fp8[0].weight_bytes * 2 == plain.weight_bytes
    base = flow_memory.meta_model(tiny_models, "flux_dev", "bf16", smoke=True)
    unet = base.diffusion_model
    downstream = [*unet.double_blocks[1:], *unet.single_blocks, unet.final_layer]
    copies = sum(module.weight.numel() * 2 for block in downstream for module in block.modules()
                 if isinstance(module, torch.nn.Linear))
    all_copies = sum(module.weight.numel() * 2 for module in unet.modules() if isinstance(module, torch.nn.Linear))
    assert plain.activation_bytes + copies <= fp8[0].activation_bytes <= plain.activation_bytes + all_copies
    targets = flow.flow_targets(base, flow.flow_family_of(base))
    lora = sum(rank * (layer.weight.shape[0] + layer.weight.shape[1]) for layer in targets.values())
    assert plain.lora_bytes == 16 * lora
