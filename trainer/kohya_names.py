"""kohya LoRA module names for a UNet whose module paths are diffusers-style (SD1.x / SD2.x).

kohya wraps every Linear / Conv2d inside each Transformer2DModel (and, for LoCon, inside each ResnetBlock2D,
Downsample2D and Upsample2D) and names it `("lora_unet." + path).replace(".", "_")` (networks/lora.py
create_modules).
"""

from __future__ import annotations

from torch import nn

from .errors import ModelError

UNET_PREFIX = "lora_unet"


def kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}.{module_path}".replace(".", "_")


def block_targets(root: nn.Module, block_class_names: tuple[str, ...],
                  rename=lambda path: path, prefix: str = UNET_PREFIX) -> dict[str, nn.Module]:
    """kohya name -> layer for each Linear/Conv2d under modules whose class is one of `block_class_names`.

    `rename` maps the root's own module path to the diffusers path kohya names from (identity for a
    diffusers UNet; ComfyUI's LDM paths go through its unet_to_diffusers table).
    """
    targets: dict[str, nn.Module] = {}
    for path, module in root.named_modules():
        if type(module).__name__ not in block_class_names:
            continue
        for child_path, child in module.named_modules():
            if child_path and isinstance(child, (nn.Linear, nn.Conv2d)):
                name = kohya_name(prefix, rename(f"{path}.{child_path}"))
                if targets.get(name, child) is not child:
                    raise ModelError(f"Two layers of this model would both be saved as {name}; the name table does "
                                     "not fit this model, so nothing is trained rather than saving a broken file.")
                targets[name] = child
    return targets
