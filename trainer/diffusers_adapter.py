"""Adapters from diffusers' UNet2DConditionModel / AutoencoderKL / a CLIP text model to the engine's interfaces.

Used by the engine tests and by headless use; ComfyUI objects have their own adapter in nodes/.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .interfaces import TrainableModel
from .families import SD1
from .kohya_names import block_targets, text_encoder_targets
from .latent_disk import module_identity
from .objective import scaled_linear_alphas_cumprod

# the blocks kohya's LoCon (networks.lora with conv_dim) wraps besides the transformers
DIFFUSERS_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")

SD1_LATENT_SCALE = 0.18215


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
            time_ids = torch.tensor([[*size.original_hw, *size.crop_top_left, *size.target_hw] for size in sizes],
                                    dtype=self.compute_dtype, device=noisy_latents.device)
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


def diffusers_sd1_trainable(unet: nn.Module, caption_encoder, prediction_type: str = "epsilon",
                            text_encoder: nn.Module | None = None) -> TrainableModel:
    """`text_encoder`: a transformers CLIPTextModel that `caption_encoder` runs, for networks that train it."""
    targets = block_targets(unet, ("Transformer2DModel",))
    conv_targets = block_targets(unet, DIFFUSERS_CONV_BLOCKS)
    te_names = SD1.text_encoders[0]
    text_targets = (None if text_encoder is None else
                    lambda: text_encoder_targets(text_encoder, te_names.prefix, te_names.kohya_layers))
    return TrainableModel(DiffusersUNetDenoiser(unet, prediction_type), targets, unet, SD1.version, caption_encoder,
                          conv_targets=conv_targets, text_encoder_targets=text_targets, text_encoder_root=text_encoder,
                          checkpoint_blocks=[m for m in unet.modules()
                                             if type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel")])
