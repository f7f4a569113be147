"""Adapters from ComfyUI's MODEL / CLIP / VAE to the engine's interfaces (trainer.interfaces).

The one place that knows how ComfyUI lays out a model: the UNet to call, its sampling schedule, its
LoRA key mapping, and how CLIP and VAE encode.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..trainer.conditioning import TextConditioning
from ..trainer.errors import ModelError
from ..trainer.families import SD1, Family
from ..trainer.interfaces import TrainableModel
from ..trainer.latent_disk import module_identity
from .comfy_flow import (ComfyFlowDenoiser, check_trainable, flow_checkpoint_blocks, flow_family_of, flow_targets,
                         is_flow_sampling, training_mode)
from .comfy_targets import COMFY_CONV_BLOCK_CLASSES, clip_targets, family_of, unet_targets


class ComfyDenoiser:
    """Calls ComfyUI's diffusion_model the way kohya calls its UNet (see docs/architecture.md).

    It gets kohya's noisy latents sqrt(a)*x0 + sqrt(1-a)*eps (what ComfyUI's calculate_input makes of
    its own x_t), the integer timesteps as floats and the text context, and returns the raw eps / v output.
    """

    def __init__(self, patcher, family: Family = SD1):
        base = patcher.model
        self.family = family
        self.base = base
        self.unet = base.diffusion_model
        sampling = patcher.get_model_object("model_sampling")
        sigmas = sampling.sigmas.detach().to("cpu", torch.float64)
        # ComfyUI keeps sigma = sqrt((1 - a) / a); kohya's alphas_cumprod is a = 1 / (1 + sigma^2)
        self.alphas_cumprod = 1.0 / (1.0 + sigmas ** 2)
        self.prediction_type = prediction_type_of(sampling)
        self.device = torch.device(patcher.load_device)
        self.compute_dtype = base.manual_cast_dtype or base.get_dtype()
        self.size_rows: dict[tuple, torch.Tensor] = {}      # SDXL: each size conditioning's embedding, on device

    def scale_latents(self, raw_latents: torch.Tensor) -> torch.Tensor:
        return self.base.process_latent_in(raw_latents)

    def forward_memory(self, latent_shape: tuple) -> float:
        """ComfyUI's own estimate of one forward pass's memory for this latent shape (bytes)."""
        return float(self.base.memory_required(latent_shape))

    def __call__(self, noisy_latents, timesteps, context, pooled=None, sizes=None):
        dtype = self.compute_dtype
        extra = {}
        if self.family.pooled_text:
            extra["y"] = self.size_vector(pooled, sizes).to(noisy_latents.device, dtype)
        return self.unet(noisy_latents.to(dtype), timesteps.float(), context=context.to(dtype),
                         transformer_options=training_attention(), **extra).float()

    def size_vector(self, pooled: torch.Tensor, sizes) -> torch.Tensor:
        """SDXL's ADM input per sample: the pooled text embedding, then the embedding of kohya's size conditioning
        (trainer/conditioning.py) made by ComfyUI's own encode_adm, once per size and kept on the device (it
        builds it on the CPU, and a copy back each step would make the CPU wait for the GPU)."""
        rows = []
        for size in sizes:
            key = (size.original_hw, size.crop_top_left, size.target_hw)
            if key not in self.size_rows:
                (height, width), (top, left), (target_h, target_w) = key
                # an empty pooled output: encode_adm returns only the size embedding, placed after it
                flat = self.base.encode_adm(pooled_output=torch.zeros(1, 0), width=width, height=height,
                                            crop_w=left, crop_h=top, target_width=target_w, target_height=target_h)
                self.size_rows[key] = flat.to(pooled.device)
            rows.append(self.size_rows[key])
        return torch.cat([pooled, torch.cat(rows, dim=0).to(pooled.dtype)], dim=1)


def training_attention() -> dict:
    """transformer_options that run every attention of a training forward through PyTorch's
    scaled_dot_product_attention, whichever attention ComfyUI picked at start-up.

    ComfyUI's choice is for sampling: on CPUs and some GPUs it is sub-quadratic or split attention, which size
    their chunks by the memory free at the moment, so a checkpointed block can recompute differently from its
    forward (Comfy-Org/ComfyUI#15845), and sage attention has no backward pass. SDPA is exact, deterministic in
    its shapes, has fused backward kernels on GPUs and is at least as fast. A fresh dict per call: the UNet writes
    into the transformer_options it is given.
    """
    return {"optimized_attention_override": _pytorch_attention}


def _pytorch_attention(_chosen, *args, **kwargs):
    from comfy.ldm.modules.attention import attention_pytorch

    return attention_pytorch(*args, **kwargs)


class ComfyCaptionEncoder:
    """CLIP text encoding with kohya's reading of captions: parentheses are literal text, not weights."""

    def __init__(self, clip, family: Family = SD1, max_token_length: int = 75):
        self.clip = clip
        self.pooled = family.pooled_text or family.is_flow     # flow models: Flux's CLIP-L, SD3's L + G pooled
        self.chunks = max_token_length // 75

    def encode(self, caption: str):
        literal = caption.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        # ComfyUI splits a caption into 75-token chunks; kohya's max_token_length keeps the first 1, 2 or 3
        tokens = {encoder: chunks[:self.chunks] if isinstance(chunks, list) else chunks
                  for encoder, chunks in self.clip.tokenize(literal).items()}
        if not torch.is_grad_enabled():
            return self._encode(tokens)
        with layer_norm_inputs_copied(self.clip.cond_stage_model):     # the text encoder's LoRA is training
            return self._encode(tokens)

    def _encode(self, tokens):
        if not self.pooled:
            return self.clip.encode_from_tokens(tokens)
        context, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
        return TextConditioning(context, pooled)


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
        if getattr(self.vae, "latent_dim", 2) != 3:
            return self.vae.encode(pixels)
        # a video VAE (Wan 2.1, which Qwen-Image uses too) reads a batch of images as the frames of one video:
        # each image is encoded as a one-frame video, and its latent kept as an image's [C, h, w]
        return torch.cat([self.vae.encode(image[None])[:, :, 0] for image in pixels])

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
    raise ModelError(f"This MODEL samples with {type(sampling).__name__}; the trainer handles epsilon and "
                     "v-prediction models in this version.")


def model_family(patcher) -> Family:
    """The family of a MODEL this version trains (SD1.x, SD2.x, SDXL); a clear error for the rest."""
    config = patcher.model.model_config
    family = family_of(config)
    if family is None and is_flow_sampling(patcher.get_model_object("model_sampling")):
        family = flow_family_of(patcher.model)
        check_trainable(patcher.model, family)
        return family
    if family is None:
        raise ModelError(f"Train supports SD1.x, SD2.x, SDXL and flow-matching models (Flux.1, Chroma, SD3.x, "
                         f"Qwen-Image, Wan, ...), and this MODEL is {type(config).__name__}, which samples with "
                         f"{type(patcher.get_model_object('model_sampling')).__name__}. Load one of those.")
    channels = config.unet_config.get("in_channels")
    if channels != family.latent_channels:
        raise ModelError(f"This {family.title} MODEL takes {channels} input channels (an inpainting or instruct "
                         f"model); train on a regular {family.title} checkpoint.")
    prediction_type_of(patcher.get_model_object("model_sampling"))     # a clear error for other samplings
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


def trainable_from_comfy(patcher, clip, max_token_length: int = 75) -> TrainableModel:
    import comfy.model_management

    family = model_family(patcher)
    patcher = training_patcher(patcher)
    base = patcher.model
    unet, unet_config = base.diffusion_model, base.model_config.unet_config
    targets = flow_targets(base, family) if family.is_flow else unet_targets(unet, unet_config, family)

    reserved = {"bytes": 0}

    def load_unet(keep_text_encoder: bool, memory_required: int | None = None) -> None:
        # after the fixed captions are encoded, so loading CLIP cannot push the UNet back off the GPU; when
        # captions change per step, CLIP is loaded with it, so encoding one cannot unload the UNet mid-run;
        # memory_required: the room training needs beside the weights (trainer/memory.py)
        # (a reload after previews keeps the room the first load asked for)
        if memory_required is not None:
            reserved["bytes"] = memory_required
        models = [patcher] + ([clip.patcher] if keep_text_encoder and getattr(clip, "patcher", None) else [])
        if family.is_flow and not keep_text_encoder:     # captions cached: T5 / the LLM encoder leaves the GPU
            release_from_device(getattr(clip, "patcher", None))
        comfy.model_management.load_models_gpu(models, memory_required=reserved["bytes"], force_full_load=True)

    if family.is_flow:
        return TrainableModel(ComfyFlowDenoiser(patcher, family), targets, unet, family.key,
                              ComfyCaptionEncoder(clip, family, max_token_length), prepare=load_unet,
                              checkpoint_blocks=flow_checkpoint_blocks(base, family, targets), host=patcher,
                              family=family, training_mode=lambda: training_mode(unet), blocks_update_inputs=True)
    conv_targets = unet_targets(unet, unet_config, family, COMFY_CONV_BLOCK_CLASSES)
    return TrainableModel(ComfyDenoiser(patcher, family), targets, unet, family.version,
                          ComfyCaptionEncoder(clip, family, max_token_length),
                          conv_targets=conv_targets, prepare=load_unet,
                          text_encoder_targets=lambda: clip_targets(clip, family),
                          text_encoder_root=getattr(clip, "cond_stage_model", None),
                          checkpoint_blocks=[m for m in unet.modules()
                                             if type(m).__name__ in ("ResBlock", "SpatialTransformer")],
                          host=patcher)


def clip_skip_of(clip) -> int | None:
    """kohya's clip_skip from CLIPSetLastLayer (layer_idx -2 is clip skip 2); None when unset."""
    layer = getattr(clip, "layer_idx", None)
    return -layer if isinstance(layer, int) and layer < 0 else None


def apply_lora_patches(patcher, clip, tensors: dict[str, torch.Tensor]):
    """MODEL and CLIP clones carrying the LoRA as ordinary weight patches: exactly LoraLoader's path."""
    import comfy.sd

    return comfy.sd.load_lora_for_models(patcher, clip, tensors, 1.0, 1.0)
