"""Every algorithm's file, on tiny SD1.5- and SDXL-shaped ComfyUI models (real block structure, small widths),
UNet and text encoders together: ComfyUI's LoraLoader path takes every key, and the patched model computes
what the network computed (fp32, atol 1e-5)."""

from __future__ import annotations

import logging

import pytest
import torch

CASES = {
    "LoRA": {},
    "LoCon": dict(algorithm="LoCon", conv_rank=2, conv_alpha=1.0),
    "LoHa": dict(algorithm="LoHa"),
    "LoKr": dict(algorithm="LoKr"),
    "LoKr decompose_both factor 4": dict(algorithm="LoKr", rank=2, decompose_both=True, lokr_factor=4),
    "DyLoRA": dict(algorithm="DyLoRA", rank=4, dylora_unit=2),
    "DoRA": dict(dora=True),
    "LoCon DoRA": dict(algorithm="LoCon", dora=True, conv_rank=2),
}


def tiny_models(tiny, family: str):
    if family == "sd15":
        return tiny.sd15_model(), tiny.sd1_clip(), {}
    model = tiny.sdxl_model()
    adm = model.model.model_config.unet_config["adm_in_channels"]
    return model, tiny.sdxl_clip(), {"y": torch.randn(2, adm, generator=torch.Generator().manual_seed(9))}


def moved_network(network, seed: int = 0):
    """Every factor away from its init (zero up matrices included), as after training; DoRA's magnitude too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if name.endswith("dora_scale"):
                parameter.mul_(0.5 + torch.rand(parameter.shape, generator=generator))
            else:
                parameter.add_(0.2 * parameter.std().nan_to_num(0.0).clamp(min=0.1)
                               * torch.randn(parameter.shape, generator=generator))
    return network.eval()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_file_loads_in_loraloader_to_the_networks_output(comfy, pack, tiny, family, case, caplog):
    import comfy.model_management as mm
    import comfy.sd

    from comfyui_lora_trainer.nodes.comfy_targets import (COMFY_CONV_BLOCK_CLASSES, clip_targets, family_of,
                                                          unet_targets)
    from comfyui_lora_trainer.trainer.networks import LoRANetwork, NetworkConfig

    model, clip, extra = tiny_models(tiny, family)
    config = NetworkConfig(**{"rank": 4, "alpha": 2.0, "train_on": "both", **CASES[case]}).validated()
    kind = family_of(model.model.model_config)
    unet, unet_config = model.model.diffusion_model, model.model.model_config.unet_config
    targets = {**clip_targets(clip, kind), **unet_targets(unet, unet_config, kind)}
    if config.uses_convolutions:
        targets.update(unet_targets(unet, unet_config, kind, COMFY_CONV_BLOCK_CLASSES))
    torch.manual_seed(0)
    network = moved_network(LoRANetwork(targets, config))
    tensors = network.kohya_state_dict()
    assert any(k.startswith("lora_te") for k in tensors) and any(k.startswith("lora_unet_") for k in tensors)

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 16, 16, generator=generator)
    timesteps = torch.tensor([10.0, 700.0])
    context = torch.randn(2, 77, unet_config["context_dim"], generator=generator)
    tokens = clip.tokenize("a photo of sks dog")
    with torch.no_grad():
        plain = unet(x, timesteps, context=context, **extra)
        plain_text = clip.encode_from_tokens(tokens)
        with network.attached(targets):
            ours = unet(x, timesteps, context=context, **extra)
            ours_text = clip.encode_from_tokens(tokens)

        with caplog.at_level(logging.WARNING):
            patched_model, patched_clip = comfy.sd.load_lora_for_models(model, clip, tensors, 1.0, 1.0)
        assert "lora key not loaded" not in caplog.text and "NOT LOADED" not in caplog.text, caplog.text
        patched_model.patch_model()
        try:
            theirs = unet(x, timesteps, context=context, **extra)
        finally:
            patched_model.unpatch_model()
        theirs_text = patched_clip.encode_from_tokens(tokens)
        mm.unload_all_models()

    assert (ours - plain).abs().max() > 1e-3, "the network hardly changes the output: the comparison means little"
    assert (ours_text - plain_text).abs().max() > 1e-3, "the text encoder's modules hardly change its output"
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs_text, ours_text, atol=1e-5, rtol=1e-5)
