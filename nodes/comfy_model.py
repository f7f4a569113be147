"""Adapters from ComfyUI's MODEL / CLIP / VAE to the engine's interfaces (trainer.interfaces).

The one place that knows how ComfyUI lays out a model: the UNet to call, its sampling schedule, its
LoRA key mapping, and how CLIP and VAE encode.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..trainer.errors import ModelError
from ..trainer.families import SD1, Family
from ..trainer.interfaces import TrainableModel
from ..trainer.latent_disk import module_identity
from .comfy_targets import COMFY_CONV_BLOCK_CLASSES, clip_targets, family_of, unet_targets


class ComfyDenoiser:
    """Calls ComfyUI's diffusion_model the way kohya calls its UNet (see docs/architecture.md).

    It gets kohya's noisy latents sqrt(a)*x0 + sqrt(1-a)*eps (what ComfyUI's calculate_input makes of
    its own x_t), the integer timesteps as floats and the text context, and returns the raw eps / v output.
    """

    def __init__(self, patcher):
        base = patcher.model
        self.base = base
        self.unet = base.diffusion_model
        sampling = patcher.get_model_object("model_sampling")
        sigmas = sampling.sigmas.detach().to("cpu", torch.float64)
        # ComfyUI keeps sigma = sqrt((1 - a) / a); kohya's alphas_cumprod is a = 1 / (1 + sigma^2)
        self.alphas_cumprod = 1.0 / (1.0 + sigmas ** 2)
        self.prediction_type = prediction_type_of(sampling)
        self.device = torch.device(patcher.load_device)
        self.compute_dtype = base.manual_cast_dtype or base.get_dtype()

    def scale_latents(self, raw_latents: torch.Tensor) -> torch.Tensor:
        return self.base.process_latent_in(raw_latents)

    def __call__(self, noisy_latents, timesteps, context):
        dtype = self.compute_dtype
        return self.unet(noisy_latents.to(dtype), timesteps.float(), context=context.to(dtype)).float()


class ComfyCaptionEncoder:
    """CLIP text encoding with kohya's reading of captions: parentheses are literal text, not weights."""

    def __init__(self, clip):
        self.clip = clip

    def encode(self, caption: str) -> torch.Tensor:
        literal = caption.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        tokens = self.clip.tokenize(literal)
        if not torch.is_grad_enabled():
            return self.clip.encode_from_tokens(tokens)
        with layer_norm_inputs_copied(self.clip.cond_stage_model):     # the text encoder's LoRA is training
            return self.clip.encode_from_tokens(tokens)


@contextmanager
def layer_norm_inputs_copied(root: torch.nn.Module):
    """ComfyUI's CLIP layers add to the residual in place (`x += self.mlp(self.layer_norm2(x))`), after a layer
    norm kept `x` for the backward pass; with gradients flowing (a training text-encoder LoRA) autograd refuses
    that. Each layer norm gets its own copy of its input for the duration of the block, and nothing else changes."""
    handles = [module.register_forward_pre_hook(lambda _module, args: (args[0].clone(), *args[1:]))
               for module in root.modules() if isinstance(module, torch.nn.LayerNorm)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ComfyVAEEncoder:
    def __init__(self, vae):
        self.vae = vae

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels)

    def identity(self) -> str:
        """Names the VAE's weights, so latents it wrote to disk are told apart from another VAE's."""
        return module_identity(self.vae.first_stage_model)

    def release(self) -> None:
        """Take the VAE off the GPU once caching is done; the UNet needs the room, other models stay."""
        release_from_device(getattr(self.vae, "patcher", None))


def release_from_device(patcher) -> None:
    """Unload one model ComfyUI loaded (as its memory manager would under pressure), leaving the rest loaded."""
    import comfy.model_management as mm

    if patcher is None:
        return
    for index in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[index]
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.pop(index)


def prediction_type_of(sampling) -> str:
    """From the model_sampling object the sampler uses, so ModelSamplingDiscrete overrides count."""
    import comfy.model_sampling

    if isinstance(sampling, comfy.model_sampling.V_PREDICTION):
        return "v_prediction"
    if isinstance(sampling, comfy.model_sampling.EPS):
        return "epsilon"
    raise ModelError(f"This MODEL samples with {type(sampling).__name__}; the trainer handles epsilon (SD1.x) "
                     "models in this version.")


