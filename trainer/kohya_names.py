"""kohya LoRA module names: `(prefix + "." + module path).replace(".", "_")` (networks/lora.py create_modules).

UNet: kohya wraps every Linear / Conv2d inside each Transformer2DModel (and, for LoCon, inside each
ResnetBlock2D, Downsample2D and Upsample2D); the path is diffusers-style for SD1.x / SD2.x and the original
LDM layout for SDXL (trainer/families.py). Text encoders: every Linear of each CLIP attention and MLP block,
named from the path below the CLIP text model (`text_model.encoder.layers.N...`).
"""

from __future__ import annotations

import re

from torch import nn

from .errors import ModelError

UNET_PREFIX = "lora_unet"
# the text-encoder blocks kohya wraps (transformers' class names; ComfyUI's CLIP uses the same two)
TEXT_ENCODER_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
_LAYER_INDEX = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")


def kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}.{module_path}".replace(".", "_")


def block_targets(root: nn.Module, block_class_names: tuple[str, ...],
                  rename=lambda path: path, prefix: str = UNET_PREFIX,
                  keep=lambda path: True) -> dict[str, nn.Module]:
    """kohya name -> layer for each Linear/Conv2d under modules whose class is one of `block_class_names`.

    `rename` maps the root's own module path to the diffusers path kohya names from (identity for a
    diffusers UNet; ComfyUI's LDM paths go through its unet_to_diffusers table); `keep(path)` leaves out
    layers kohya's own model does not have.
    """
    targets: dict[str, nn.Module] = {}
    for path, module in root.named_modules():
        if type(module).__name__ not in block_class_names:
            continue
        for child_path, child in module.named_modules():
            if child_path and isinstance(child, (nn.Linear, nn.Conv2d)) and keep(f"{path}.{child_path}"):
                name = kohya_name(prefix, rename(f"{path}.{child_path}"))
                if targets.get(name, child) is not child:
                    raise ModelError(f"Two layers of this model would both be saved as {name}; the name table does "
                                     "not fit this model, so nothing is trained rather than saving a broken file.")
                targets[name] = child
    return targets


def text_encoder_targets(text_model_root: nn.Module, prefix: str, kohya_layers: int) -> dict[str, nn.Module]:
    """kohya name -> Linear for one CLIP text encoder (`text_model_root` holds `text_model` or, in
    transformers 5, `encoder` directly), for its first `kohya_layers` layers: the ones kohya's own text
    encoder has (SD2's has 23 of OpenCLIP-H's 24; the last one never reaches the UNet).

    The names always say `text_model_encoder_layers_...`, as kohya (transformers 4) and every loader expect.
    """
    def rename(path: str) -> str:
        return path if path.startswith("text_model.") else f"text_model.{path}"

    def kohya_has(path: str) -> bool:
        layer = _LAYER_INDEX.search(path)
        if layer is None:
            raise ModelError(f"Text-encoder layer {path} is not inside encoder.layers; this text encoder's layout "
                             "is not one the trainer knows.")
        return int(layer.group(1)) < kohya_layers

    return block_targets(text_model_root, TEXT_ENCODER_BLOCKS, rename, prefix, keep=kohya_has)


_SD3_STREAM = re.compile(r"^joint_blocks\.\d+\.(context|x)_block$")


def dit_targets(root: nn.Module, rule: str) -> dict[str, nn.Module]:
    """kohya / musubi-tuner name -> Linear for a flow-matching DiT, named from the DiT's own module paths
    (trainer/families.py `dit_blocks`):

    - `blocks:<Class>,...`: every Linear inside modules of those classes (kohya's lora_flux: DoubleStreamBlock,
      SingleStreamBlock; musubi-tuner's Qwen-Image and Wan networks: their transformer blocks);
    - `sd3`: every Linear inside each joint block's context_block and x_block (kohya's lora_sd3, which matches
      kohya's SingleDiTBlock class; ComfyUI's is DismantledBlock, so the path decides);
    - `repeated`: every Linear inside the items of the DiT's block lists (any nn.ModuleList of modules that hold
      Linear layers), for families without their own rule.
    """
    if rule.startswith("blocks:"):
        classes = tuple(rule[len("blocks:"):].split(","))
        blocks = [(path, m) for path, m in root.named_modules() if type(m).__name__ in classes]
    elif rule == "sd3":
        blocks = [(path, m) for path, m in root.named_modules() if _SD3_STREAM.match(path)]
    elif rule == "repeated":
        blocks = [(f"{path}.{index}", item) for path, m in root.named_modules() if isinstance(m, nn.ModuleList)
                  for index, item in enumerate(m)
                  if any(isinstance(layer, nn.Linear) for layer in item.modules())]
        inner = {path for path, _ in blocks}      # a block list inside a block: its outer block already covers it
        blocks = [(path, m) for path, m in blocks
                  if not any(path.startswith(outer + ".") for outer in inner if outer != path)]
    else:
        raise ModelError(f"Unknown DiT target rule {rule!r}.")
    targets: dict[str, nn.Module] = {}
    for path, block in blocks:
        for child_path, child in block.named_modules():
            if child_path and isinstance(child, nn.Linear):
                name = kohya_name(UNET_PREFIX, f"{path}.{child_path}")
                if targets.get(name, child) is not child:
                    raise ModelError(f"Two layers of this model would both be saved as {name}; nothing is trained "
                                     "rather than saving a broken file.")
                targets[name] = child
    if not targets:
        raise ModelError("This model has no Linear layers in the blocks a LoRA trains, so there is nothing to train.")
    return targets
