"""Flow-matching MODELs (Flux.1, Chroma, SD3.x, Qwen-Image, Wan, and the other DiTs ComfyUI loads) as the
engine's Denoiser (trainer.interfaces), through ComfyUI's own model call.

The forward goes through ComfyUI's `BaseModel.apply_model`, as sampling does, so each family's own conditioning
(`extra_conds`: Flux's pooled CLIP-L and guidance, SD3's pooled CLIP-L + G, reference latents, rope options,
timestep processing) is what ComfyUI does for it, on both ComfyUI versions. apply_model returns the denoised
latent x_t - s v; the trainer needs the raw velocity v (kohya's `raw` prediction), which is the diffusion model's
own output, taken with a forward hook during the call.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from ..trainer.errors import ModelError
from ..trainer.families import (CHROMA, FLUX_DEV, FLUX_SCHNELL, QWEN_IMAGE, SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM,
                                WAN21, Family, generic_flow_family)
from ..trainer.kohya_names import dit_targets


def is_flow_sampling(sampling) -> bool:
    import comfy.model_sampling

    return isinstance(sampling, comfy.model_sampling.CONST)


def flow_family_of(base) -> Family:
    """The family record of a flow-matching ComfyUI model (exact config classes for the known families; any other
    flow-matching model trains on the generic path)."""
    import comfy.supported_models as models

    config = base.model_config
    kind = type(config)
    unet_config = config.unet_config
    if kind is getattr(models, "FluxSchnell", None):
        return FLUX_SCHNELL
    if kind is models.Flux:
        return FLUX_DEV if unet_config.get("guidance_embed", True) else FLUX_SCHNELL
    if kind is getattr(models, "Chroma", None):
        return CHROMA
    if kind is models.SD3:
        if unet_config.get("qk_norm") is None:
            return SD3_MEDIUM
        return SD35_MEDIUM if unet_config.get("x_block_self_attn_layers") else SD35_LARGE
    if kind is getattr(models, "QwenImage", None):
        return QWEN_IMAGE
    if kind is getattr(models, "WAN21_T2V", None):
        return WAN21
    return generic_flow_family(kind.__name__, latent_channels_of(base))


def latent_channels_of(base) -> int:
    return int(getattr(base.latent_format, "latent_channels", 16))


def is_video_shaped(base) -> bool:
    """Whether the model takes 5-D [B, C, frames, h, w] latents (Wan's and Qwen-Image's VAE): images are 1 frame."""
    return getattr(base.latent_format, "latent_dimensions", 2) == 3


def check_trainable(base, family: Family) -> None:
    """A clear error before step one for a flow model this version cannot train."""
    config = base.model_config
    name = type(config).__name__
    if "Radiance" in name or not hasattr(base, "process_latent_in"):
        raise ModelError(f"This MODEL ({name}) works on pixels, not VAE latents; the trainer trains latent "
                         "models. Load a latent model of the family.")
    # an inpainting, control or image-to-video variant takes an image beside the noise (c_concat)
    shape = (1, latent_channels_of(base)) + ((1,) if is_video_shaped(base) else ()) + (8, 8)
    zeros = torch.zeros(shape)
    try:
        extra = base.concat_cond(noise=zeros, latent_image=zeros, device=torch.device("cpu"))
    except Exception:
        # concat keys name the image channels it needs; without them the first step's conditioning says more
        extra = True if getattr(base, "concat_keys", ()) else None
    if extra is not None:
        raise ModelError(f"This {family.title} MODEL ({name}) takes an image beside the noise (an inpainting, "
                         f"control or image-to-video model); train on the text-to-image {family.title} model.")
    check_no_fast_fp8(base.diffusion_model)


def check_no_fast_fp8(diffusion_model: torch.nn.Module) -> None:
    """ComfyUI's fast fp8 layers (Load Diffusion Model's weight_dtype fp8_e4m3fn_fast, --fast fp8_matrix_mult)
    multiply in fp8 with kernels written for sampling: no backward pass through them is promised."""
    import comfy.ops

    fast = getattr(comfy.ops, "fp8_ops", None)
    if fast is not None and any(isinstance(module, fast.Linear) for module in diffusion_model.modules()):
        raise ModelError("This MODEL was loaded with fast fp8 matrix multiplication (weight_dtype fp8_e4m3fn_fast, "
                         "or ComfyUI's --fast fp8_matrix_mult), which has no training path. Load it with "
                         "weight_dtype fp8_e4m3fn: the weights stay fp8 and the LoRA trains on top.")


class ComfyFlowDenoiser:
    """Calls a flow-matching ComfyUI model with x_t = (1 - s) x0 + s n and sigmas s in [0, 1]; returns v."""

    prediction_type = "flow"
    alphas_cumprod = None
    tiles_contexts = False      # text tokens join the image tokens in attention: a tiled caption is another one

    def __init__(self, patcher, family: Family):
        import comfy.model_sampling

        base = patcher.model
        self.base, self.family = base, family
        self.diffusion_model = base.diffusion_model
        sampling = patcher.get_model_object("model_sampling")
        self.sampling = sampling
        # ModelSamplingFlux keeps mu (an exponential shift); ModelSamplingDiscreteFlow the linear S
        shift = float(getattr(sampling, "shift", 1.0))
        self.flow_shift = math.exp(shift) if isinstance(sampling, comfy.model_sampling.ModelSamplingFlux) else shift
        self.flow_sampling = family.flow_sampling
        self.video = is_video_shaped(base)
        self.device = torch.device(patcher.load_device)
        self.compute_dtype = base.manual_cast_dtype or base.get_dtype()

    def scale_latents(self, raw_latents: torch.Tensor) -> torch.Tensor:
        if self.video:
            return self.base.process_latent_in(raw_latents.unsqueeze(2)).squeeze(2)
        return self.base.process_latent_in(raw_latents)

    def forward_memory(self, latent_shape: tuple) -> float:
        shape = (*latent_shape[:2], 1, *latent_shape[2:]) if self.video else latent_shape
        return float(self.base.memory_required(shape))

    def conditioning(self, noisy: torch.Tensor, context: torch.Tensor, pooled, guidance: float) -> dict:
        """The keyword arguments ComfyUI's sampler would give apply_model for this text (its extra_conds)."""
        # pooled_output always, None where the text encoder has none (Chroma's T5), as CLIPTextEncode gives it;
        # guidance only where training sets it (Flux dev), else the family's own default, as sampling has it
        kwargs = {"cross_attn": context, "pooled_output": pooled, "noise": noisy, "device": noisy.device}
        if self.family.guidance_input:
            kwargs["guidance"] = guidance
        try:
            conds = self.base.extra_conds(**kwargs)
        except Exception as error:
            raise ModelError(f"ComfyUI could not build this {self.family.title} MODEL's conditioning from a caption "
                             f"alone ({type(error).__name__}: {error}); it needs inputs the trainer does not give "
                             "(an image, a mask, reference latents). Train on the family's text-to-image model."
                             ) from error
        if "c_concat" in conds:
            raise ModelError(f"This {self.family.title} MODEL needs an image to condition on (c_concat); train on the "
                             "text-to-image model of the family.")
        return {name: cond.process_cond(batch_size=noisy.shape[0], area=None, device=noisy.device).cond
                for name, cond in conds.items()}

    def __call__(self, noisy_latents, sigmas, context, pooled=None, sizes=None, guidance: float = 1.0):
        from .comfy_model import training_attention

        x = noisy_latents.unsqueeze(2) if self.video else noisy_latents
        conds = self.conditioning(x, context, pooled, guidance)
        captured = []
        handle = self.diffusion_model.register_forward_hook(lambda _m, _args, output: captured.append(output))
        try:
            self.base.apply_model(x, sigmas.float(), transformer_options=training_attention(), **conds)
        finally:
            handle.remove()
        if len(captured) != 1 or not torch.is_tensor(captured[0]):
            raise ModelError(f"This {self.family.title} MODEL did not return one latent from its diffusion model; "
                             "the trainer cannot read its prediction.")
        velocity = captured[0]
        return (velocity.squeeze(2) if self.video else velocity).float()


