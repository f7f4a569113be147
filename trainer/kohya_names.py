"""kohya LoRA module names for a UNet whose module paths are diffusers-style (SD1.x / SD2.x).

kohya wraps every Linear / Conv2d inside each Transformer2DModel and names it
`("lora_unet." + path).replace(".", "_")` (networks/lora.py create_modules).
"""

from __future__ import annotations

from torch import nn

UNET_PREFIX = "lora_unet"


def kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}.{module_path}".replace(".", "_")


def transformer_targets(root: nn.Module, transformer_class_names: tuple[str, ...],
                        rename=lambda path: path, prefix: str = UNET_PREFIX) -> dict[str, nn.Module]:
    """kohya name -> layer for each Linear/Conv2d under modules whose class is a transformer block.

    `rename` maps the root's own module path to the diffusers path kohya names from (identity for a
    diffusers UNet; ComfyUI's LDM paths go through its unet_to_diffusers table).
    """
    targets: dict[str, nn.Module] = {}
    for path, module in root.named_modules():
        if type(module).__name__ not in transformer_class_names:
            continue
        for child_path, child in module.named_modules():
            if child_path and isinstance(child, (nn.Linear, nn.Conv2d)):
                full_path = rename(f"{path}.{child_path}")
                targets[kohya_name(prefix, full_path)] = child
    return targets
