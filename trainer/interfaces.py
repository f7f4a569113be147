"""The small interfaces the engine trains through.

The engine never sees ComfyUI or diffusers objects: an adapter (nodes/comfy_model.py for ComfyUI,
trainer/diffusers_adapter.py for diffusers) hands it these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ContextManager, Protocol

import torch
from torch import nn

from .errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")


class Denoiser(Protocol):
    """The diffusion network as the training objective calls it.

    `alphas_cumprod` is the 1000-step DDPM schedule (kohya: scaled_linear 0.00085..0.012);
    `__call__` takes the kohya-form noisy latents sqrt(a)*x0 + sqrt(1-a)*eps, integer timesteps and
    the text context, and returns the raw network output (eps or v, per `prediction_type`). SDXL denoisers also
    take the pooled text embedding [B, P] and each sample's SizeCondition (trainer/conditioning.py); the others
    get None for both.

    An optional `tiles_contexts` (True where absent) says whether a batch's contexts of different lengths may be
    tiled to one length (exact for cross-attention); False (joint-attention DiTs): such samples are called in
    separate forwards, one per context length.
    """

    prediction_type: str
    alphas_cumprod: torch.Tensor
    device: torch.device
    compute_dtype: torch.dtype

    def scale_latents(self, raw_latents: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                 pooled: torch.Tensor | None = None, sizes: list | None = None) -> torch.Tensor: ...


class CaptionEncoder(Protocol):
    """Turns one caption into text-encoder hidden states of shape [1, tokens, dim], or (SDXL) a
    trainer.conditioning.TextConditioning that also holds the pooled embedding [1, P]."""

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
    # called once the fixed captions are encoded, before the first step, with True when the text encoder is
    # still needed during training (changing captions, or a text encoder that trains), and the bytes training
    # needs beside the weights (trainer/memory.py)
    prepare: Callable[[bool, int], None] | None = None
    # the text encoders' layers (`lora_te_...`, `lora_te1_...` / `lora_te2_...`) and their root module,
    # for networks that train the text encoder; built on first use
    text_encoder_targets: Callable[[], dict[str, nn.Module]] | None = None
    text_encoder_root: nn.Module | None = None
    # the blocks gradient checkpointing recomputes (ResNet and transformer blocks); empty where not offered
    checkpoint_blocks: list[nn.Module] = field(default_factory=list)
    # the blocks update their inputs in place (ComfyUI's DiTs): checkpointing gives them copies
    blocks_update_inputs: bool = False
    # the host's own model object (ComfyUI: the ModelPatcher trained on), for host callbacks such as previews
    host: object = None
    # the family record, where the adapter made one that FAMILIES lacks (a generic flow-matching model)
    family: object = None
    # a context the whole run (steps, backward passes, previews) happens in, for what the host's model needs
    # while it trains (ComfyUI's flow models: its training flag, copies of in-place-updated norm inputs)
    training_mode: Callable[[], ContextManager] | None = None

    def targets_for(self, wraps_convolutions: bool, train_unet: bool = True,
                    train_text_encoder: bool = False) -> dict[str, nn.Module]:
        """The layers a network wraps: the text encoders' and/or the UNet's (with LoCon's convolution blocks)."""
        targets: dict[str, nn.Module] = {}
        if train_text_encoder:
            if self.text_encoder_targets is None:
                raise ConfigError("This model offers no text encoder to train; set Configure LoRA's train to unet.")
            targets.update(self.text_encoder_targets())
        if train_unet:
            targets.update(self.lora_targets)
            if wraps_convolutions:
                targets.update(self.conv_targets)
        return targets
