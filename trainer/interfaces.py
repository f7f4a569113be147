"""The small interfaces the engine trains through.

The engine never sees ComfyUI or diffusers objects: an adapter (nodes/comfy_model.py for ComfyUI,
trainer/diffusers_adapter.py for diffusers) hands it these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import nn

PREDICTION_TYPES = ("epsilon", "v_prediction")


class Denoiser(Protocol):
    """The diffusion network as the training objective calls it.

    `alphas_cumprod` is the 1000-step DDPM schedule (kohya: scaled_linear 0.00085..0.012);
    `__call__` takes the kohya-form noisy latents sqrt(a)*x0 + sqrt(1-a)*eps, integer timesteps and
    the text context, and returns the raw network output (eps or v, per `prediction_type`).
    """

    prediction_type: str
    alphas_cumprod: torch.Tensor
    device: torch.device
    compute_dtype: torch.dtype

    def scale_latents(self, raw_latents: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                 context: torch.Tensor) -> torch.Tensor: ...


class CaptionEncoder(Protocol):
    """Turns one caption into text-encoder hidden states of shape [1, tokens, dim]."""

    def encode(self, caption: str) -> torch.Tensor: ...


class LatentEncoder(Protocol):
    """Turns images [B, H, W, 3] in 0..1 into raw (unscaled) VAE latents [B, C, H/8, W/8].

    An encoder that also has `identity() -> str` (a name for its weights) can keep latents on disk: a file
    made by another VAE is then told apart and re-encoded.
    """

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...



@dataclass
class TrainableModel:
    """What one training run needs from a model.

    `lora_targets` maps kohya LoRA module names (`lora_unet_...`) to the layers plain LoRA wraps, in the
    model's module order; `frozen_root` is the network whose weights stay frozen while training.
    """

    denoiser: Denoiser
    lora_targets: dict[str, nn.Module]
    frozen_root: nn.Module
    base_model_version: str          # kohya's ss_base_model_version, e.g. "sd_v1"
    caption_encoder: CaptionEncoder
    # LoCon's extra layers (ResNet, down- and upsampling blocks), by kohya name; empty where not offered
    conv_targets: dict[str, nn.Module] = field(default_factory=dict)
    # called once the fixed captions are encoded, before the first step, with True when changing captions
    # (shuffle, dropout) still need the text encoder during training
    prepare: Callable[[bool], None] | None = None


    def targets_for(self, wraps_convolutions: bool) -> dict[str, nn.Module]:
        """The layers a network wraps: LoRA's, plus the convolution blocks' for LoCon."""
        return {**self.lora_targets, **self.conv_targets} if wraps_convolutions else dict(self.lora_targets)
