"""kohya's exact module names and shapes, taken from ComfyUI's own full-size models (on the meta device) for
SD1.5, SD2.x and SDXL, UNet with and without LoCon's convolutions and the text encoders, against the names
generated from kohya's own code (tests/reference/, scripts/make_kohya_reference.py)."""

from __future__ import annotations

import types

import pytest

from tests.reference_data import kohya_modules, lora_shapes

UNET_COUNTS = {"sd15": (192, 278), "sd2": (192, 278), "sdxl": (722, 788)}
TEXT_ENCODER_COUNTS = {"sd15": 72, "sd2": 138, "sdxl": 72 + 192}


def full_size_unet(tiny, family: str):
    import comfy.supported_models as models

    config_class, unet_config = {"sd15": (models.SD15, tiny.sd15_unet_config()),
                                 "sd2": (models.SD20, tiny.sd2_unet_config()),
                                 "sdxl": (models.SDXL, tiny.sdxl_unet_config())}[family]
    return tiny.model_on(config_class, unet_config, device="meta").model


@pytest.mark.parametrize("family", list(UNET_COUNTS))
@pytest.mark.parametrize("with_conv", [False, True], ids=["LoRA", "LoCon"])
def test_unet_names_and_shapes_are_kohyas(comfy, pack, tiny, family, with_conv):
    from comfyui_lora_trainer.nodes.comfy_targets import COMFY_CONV_BLOCK_CLASSES, family_of, unet_targets
    from comfyui_lora_trainer.trainer.networks import LoRANetwork, NetworkConfig

    base = full_size_unet(tiny, family)
    kind = family_of(base.model_config)
    unet, unet_config = base.diffusion_model, base.model_config.unet_config
    targets = unet_targets(unet, unet_config, kind)
    if with_conv:
        targets.update(unet_targets(unet, unet_config, kind, COMFY_CONV_BLOCK_CLASSES))
    expected = kohya_modules(family, with_conv=with_conv)
    assert len(expected) == UNET_COUNTS[family][with_conv]
    assert set(targets) == set(expected) and len(targets) == len(expected)
    config = NetworkConfig("LoCon" if with_conv else "LoRA", rank=8, alpha=4, conv_rank=4, conv_alpha=1)
    tensors = LoRANetwork(targets, config).kohya_state_dict()
    assert len(tensors) == 3 * len(expected)
    for name, (layer_type, shape) in expected.items():
        rank = 4 if layer_type == "Conv2d" and shape[2] != (1, 1) else 8      # kohya: conv_dim on 3x3 only
        down, up = lora_shapes(layer_type, shape, rank=rank)
        assert tuple(tensors[f"{name}.lora_down.weight"].shape) == down, name
        assert tuple(tensors[f"{name}.lora_up.weight"].shape) == up, name
        assert tensors[f"{name}.alpha"].dim() == 0


@pytest.mark.parametrize("family", list(TEXT_ENCODER_COUNTS))
def test_text_encoder_names_and_shapes_are_kohyas(comfy, pack, tiny, family):
    from comfyui_lora_trainer.nodes.comfy_targets import clip_targets
    from comfyui_lora_trainer.trainer.families import SD1, SD2, SDXL

    clip = types.SimpleNamespace(cond_stage_model=tiny.text_encoders_on_meta(family))
    targets = clip_targets(clip, {"sd15": SD1, "sd2": SD2, "sdxl": SDXL}[family])
    expected = kohya_modules(f"{family}_te")
    assert len(expected) == TEXT_ENCODER_COUNTS[family]
    assert sorted(targets) == sorted(expected)
    for name, (layer_type, (fan_in, fan_out)) in expected.items():
        assert layer_type == "Linear" and tuple(targets[name].weight.shape) == (fan_out, fan_in), name


def test_a_clip_without_the_familys_encoder_is_refused_by_name(comfy, pack, tiny):
    from comfyui_lora_trainer.nodes.comfy_targets import clip_targets
    from comfyui_lora_trainer.trainer.errors import ModelError
    from comfyui_lora_trainer.trainer.families import SDXL

    clip = types.SimpleNamespace(cond_stage_model=tiny.text_encoders_on_meta("sd15"))
    with pytest.raises(ModelError, match="no clip_g text encoder"):
        clip_targets(clip, SDXL)


# kohya's LoRA module count for each full-size DiT (tiny_models.FULL_SIZE_DITS)
DIT_MODULE_COUNTS = {"flux_dev": 304, "sd35_large": 377, "sd35_medium": 263}


@pytest.mark.parametrize("model", list(DIT_MODULE_COUNTS))
def test_flow_dit_names_and_shapes_are_kohyas(comfy, pack, tiny, model):
    """Flux.1 dev (kohya's lora_flux) and SD3.5 Large / Medium (kohya's lora_sd3), full size on the meta device:
    the family the MODEL is taken for, and every module name and shape, equal kohya's own."""
    from comfyui_lora_trainer.nodes.comfy_flow import flow_family_of, flow_targets

    count = DIT_MODULE_COUNTS[model]
    base = tiny.full_size_dit(model, device="meta").model
    family = flow_family_of(base)
    assert family.key == {"flux_dev": "flux1_dev", "sd35_large": "sd35_large", "sd35_medium": "sd35_medium"}[model]
    targets = flow_targets(base, family)
    expected = kohya_modules(model)
    assert len(expected) == count
    assert list(targets) == list(expected)                  # kohya's module order too
    for name, (layer_type, (fan_in, fan_out)) in expected.items():
        assert layer_type == "Linear" and tuple(targets[name].weight.shape) == (fan_out, fan_in), name
