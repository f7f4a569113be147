"""The base model a config names, as the engine's TrainableModel plus the VAE that caches its latents:
the built-in tiny model, a diffusers-format folder (SD1.x, SD2.x or SDXL) through trainer/diffusers_adapter.py,
or a checkpoint file through ComfyUI's own loader (comfy_backend.py, inside the pack)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import torch

from ..conditioning import TextConditioning
from ..diffusers_adapter import SD1_LATENT_SCALE, DiffusersVAEEncoder, FunctionCaptionEncoder, diffusers_trainable
from ..errors import ConfigError, ModelError
from ..families import SD1, SD2, SDXL, Family
from ..interfaces import TrainableModel
from ..plan import TrainSettings
from .tiny_model import BUILTIN_TINY, builtin_tiny_model, diffusers_module

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# the UNet's text context width per family: CLIP-L (SD1.x), OpenCLIP-H (SD2.x), CLIP-L + OpenCLIP-bigG (SDXL)
CONTEXT_DIMS = {768: SD1, 1024: SD2, 2048: SDXL}
PIPELINE_FAMILIES = {"StableDiffusionPipeline": (SD1, SD2), "StableDiffusionXLPipeline": (SDXL,)}


@dataclass
class LoadedModel:
    trainable: TrainableModel
    latent_encoder: object                   # trainer.interfaces.LatentEncoder
    description: str
    clip_skip: int | None = None             # recorded as kohya's ss_clip_skip
    # (latents, settings, [previews] values, show(step, image)) -> the loop's on_sample; None: no previews here
    previews: Callable | None = None
    release_encoder: Callable[[], None] = lambda: None
    base_model_file: str = ""                # a checkpoint file: its name and hashes go into the metadata


def is_checkpoint_file(path: str) -> bool:
    return path != BUILTIN_TINY and os.path.isfile(path)


def chosen_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"[model] device {text!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"[model] device is {text} but torch sees no CUDA GPU here; use auto or cpu.")
    return device


def chosen_dtype(text: str) -> torch.dtype:
    return torch.float32 if text == "auto" else DTYPES[text]


def load_model(model: dict, settings: TrainSettings) -> LoadedModel:
    """`model`: the config's [model] values. A checkpoint file is ComfyUI's to load (comfy_backend)."""
    path = model["path"]
    if path == BUILTIN_TINY:
        if model["clip_skip"] > 1 or settings.max_token_length != 75:
            raise ConfigError("builtin-tiny has a stand-in text encoder: clip_skip and max_token_length do not "
                              "apply; leave them at 0 and 75.")
        device = chosen_device(model["device"])
        trainable, encoder = builtin_tiny_model(device, chosen_dtype(model["weights_dtype"]))
        return LoadedModel(trainable, encoder, f"{BUILTIN_TINY} (random tiny SD1-shaped UNet and VAE on {device})")
    if os.path.isdir(path):
        return diffusers_folder_model(path, model, settings)
    from .comfy_backend import checkpoint_model

    return checkpoint_model(path, model, settings)


class ClipCaptions:
    """A transformers CLIP text model as the engine's caption encoder; clip skip as kohya does it (the Nth-last
    hidden state through the final layer norm)."""

    def __init__(self, tokenizer, text_encoder, clip_skip: int):
        self.tokenizer, self.text_encoder, self.clip_skip = tokenizer, text_encoder, clip_skip

    def __call__(self, caption: str) -> torch.Tensor:
        device = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(caption, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        if self.clip_skip <= 1:
            return self.text_encoder(ids).last_hidden_state
        hidden = self.text_encoder(ids, output_hidden_states=True).hidden_states[-self.clip_skip]
        return self.text_encoder.text_model.final_layer_norm(hidden)


class SdxlClipCaptions:
    """SDXL's two text encoders as kohya conditions its UNet: both encoders' penultimate hidden states (no final
    layer norm) side by side as the context, and text_encoder_2's projected pooled output as the pooled text."""

    def __init__(self, tokenizers, text_encoders):
        self.tokenizers, self.text_encoders = tokenizers, text_encoders

    def __call__(self, caption: str) -> TextConditioning:
        contexts, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            device = next(encoder.parameters()).device
            ids = tokenizer(caption, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(device)
            output = encoder(ids, output_hidden_states=True)
            contexts.append(output.hidden_states[-2])
            pooled = getattr(output, "text_embeds", None)
        return TextConditioning(torch.cat(contexts, dim=-1), pooled)


def folder_config(folder: str, *parts: str) -> dict:
    try:
        with open(os.path.join(folder, *parts), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def prediction_type_of(folder: str) -> str:
    return folder_config(folder, "scheduler", "scheduler_config.json").get("prediction_type", "epsilon")


def folder_family(folder: str, unet_config) -> Family:
    """The family of a diffusers folder: its pipeline class (model_index.json) and the UNet's context width must
    agree, so an inpainting, refiner or other variant is refused rather than trained under a wrong name."""
    pipeline = folder_config(folder, "model_index.json").get("_class_name", "")
    family = CONTEXT_DIMS.get(unet_config.cross_attention_dim)
    sdxl_shaped = getattr(unet_config, "addition_embed_type", None) == "text_time"
    if family is None or (family is SDXL) != sdxl_shaped or unet_config.in_channels != family.latent_channels or \
            (pipeline and family not in PIPELINE_FAMILIES.get(pipeline, ())):
        raise ModelError(f"{folder} holds a {pipeline or 'diffusers'} UNet with context width "
                         f"{unet_config.cross_attention_dim} and {unet_config.in_channels} input channels; diffusers "
                         "folders train SD1.x, SD2.x and SDXL base models (StableDiffusionPipeline or "
                         "StableDiffusionXLPipeline, 4 latent channels).")
    return family


def diffusers_folder_model(folder: str, model: dict, settings: TrainSettings) -> LoadedModel:
    diffusers = diffusers_module()
    missing = [part for part in ("unet", "vae", "text_encoder", "tokenizer")
               if not os.path.isdir(os.path.join(folder, part))]
    if missing:
        raise ModelError(f"{folder} is not a diffusers-format model folder: it has no {', '.join(missing)} "
                         "sub-folder. Give a folder saved by diffusers' save_pretrained, a checkpoint file (with "
                         f"ComfyUI), or \"{BUILTIN_TINY}\".")
    if settings.max_token_length != 75:
        raise ModelError("max_token_length above 75 is offered with checkpoints loaded through ComfyUI; diffusers "
                         "folders train with 75.")
    import transformers

    device, dtype = chosen_device(model["device"]), chosen_dtype(model["weights_dtype"])
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    family = folder_family(folder, unet.config)
    if family is SDXL and model["clip_skip"] > 1:
        raise ConfigError("SDXL is conditioned on each text encoder's penultimate layer, as kohya trains it; "
                          "clip_skip does not apply: leave it at 0.")
    encoder_folders = ("text_encoder", "text_encoder_2") if family is SDXL else ("text_encoder",)
    tokenizer_folders = ("tokenizer", "tokenizer_2") if family is SDXL else ("tokenizer",)
    missing = [part for part in encoder_folders + tokenizer_folders if not os.path.isdir(os.path.join(folder, part))]
    if missing:
        raise ModelError(f"{folder} holds an {family.title} UNet but has no {', '.join(missing)} sub-folder.")
    vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    # SDXL's second encoder carries the projection that makes its pooled embedding
    encoder_classes = (transformers.CLIPTextModel, transformers.CLIPTextModelWithProjection)
    text_encoders = tuple(encoder_classes[index].from_pretrained(folder, subfolder=part, torch_dtype=dtype)
                          .to(device).eval() for index, part in enumerate(encoder_folders))
    tokenizers = [transformers.CLIPTokenizer.from_pretrained(folder, subfolder=part) for part in tokenizer_folders]
    unet, vae = unet.to(device).eval(), vae.to(device).eval()
    if family is SDXL:
        captions = SdxlClipCaptions(tokenizers, text_encoders)
    else:
        # diffusers' SD2.x folders hold OpenCLIP-H's first 23 layers, so the last hidden state through the final
        # layer norm is the penultimate layer kohya's SD2 trains on
        captions = ClipCaptions(tokenizers[0], text_encoders[0], model["clip_skip"])
    trainable = diffusers_trainable(unet, FunctionCaptionEncoder(captions), family, prediction_type_of(folder),
                                    text_encoders, getattr(vae.config, "scaling_factor", SD1_LATENT_SCALE))
    return LoadedModel(trainable, DiffusersVAEEncoder(vae), f"diffusers folder {folder} ({family.title}, {device})",
                       clip_skip=model["clip_skip"] if model["clip_skip"] > 1 else None)
