"""LoRA (and LoCon, which is LoRA on convolutions too): one low-rank module per wrapped layer.

Math as kohya's networks/lora.py: y = layer(x) + up(down(x)) * multiplier * alpha / rank, with
kaiming-uniform (a=sqrt(5)) on down and zeros on up. Saved keys are kohya's: `<name>.lora_down.weight`,
`<name>.lora_up.weight`, `<name>.alpha`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


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
