"""Checkpoint files through ComfyUI: the one place the command line touches ComfyUI, and only when a config
names a checkpoint file (or `inspect` checks a file against ComfyUI's key map).

The nodes' adapters (nodes/comfy_model.py: trainable_from_comfy, ComfyVAEEncoder) live in the pack, whose
modules import each other relatively, so a checkpoint run happens inside the pack: `python -m trainer` finds
ComfyUI (COMFYUI_PATH, or the ComfyUI this pack sits in as custom_nodes/<pack>), starts it as a library on the
device asked for, imports this repository as the package `comfyui_lora_trainer` (as ComfyUI does), and runs the
same command there. It is the engine's one exception to "trainer/ never imports ComfyUI", named as such in
tests/engine/test_packaging.py (ENGINE_COMFYUI_BRIDGE); it imports ComfyUI's modules by name with importlib,
inside functions, so `import trainer` never does, and it is loaded only on these paths.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from ..errors import ConfigError, ModelError
from ..plan import TrainSettings

PACK_MODULE = "comfyui_lora_trainer"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def inside_pack() -> bool:
    """True when this module is the pack's copy (`comfyui_lora_trainer.trainer.cli...`), whose relative imports
    reach nodes/."""
    return __name__.count(".") >= 3


def comfyui_checkout() -> str | None:
    for candidate in [os.environ.get("COMFYUI_PATH", "").split(":")[0],
                      os.path.dirname(os.path.dirname(REPO_ROOT))]:          # ComfyUI/custom_nodes/<this pack>
        if candidate and os.path.isfile(os.path.join(os.path.expanduser(candidate), "comfy", "model_patcher.py")):
            return os.path.abspath(os.path.expanduser(candidate))
    spec = importlib.util.find_spec("comfy")
    if spec is not None and spec.submodule_search_locations:
        return os.path.dirname(list(spec.submodule_search_locations)[0])
    return None


def start_comfyui(device: str) -> str:
    """ComfyUI as a library, its device chosen (`cpu`, or its own choice); its checkout's path."""
    checkout = comfyui_checkout()
    if checkout is None:
        raise ModelError("A checkpoint file is loaded with ComfyUI's own loader, and no ComfyUI was found: set "
                         "COMFYUI_PATH to a ComfyUI checkout (and run this with the Python that runs it), or give "
                         "[model] path a diffusers-format folder.")
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    if "comfy.model_management" not in sys.modules:
        args = importlib.import_module("comfy.cli_args").args
        if device == "cpu":
            args.cpu = True
        elif device.startswith("cuda:"):
            args.cuda_device = int(device.split(":")[1])
        importlib.import_module("comfy.model_management")      # the device is chosen as it is imported
    return checkout


def load_pack():
    """This repository as ComfyUI imports it: one package, so nodes/ and trainer/ import each other."""
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, os.path.join(REPO_ROOT, "__init__.py"),
                                                  submodule_search_locations=[REPO_ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    return module


def run_inside_pack(argv: list[str], device: str) -> int:
    """The same command, run by the pack's copy of the command line, with ComfyUI started."""
    start_comfyui(device)
    load_pack()
    return importlib.import_module(f"{PACK_MODULE}.trainer.cli.main").main(argv)


def load_checkpoint(path: str):
    """(MODEL, CLIP, VAE) as ComfyUI's Load Checkpoint node gives them."""
    comfy_sd = importlib.import_module("comfy.sd")
    try:
        loaded = comfy_sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True,
                                                       embedding_directory=None)
    except Exception as exc:  # ComfyUI's loader raises whatever its readers do; the user needs the file named
        raise ModelError(f"ComfyUI could not load the checkpoint {path}: {exc}") from None
    model, clip, vae = loaded[:3]
    if model is None or clip is None or vae is None:
        raise ModelError(f"{path} lacks a UNet, text encoder or VAE; train from a full checkpoint.")
    return model, clip, vae


