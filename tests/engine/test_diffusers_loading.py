"""A saved file loads into diffusers (its kohya converter + PEFT) and gives the trained network's output."""

import copy

import pytest
import safetensors.torch
import torch

from trainer.lora_file import TrainedLora, save_lora
from trainer.networks import LoRANetwork, NetworkConfig

pytest.importorskip("peft", reason="diffusers needs peft to load LoRAs; `bash scripts/setup.sh` installs it")


@pytest.mark.parametrize("algorithm", ["LoRA", "LoCon"])
def test_saved_lora_loads_in_diffusers_with_no_key_left(tmp_path, tiny_trainable, algorithm):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    unet = tiny_trainable.frozen_root
    torch.manual_seed(0)
    config = NetworkConfig(algorithm, rank=4, alpha=2, conv_rank=2, conv_alpha=1)
    targets = tiny_trainable.targets_for(config.uses_convolutions)
    network = LoRANetwork(targets, config)
    for module in network.lora_modules.values():
        torch.nn.init.normal_(module.up.weight, std=0.1)       # as if trained
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad(), network.attached(targets):
        trained = unet(x, t, encoder_hidden_states=context).sample

    path = save_lora(TrainedLora("d", network.kohya_state_dict(), {}, 1, 1), str(tmp_path), "d", "fp32")
    state = safetensors.torch.load_file(path)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(state))
    assert len(converted) == 2 * len(network.lora_modules) and len(alphas) == len(network.lora_modules)
    loaded = copy.deepcopy(unet)
    loaded.load_lora_adapter(converted, prefix="unet", network_alphas=alphas, adapter_name="trained")
    with torch.no_grad():
        out = loaded(x, t, encoder_hidden_states=context).sample
        base = unet(x, t, encoder_hidden_states=context).sample
    assert torch.allclose(out, trained, atol=1e-5)
    assert (base - trained).abs().max() > 1e-3
