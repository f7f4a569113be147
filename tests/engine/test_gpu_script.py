"""benchmarks/gpu.sh, the GPU machine's one prepared call, run here with --smoke: tiny models on the CPU, every
configuration, one step each, through diffusers' UNet and the engine's diffusers adapter (the Flux rows, which
need ComfyUI's classes, say so: tests/comfyui/test_gpu_script.py runs them). A mistake the CPU can catch must not
cost the GPU call."""

from __future__ import annotations

from benchmarks.gpu_train_speed import COMFYUI_ONLY, CONFIGS
from tests.helpers import markdown_rows, run_gpu_script_smoke


def test_gpu_script_smoke_measures_every_configuration_on_the_cpu(tmp_path):
    completed, table = run_gpu_script_smoke(str(tmp_path), "diffusers")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    rows = markdown_rows(table)
    assert list(rows) == [config.label() for config in CONFIGS]
    comfyui_only = {config.label() for config in CONFIGS if config.model in COMFYUI_ONLY}
    assert comfyui_only, "the Flux rows are gone"
    assert {label: cells[-1] for label, cells in rows.items() if cells[-1] != "ok"} == \
        {label: "skipped: needs ComfyUI's model classes (a ComfyUI checkout)" for label in comfyui_only}
    assert all(cells[0] and cells[1] and cells[2] for label, cells in rows.items()     # engine, bare, ratio
               if label not in comfyui_only)
    assert "SMOKE RUN" in table and "- device: CPU" in table and "diffusers" in table
    assert "| SD1.5 512 px, batch 1, rank 16, checkpointing off |" in completed.stdout     # printed as well
    assert (tmp_path / "gpu.log").is_file() and (tmp_path / "gpu_train_speed.json").is_file()
