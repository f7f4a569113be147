"""Training ComfyUI's full-size SD1.5 UNet: kohya's keys in the file, and no second weight copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors import safe_open

from tests.reference_data import kohya_modules

from . import harness


@pytest.mark.slow
def test_training_full_sd15_saves_kohya_keys_without_a_second_weight_copy(comfy, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run([sys.executable, "-m", "tests.comfyui.full_sd15_run", str(tmp_path)],
                               cwd=harness.REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    growth = report["peak_rss"] - report["baseline_rss"]
    print(f"full SD1.5: weights {report['weight_bytes'] / 2**20:.0f} MiB, RSS growth while training "
          f"{growth / 2**20:.0f} MiB ({growth / report['weight_bytes']:.1%}), {report['seconds']:.1f} s for 2 steps")
    assert report["samples"] > 10 and report["steps"] == 2
    assert growth < report["weight_bytes"] / 4, report

    with safe_open(report["path"], "pt") as handle:
        keys = set(handle.keys())
    expected = {f"{name}.{suffix}" for name in kohya_modules("sd15")
                for suffix in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert keys == expected