def model_family(patcher) -> Family:
    """The family of a MODEL this version trains; a clear error for the rest."""
    config = patcher.model.model_config
    family = family_of(config)
    if family is not SD1:
        raise ModelError(f"Train supports SD1.x checkpoints in this version, and this MODEL is "
                         f"{type(config).__name__}. Load an SD1.5-based checkpoint; SD2 and SDXL support is on "
                         "the roadmap.")
    if config.unet_config.get("in_channels") != 4:
        raise ModelError(f"This SD1.x MODEL takes {config.unet_config.get('in_channels')} input channels (an "
                         "inpainting or instruct model); train on a regular SD1.5-based checkpoint.")
    if prediction_type_of(patcher.get_model_object("model_sampling")) != "epsilon":
        raise ModelError("This SD1.x MODEL is set to v-prediction (ModelSamplingDiscrete); this version trains "
                         "SD1.x with epsilon prediction only. Remove the v-prediction node before Train.")
    return family


def training_patcher(patcher):
    """The ModelPatcher to train on: the MODEL's own, or, under dynamic VRAM, a regular one.

    ComfyUI 0.4 and newer load models on NVIDIA GPUs as ModelPatcherDynamic ("dynamic VRAM", on unless
    ComfyUI starts with --disable-dynamic-vram): each layer's weight is copied into a reusable VRAM slot for
    its forward pass only. Backpropagating to the LoRA needs those weights again, and by then the slot may
    hold another layer or be freed. So training runs on the non-dynamic delegate, the regular copy ComfyUI
    itself builds from the checkpoint for hooked sampling, and keeps while the MODEL lives. (ComfyUI 0.3.x
    has no dynamic patcher.)
    """
    if not getattr(patcher, "is_dynamic", lambda: False)():
        return patcher
    try:
        return patcher.get_non_dynamic_delegate()
    except RuntimeError:
        raise ModelError("This MODEL is loaded with ComfyUI's dynamic VRAM, and the node that loaded it cannot "
                         "give Train a regular copy of the weights. Load the checkpoint with a core loader (Load "
                         "Checkpoint, Load Diffusion Model), or start ComfyUI with --disable-dynamic-vram.") from None


def trainable_from_comfy(patcher, clip) -> TrainableModel:
    import comfy.model_management

    family = model_family(patcher)
    patcher = training_patcher(patcher)
    base = patcher.model
    unet, unet_config = base.diffusion_model, base.model_config.unet_config
    targets = unet_targets(unet, unet_config, family)

    def load_unet(keep_text_encoder: bool) -> None:
        # after the fixed captions are encoded, so loading CLIP cannot push the UNet back off the GPU; when
        # captions change per step, CLIP is loaded with it, so encoding one cannot unload the UNet mid-run
        models = [patcher] + ([clip.patcher] if keep_text_encoder and getattr(clip, "patcher", None) else [])
        comfy.model_management.load_models_gpu(models, force_full_load=True)

    conv_targets = unet_targets(unet, unet_config, family, COMFY_CONV_BLOCK_CLASSES)
    return TrainableModel(ComfyDenoiser(patcher), targets, unet, family.version, ComfyCaptionEncoder(clip),
                          conv_targets=conv_targets, prepare=load_unet,
                          text_encoder_targets=lambda: clip_targets(clip, family),
                          text_encoder_root=getattr(clip, "cond_stage_model", None))


def clip_skip_of(clip) -> int | None:
    """kohya's clip_skip from CLIPSetLastLayer (layer_idx -2 is clip skip 2); None when unset."""
    layer = getattr(clip, "layer_idx", None)
    return -layer if isinstance(layer, int) and layer < 0 else None


def apply_lora_patches(patcher, clip, tensors: dict[str, torch.Tensor]):
    """MODEL and CLIP clones carrying the LoRA as ordinary weight patches: exactly LoraLoader's path."""
    import comfy.sd

    return comfy.sd.load_lora_for_models(patcher, clip, tensors, 1.0, 1.0)
