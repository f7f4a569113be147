"""The LoRA network: one low-rank module per wrapped layer, attached with forward hooks.

Math as kohya's networks/lora.py: y = layer(x) + up(down(x)) * multiplier * alpha / rank, with
kaiming-uniform (a=sqrt(5)) on down and zeros on up. Forward hooks leave the base weights untouched
(no copy, nothing to restore) and work on any nn.Linear / nn.Conv2d subclass, ComfyUI's cast layers
included. Saved keys are kohya's: `<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class NetworkConfig:
    """What Configure LoRA produces (LORA_NETWORK)."""

    algorithm: str = "LoRA"
    rank: int = 8
    alpha: float = 1.0

    def validated(self) -> "NetworkConfig":
        if self.algorithm != "LoRA":
            raise ConfigError(f"Algorithm {self.algorithm!r} is not available yet; choose LoRA.")
        if not 1 <= self.rank <= 1024:
            raise ConfigError(f"rank (network_dim) is {self.rank}; use 1..1024 (kohya_ss default 8).")
        if self.alpha < 0:
            raise ConfigError(f"alpha is {self.alpha}; use 0 or more (0 means alpha = rank, scale 1).")
        return self

    @property
    def effective_alpha(self) -> float:
        # kohya: alpha None or 0 means alpha = rank
        return float(self.alpha) if self.alpha else float(self.rank)

    @property
    def scale(self) -> float:
        return self.effective_alpha / self.rank

    def describe(self) -> str:
        return f"{self.algorithm} rank {self.rank}, alpha {self.effective_alpha:g} (scale {self.scale:g})"


class LoRAModule(nn.Module):
    """Low-rank update for one Linear or Conv2d layer."""

    def __init__(self, layer: nn.Module, rank: int, alpha: float):
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            self.down = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                                  bias=False)
            self.up = nn.Conv2d(rank, layer.out_channels, 1, 1, bias=False)
        elif isinstance(layer, nn.Linear):
            self.down = nn.Linear(layer.in_features, rank, bias=False)
            self.up = nn.Linear(rank, layer.out_features, bias=False)
        else:
            raise TypeError(f"LoRA wraps Linear and Conv2d layers, not {type(layer).__name__}")
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.rank = rank
        self.register_buffer("alpha", torch.tensor(float(alpha)), persistent=True)
        self.scale = alpha / rank
        self.multiplier = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight_dtype = self.down.weight.dtype
        if not torch.is_autocast_enabled(x.device.type) and x.dtype != weight_dtype:
            x = x.to(weight_dtype)
        return self.up(self.down(x)) * (self.multiplier * self.scale)

    def delta_weight(self) -> torch.Tensor:
        """The merged weight update, shaped like the wrapped layer's weight (for tests and merging)."""
        down, up = self.down.weight, self.up.weight
        if down.dim() == 2:
            return up @ down * self.scale
        if down.shape[2:] == (1, 1):
            return (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * self.scale
        return torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * self.scale


class LoRANetwork(nn.Module):
    """All LoRA modules of one run, keyed by kohya name."""

    def __init__(self, targets: dict[str, nn.Module], config: NetworkConfig):
        super().__init__()
        config = config.validated()
        if not targets:
            raise ConfigError("The model has no layers LoRA can wrap (no attention / projection layers found).")
        self.config = config
        self.lora_modules = nn.ModuleDict(
            {name: LoRAModule(layer, config.rank, config.effective_alpha) for name, layer in targets.items()})

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
        return output + self.lora(inputs[0]).to(output.dtype)