def checkpoint_model(path: str, model: dict, settings: TrainSettings):
    """The LoadedModel of a checkpoint file, through the nodes' own adapters (nodes/comfy_model.py)."""
    if not inside_pack():
        raise ConfigError("internal: checkpoint files are loaded by the pack's copy of the command line")
    from ...nodes.comfy_model import ComfyVAEEncoder, clip_skip_of, trainable_from_comfy
    from ...nodes.train import PreviewSettings, preview_renderer
    from .models import LoadedModel

    unet, clip, vae = load_checkpoint(path)
    if model["clip_skip"] > 1:                      # as CLIPSetLastLayer(-N) before Train
        clip = clip.clone()
        clip.clip_layer(-model["clip_skip"])
    trainable = trainable_from_comfy(unet, clip, settings.max_token_length)
    encoder = ComfyVAEEncoder(vae)

    def previews(latents, run_settings, values: dict, show):
        chosen = PreviewSettings(vae, values["sample_prompts"], values["sample_sampler"], values["sample_scheduler"])
        return preview_renderer(trainable, clip, chosen, latents, run_settings, show)

    return LoadedModel(trainable, encoder, f"checkpoint {path} through ComfyUI ({trainable.base_model_version})",
                       clip_skip=clip_skip_of(clip), previews=previews, release_encoder=encoder.release,
                       base_model_file=path)


# full-size UNet configs of the families (as comfy.model_detection derives them from real checkpoints), built on
# the meta device for ComfyUI's LoRA key map: names and shapes only, no weights
_SD15_UNET = dict(in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 2, 4, 4],
                  num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                  transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                  context_dim=768, num_heads=8, num_head_channels=-1, use_linear_in_transformer=False,
                  use_spatial_transformer=True, legacy=False, adm_in_channels=None, image_size=32,
                  use_checkpoint=False, use_temporal_attention=False, use_temporal_resblock=False)
FULL_UNET_CONFIGS = {
    "sd_v1": ("SD15", _SD15_UNET),
    "sd_v2": ("SD20", {**_SD15_UNET, "context_dim": 1024, "use_linear_in_transformer": True, "num_heads": -1,
                       "num_head_channels": 64}),
    "sdxl_base_v1-0": ("SDXL", dict(
        in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2],
        transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
        transformer_depth_middle=10, context_dim=2048, num_heads=-1, num_head_channels=64,
        use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False, num_classes="sequential",
        adm_in_channels=2816, image_size=32, use_checkpoint=False, use_temporal_attention=False,
        use_temporal_resblock=False)),
}
TEXT_ENCODER_CLASSES = {"sd_v1": ("comfy.sd1_clip", "SD1ClipModel"),
                        "sd_v2": ("comfy.text_encoders.sd2_clip", "SD2ClipModel"),
                        "sdxl_base_v1-0": ("comfy.sdxl_clip", "SDXLClipModel")}


def comfy_lora_key_map(family_version: str) -> set[str]:
    """The LoRA module names ComfyUI's LoraLoader maps for a family (comfy.lora's key maps of its full-size UNet
    and text encoders, built on the meta device)."""
    import torch

    start_comfyui("cpu")
    lora = importlib.import_module("comfy.lora")
    models = importlib.import_module("comfy.supported_models")
    class_name, unet_config = FULL_UNET_CONFIGS[family_version]
    model_config = getattr(models, class_name)(dict(unet_config))
    model_config.unet_config.update({k: unet_config[k] for k in ("num_heads", "num_head_channels")})
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({}, device="meta")
    module_name, text_class = TEXT_ENCODER_CLASSES[family_version]
    text_encoders = getattr(importlib.import_module(module_name), text_class)(device="meta", dtype=torch.float32)
    key_map = lora.model_lora_keys_unet(base, {})
    key_map = lora.model_lora_keys_clip(text_encoders, key_map)
    return set(key_map)
