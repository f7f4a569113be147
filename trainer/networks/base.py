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
from .loha import LoHaModule
from .lora import Dropouts, LoRAModule

# the module each algorithm of config.ALGORITHMS trains (LoCon is LoRA on more layers)
MODULE_CLASSES = {"LoRA": LoRAModule, "LoCon": LoRAModule, "LoHa": LoHaModule}


class LoRANetwork(nn.Module):
    """All LoRA modules of one run, keyed by kohya name."""

    def __init__(self, targets: dict[str, nn.Module], config: NetworkConfig):
        super().__init__()
        config = config.validated()
        if not targets:
            raise ConfigError("The model has no layers LoRA can wrap (no attention / projection layers found).")
        self.config = config
        self.dropouts = Dropouts(config.network_dropout, config.rank_dropout, config.module_dropout)
        module_class = MODULE_CLASSES[config.algorithm]
        self.lora_modules = nn.ModuleDict(
            {name: module_class(layer, *config.rank_and_alpha_for(layer), self.dropouts)
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
        """Take the weights saved by kohya_state_dict (same modules, same rank)."""
        with torch.no_grad():
            for name, module in self.lora_modules.items():
                for suffix, parameter in module.saved_parameters().items():
                    saved = tensors.get(f"{name}.{suffix}")
                    if saved is None or saved.shape != parameter.shape:
                        raise ConfigError(f"The saved LoRA does not fit this network at {name}.{suffix} "
                                          f"(saved {None if saved is None else tuple(saved.shape)}, "
                                          f"expected {tuple(parameter.shape)}).")
                    parameter.copy_(saved)

    def kohya_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Tensors under kohya's key names, on CPU, contiguous, in `dtype` (alpha included)."""
        tensors = {}
        for name, module in self.lora_modules.items():
            for suffix, parameter in module.saved_parameters().items():
                tensors[f"{name}.{suffix}"] = parameter.detach().to("cpu", dtype).contiguous()
            tensors[f"{name}.alpha"] = module.alpha.detach().to("cpu", dtype).clone()
        return tensors


class _AddLoRAOutput:
    """Forward hook: layer output + LoRA output, cast back to the layer's output dtype."""

    def __init__(self, lora: nn.Module):
        self.lora = lora

    def __call__(self, layer: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.lora.skips_this_call():
            return output
        return output + self.lora(inputs[0]).to(output.dtype)
