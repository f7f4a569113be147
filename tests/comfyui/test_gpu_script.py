"""benchmarks/gpu.sh --smoke through ComfyUI's own model classes (the GPU run's models when a checkout travels):
tiny SD15 / SDXL models in a ModelPatcher, wrapped by nodes/comfy_model.py, on the CPU, every configuration."""

from __future__ import annotations

from benchmarks.gpu_train_speed import CONFIGS
from tests.helpers import markdown_rows, run_gpu_script_smoke


def test_gpu_script_smoke_measures_every_configuration_through_comfyui(comfy, tmp_path):
    completed, table = run_gpu_script_smoke(str(tmp_path), "comfyui", {"COMFYUI_PATH": comfy.comfyui_path()})
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    rows = markdown_rows(table)
    assert list(rows) == [config.label() for config in CONFIGS]
    assert {label: cells[-1] for label, cells in rows.items() if cells[-1] != "ok"} == {}
    assert f"ComfyUI {comfy.comfyui_version()} at {comfy.comfyui_path()}" in table