@contextmanager
def training_mode(diffusion_model: torch.nn.Module):
    """While a flow model trains: ComfyUI's own training flag (0.4 and newer: its rope and attention kernels
    without a backward pass step aside, as for its built-in trainer), and each layer norm given its own copy
    of its input, because the DiT blocks add their residuals in place (`x += ...`, written for inference) onto
    the tensor the norm kept for the backward pass. The flag is put back as it was."""
    import comfy.model_management as mm

    from .comfy_model import layer_norm_inputs_copied

    has_flag = hasattr(mm, "in_training")
    before = getattr(mm, "in_training", False)
    if has_flag:
        mm.in_training = True
    try:
        with layer_norm_inputs_copied(diffusion_model):
            yield
    finally:
        if has_flag:
            mm.in_training = before


def flow_targets(base, family: Family) -> dict:
    return dit_targets(base.diffusion_model, family.dit_blocks)


def flow_checkpoint_blocks(base, family: Family, targets: dict) -> list[torch.nn.Module]:
    """The blocks gradient checkpointing recomputes: the DiT blocks the LoRA trains in."""
    wrapped = {id(layer) for layer in targets.values()}
    blocks, inside = [], set()
    for module in base.diffusion_model.modules():
        if isinstance(module, torch.nn.ModuleList) and id(module) not in inside:
            for block in module:
                if any(id(layer) in wrapped for layer in block.modules()):
                    blocks.append(block)
                    inside.update(id(child) for child in block.modules())   # no block checkpointed twice
    return blocks
