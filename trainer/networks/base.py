"""A network of update modules, one per wrapped layer, attached with forward hooks.

Forward hooks leave the base weights untouched (no copy, nothing to restore) and work on any nn.Linear /
nn.Conv2d subclass, ComfyUI's cast layers included.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..errors import ConfigError
from .config import NetworkConfig
from .lora import Dropouts, LoRAModule


class LoRANetwork(nn.Module):
    """All LoRA modules of one run, keyed by kohya name."""

    def __init__(self, targets: dict[str, nn.Module], config: NetworkConfig):
        super().__init__()
        config = config.validated()
        if not targets:
            raise ConfigError("The model has no layers LoRA can wrap (no attention / projection layers found).")
        self.config = config
        self.dropouts = Dropouts(config.network_dropout, config.rank_dropout, config.module_dropout)
        self.lora_modules = nn.ModuleDict(
            {name: LoRAModule(layer, *config.rank_and_alpha_for(layer), self.dropouts)
             for name, layer in targets.items()})

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @contextmanager
    def attached(self, targets: dict[str, nn.Module]) -> Iterator["LoRANetwork"]:
        """Add each module's output to its layer's output for the duration of the block."""
        handles = []
        try:
            for name, layer in targets.items():
                handles.append(layer.register_forward_hook(_AddLoRAOutput(self.lora_modules[name])))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def load_kohya_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take up/down weights saved by kohya_state_dict (same modules, same rank)."""
        with torch.no_grad():
            for name, module in self.lora_modules.items():
                for part, layer in (("lora_down", module.down), ("lora_up", module.up)):
                    saved = tensors.get(f"{name}.{part}.weight")
                    if saved is None or saved.shape != layer.weight.shape:
                        raise ConfigError(f"The saved LoRA does not fit this network at {name}.{part} "
                                          f"(saved {None if saved is None else tuple(saved.shape)}, "
                                          f"expected {tuple(layer.weight.shape)}).")
                    layer.weight.copy_(saved)

    def kohya_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Tensors under kohya's key names, on CPU, contiguous, in `dtype` (alpha included)."""
        tensors = {}
        for name, module in self.lora_modules.items():
            tensors[f"{name}.lora_down.weight"] = module.down.weight.detach().to("cpu", dtype).contiguous()
            tensors[f"{name}.lora_up.weight"] = module.up.weight.detach().to("cpu", dtype).contiguous()
            tensors[f"{name}.alpha"] = module.alpha.detach().to("cpu", dtype).clone()
        return tensors


class _AddLoRAOutput:
    """Forward hook: layer output + LoRA output, cast back to the layer's output dtype."""

    def __init__(self, lora: LoRAModule):
        self.lora = lora

    def __call__(self, layer: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.lora.skips_this_call():
            return output
        return output + self.lora(inputs[0]).to(output.dtype)
