"""The benchmarks that need ComfyUI run on this checkout. Only that they run and report: timings on a shared
machine are not something a test can check."""

from __future__ import annotations

import os
import subprocess
import sys

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
