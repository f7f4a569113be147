"""Adapters from diffusers' UNet2DConditionModel / AutoencoderKL / CLIP text models to the engine's interfaces.

Used by the engine tests, the command line's diffusers folders and headless use; ComfyUI objects have their own
adapter in nodes/. Module names follow trainer/families.py: SD1.x / SD2.x LoRAs are named from diffusers' own
paths, SDXL LoRAs from the original SAI (LDM) layout, which `sdxl_ldm_paths` derives from the UNet's blocks.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .device_copies import to_device
from .interfaces import TrainableModel
from .families import SD1, Family
from .kohya_names import block_targets, text_encoder_targets
from .errors import ModelError
from .latent_disk import module_identity
from .objective import scaled_linear_alphas_cumprod

# the blocks kohya's LoCon (networks.lora with conv_dim) wraps besides the transformers
DIFFUSERS_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")

SD1_LATENT_SCALE = 0.18215

# diffusers' ResnetBlock2D layer -> the LDM ResBlock's (the ones kohya's LoCon wraps: convolutions, time embedding)
LDM_RESNET_LAYERS = {"conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "conv2": "out_layers.3",
                     "conv_shortcut": "skip_connection", "norm1": "in_layers.0", "norm2": "out_layers.0"}


class DiffusersUNetDenoiser:
    def __init__(self, unet: nn.Module, prediction_type: str = "epsilon", latent_scale: float = SD1_LATENT_SCALE):
        self.unet = unet
        self.prediction_type = prediction_type
        self.latent_scale = latent_scale
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self.device = next(unet.parameters()).device
        self.compute_dtype = next(unet.parameters()).dtype

    def scale_latents(self, raw_latents: torch.Tensor) -> torch.Tensor:
        return raw_latents * self.latent_scale

    def __call__(self, noisy_latents, timesteps, context, pooled=None, sizes=None):
        extra = {}
        if pooled is not None:               # SDXL-style UNets (addition_embed_type "text_time"), as kohya feeds them
            time_ids = to_device(torch.tensor([[*size.original_hw, *size.crop_top_left, *size.target_hw]
                                               for size in sizes], dtype=self.compute_dtype), noisy_latents.device)
            extra["added_cond_kwargs"] = {"text_embeds": pooled.to(self.compute_dtype), "time_ids": time_ids}
        return self.unet(noisy_latents.to(self.compute_dtype), timesteps,
                         encoder_hidden_states=context.to(self.compute_dtype), **extra).sample


class DiffusersVAEEncoder:
    """Encodes with the posterior mean, as ComfyUI's VAE.encode does (see latent_cache notes)."""

    def __init__(self, vae: nn.Module):
        self.vae = vae

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        images = (pixels.permute(0, 3, 1, 2) * 2.0 - 1.0).to(param.device, param.dtype)
        return self.vae.encode(images).latent_dist.mean

    def identity(self) -> str:
        return module_identity(self.vae)


class FunctionCaptionEncoder:
    def __init__(self, encode: Callable[[str], torch.Tensor]):
        self._encode = encode

    def encode(self, caption: str) -> torch.Tensor:
        return self._encode(caption)


def sdxl_ldm_block_prefixes(unet: nn.Module) -> dict[str, str]:
    """diffusers block path (`down_blocks.1.attentions.0`) -> the LDM block it is (`input_blocks.4.1`).

    The LDM UNet numbers its blocks in one run per side: input_blocks 0 is conv_in, then each down level's
    (ResNet, transformer) pairs and its downsampler; middle_block is ResNet, transformer, ResNet; output_blocks
    holds each up level's pairs, the level's upsampler sitting in its last pair. Counted from the model itself,
    so any layers_per_block maps.
    """
    prefixes = {}
    index = 1
    for level, block in enumerate(unet.down_blocks):
        for pair in range(len(block.resnets)):
            prefixes[f"down_blocks.{level}.resnets.{pair}"] = f"input_blocks.{index}.0"
            prefixes[f"down_blocks.{level}.attentions.{pair}"] = f"input_blocks.{index}.1"
            index += 1
        if getattr(block, "downsamplers", None):
            prefixes[f"down_blocks.{level}.downsamplers.0"] = f"input_blocks.{index}.0"
            index += 1
    prefixes.update({"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
                     "mid_block.resnets.1": "middle_block.2"})
    index = 0
    for level, block in enumerate(unet.up_blocks):
        has_attentions = bool(getattr(block, "attentions", None))
        for pair in range(len(block.resnets)):
            prefixes[f"up_blocks.{level}.resnets.{pair}"] = f"output_blocks.{index}.0"
            prefixes[f"up_blocks.{level}.attentions.{pair}"] = f"output_blocks.{index}.1"
            index += 1
        if getattr(block, "upsamplers", None):
            prefixes[f"up_blocks.{level}.upsamplers.0"] = f"output_blocks.{index - 1}.{2 if has_attentions else 1}"
    return prefixes


