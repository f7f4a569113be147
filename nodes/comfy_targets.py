"""Which layers of a ComfyUI MODEL / CLIP a network wraps, under kohya's names, per model family.

The family comes from ComfyUI's own model config; the names follow trainer/families.py: SD1.x / SD2.x UNets
are named from diffusers paths (ComfyUI's unet_to_diffusers table, inverted), SDXL from ComfyUI's own LDM
paths (which are kohya's SAI paths), text encoders from the CLIP module paths below `transformer`.
"""

from __future__ import annotations

from ..trainer.errors import ModelError
from ..trainer.families import SD1, SD2, SDXL, Family
from ..trainer.kohya_names import block_targets, text_encoder_targets

# ComfyUI's class for what kohya (and diffusers) call Transformer2DModel
COMFY_TRANSFORMER_CLASSES = ("SpatialTransformer",)
# ComfyUI's classes for kohya's LoCon blocks: ResnetBlock2D, Downsample2D, Upsample2D
COMFY_CONV_BLOCK_CLASSES = ("ResBlock", "Downsample", "Upsample")


def family_of(model_config) -> Family | None:
    """The family of a ComfyUI model config (exact classes: refiners, inpainting and distilled variants are
    other models), or None."""
    import comfy.supported_models as models

    return {models.SD15: SD1, models.SD20: SD2, models.SDXL: SDXL}.get(type(model_config))


def ldm_to_diffusers_paths(unet_config: dict) -> dict[str, str]:
    """ComfyUI (LDM) module path -> diffusers module path, by inverting comfy.utils.unet_to_diffusers."""
    import comfy.utils

    mapping = {}
    for diffusers_key, ldm_key in comfy.utils.unet_to_diffusers(unet_config).items():
        if diffusers_key.endswith(".weight") and ldm_key.endswith(".weight"):
            mapping[ldm_key[: -len(".weight")]] = diffusers_key[: -len(".weight")]
    return mapping


def unet_targets(unet, unet_config: dict, family: Family, block_classes=COMFY_TRANSFORMER_CLASSES) -> dict:
    """kohya name -> ComfyUI layer for every Linear/Conv2d in the given blocks (the transformers by default;
    LoCon's ResNet and sampling blocks with COMFY_CONV_BLOCK_CLASSES)."""
    if family.unet_paths == "ldm":
        return block_targets(unet, block_classes)
    paths = ldm_to_diffusers_paths(unet_config)

    def rename(ldm_path: str) -> str:
        if ldm_path not in paths:
            raise ModelError(f"Layer {ldm_path} has no diffusers name in ComfyUI's key table; this {family.title} "
                             "UNet layout is not one the trainer knows.")
        return paths[ldm_path]

    return block_targets(unet, block_classes, rename)



def clip_targets(clip, family: Family) -> dict:
    """kohya name -> Linear of every text encoder the family has (lora_te_ / lora_te1_ + lora_te2_)."""
    if clip is None:
        raise ModelError("Training the text encoder needs the CLIP input of Train connected.")
    encoders = clip.cond_stage_model
    targets = {}
    for names in family.text_encoders:
        encoder = getattr(encoders, names.component, None)
        if encoder is None or not hasattr(encoder, "transformer"):
            raise ModelError(f"This CLIP has no {names.component} text encoder, which {family.title} LoRAs train; "
                             f"connect the CLIP loaded with the {family.title} checkpoint.")
        targets.update(text_encoder_targets(encoder.transformer, names.prefix, names.kohya_layers))
    return targets
