"""ComfyUI's full-size SD1.5 UNet: kohya's exact 192 module names and shapes, and no second weight copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors import safe_open

from tests.reference_data import kohya_modules, lora_shapes

from . import harness


def test_lora_targets_are_kohyas_192_modules_with_their_shapes(comfy, pack, tiny):
    import torch
    import comfy.supported_models

    from comfyui_lora_trainer.nodes.comfy_model import sd1_lora_targets
    from comfyui_lora_trainer.trainer.networks import LoRANetwork, NetworkConfig

    config = comfy.supported_models.SD15(tiny.sd15_unet_config())
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({}, device="meta")          # real shapes, no weight memory
    targets = sd1_lora_targets(base.diffusion_model, base.model_config.unet_config)
    expected = kohya_modules("sd15")
    assert set(targets) == set(expected) and len(targets) == 192
    tensors = LoRANetwork(targets, NetworkConfig(rank=8, alpha=4)).kohya_state_dict()
    assert len(tensors) == 3 * 192
    for name, (layer_type, shape) in expected.items():
        down, up = lora_shapes(layer_type, shape, rank=8)
        assert tuple(tensors[f"{name}.lora_down.weight"].shape) == down, name
        assert tuple(tensors[f"{name}.lora_up.weight"].shape) == up, name
        assert tensors[f"{name}.alpha"].dim() == 0 and float(tensors[f"{name}.alpha"]) == 4.0


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


def test_locon_targets_are_kohyas_278_modules_with_their_shapes(comfy, pack, tiny):
    import torch
    import comfy.supported_models

    from comfyui_lora_trainer.nodes.comfy_model import COMFY_CONV_BLOCK_CLASSES, sd1_lora_targets
    from comfyui_lora_trainer.trainer.networks import LoRANetwork, NetworkConfig

    config = comfy.supported_models.SD15(tiny.sd15_unet_config())
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({}, device="meta")
    unet, unet_config = base.diffusion_model, base.model_config.unet_config
    targets = {**sd1_lora_targets(unet, unet_config), **sd1_lora_targets(unet, unet_config, COMFY_CONV_BLOCK_CLASSES)}
    expected = kohya_modules("sd15", with_conv=True)
    assert set(targets) == set(expected) and len(targets) == 278
    network = NetworkConfig("LoCon", rank=8, alpha=4, conv_rank=4, conv_alpha=1)
    tensors = LoRANetwork(targets, network).kohya_state_dict()
    for name, (layer_type, shape) in expected.items():
        rank = 4 if layer_type == "Conv2d" and shape[2] == (3, 3) else 8     # kohya: conv_dim on 3x3 only
        down, up = lora_shapes(layer_type, shape, rank=rank)
        assert tuple(tensors[f"{name}.lora_down.weight"].shape) == down, name
        assert tuple(tensors[f"{name}.lora_up.weight"].shape) == up, name