def sdxl_ldm_paths(unet: nn.Module) -> Callable[[str], str]:
    """A rename for block_targets: a diffusers SDXL UNet's layer path -> its LDM path, which kohya's SDXL names use.
    Transformer internals are named alike in both layouts; ResNet layers and the downsampler's conv are not."""
    prefixes = sdxl_ldm_block_prefixes(unet)

    def rename(path: str) -> str:
        parts = path.split(".")
        block = ".".join(parts[:4]) if parts[0] in ("down_blocks", "up_blocks") else ".".join(parts[:3])
        if block not in prefixes:
            raise ModelError(f"Layer {path} is in no block of the SDXL layout the trainer knows; the LoRA would "
                             "not load in ComfyUI or kohya, so nothing is trained.")
        rest = parts[len(block.split(".")):]
        if ".resnets." in f".{block}." and rest and rest[0] in LDM_RESNET_LAYERS:
            rest = LDM_RESNET_LAYERS[rest[0]].split(".") + rest[1:]
        elif ".downsamplers." in block and rest[:1] == ["conv"]:
            rest = ["op"] + rest[1:]
        return ".".join([prefixes[block], *rest])

    return rename


def diffusers_trainable(unet: nn.Module, caption_encoder, family: Family = SD1, prediction_type: str = "epsilon",
                        text_encoders: tuple[nn.Module, ...] = (), latent_scale: float = SD1_LATENT_SCALE
                        ) -> TrainableModel:
    """`text_encoders`: the transformers CLIP text models `caption_encoder` runs, in the family's order (SDXL:
    CLIPTextModel, then CLIPTextModelWithProjection), for networks that train them; () offers none."""
    rename = sdxl_ldm_paths(unet) if family.unet_paths == "ldm" else (lambda path: path)
    targets = block_targets(unet, ("Transformer2DModel",), rename)
    conv_targets = block_targets(unet, DIFFUSERS_CONV_BLOCKS, rename)
    if text_encoders and len(text_encoders) != len(family.text_encoders):
        raise ModelError(f"{family.title} has {len(family.text_encoders)} text encoders; {len(text_encoders)} given.")

    def text_targets() -> dict[str, nn.Module]:
        found = {}
        for encoder, names in zip(text_encoders, family.text_encoders):
            found.update(text_encoder_targets(encoder, names.prefix, names.kohya_layers))
        return found

    # one root holding every text encoder, so freezing and device moves reach all of them
    text_root = None if not text_encoders else text_encoders[0] if len(text_encoders) == 1 else \
        nn.ModuleList(text_encoders)
    return TrainableModel(DiffusersUNetDenoiser(unet, prediction_type, latent_scale), targets, unet, family.version,
                          caption_encoder, conv_targets=conv_targets,
                          text_encoder_targets=text_targets if text_encoders else None, text_encoder_root=text_root,
                          checkpoint_blocks=[m for m in unet.modules()
                                             if type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel")])


def diffusers_sd1_trainable(unet: nn.Module, caption_encoder, prediction_type: str = "epsilon",
                            text_encoder: nn.Module | None = None) -> TrainableModel:
    """`text_encoder`: a transformers CLIPTextModel that `caption_encoder` runs, for networks that train it."""
    return diffusers_trainable(unet, caption_encoder, SD1, prediction_type,
                               () if text_encoder is None else (text_encoder,))
