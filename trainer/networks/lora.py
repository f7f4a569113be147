"""LoRA (and LoCon, which is LoRA on convolutions too): one low-rank module per wrapped layer.

Math as kohya's networks/lora.py: y = layer(x) + up(down(x)) * multiplier * alpha / rank, with
kaiming-uniform (a=sqrt(5)) on down and zeros on up. Saved keys are kohya's: `<name>.lora_down.weight`,
`<name>.lora_up.weight`, `<name>.alpha`.

Dropouts, as kohya's LoRAModule, in training only: module dropout skips the whole update for a call,
network dropout drops units of down(x), rank dropout drops whole ranks per sample and rescales by 1/(1-p).
Their coins come from `Dropouts.generator`, the training step's own generator, so a resumed run draws the
same ones; a run without dropout draws none.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional


class Dropouts:
    """The three dropout rates of a network and the generator their coins come from (shared by its modules)."""

    def __init__(self, network: float = 0.0, rank: float = 0.0, module: float = 0.0):
        self.network, self.rank, self.module = network, rank, module
        self.generator: torch.Generator | None = None          # set by the trainer; None: torch's default

    def rand(self, shape, device) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator).to(device)


def conv_arguments(layer: nn.Module) -> dict | None:
    """F.conv2d's arguments for a weight delta applied like `layer` (None for a Linear layer)."""
    if isinstance(layer, nn.Conv2d):
        return dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    return None


def apply_weight_delta(x: torch.Tensor, delta: torch.Tensor, conv: dict | None) -> torch.Tensor:
    """What a layer with weight `delta` (no bias) outputs for `x`: the update of the modules that build a whole
    weight delta (LoHa, LoKr, DoRA); under autocast the delta keeps its dtype and autocast casts."""
    if not torch.is_autocast_enabled(x.device.type):
        delta = delta.to(x.dtype)
    if conv is not None:
        return functional.conv2d(x, delta, None, **conv)
    return functional.linear(x, delta)


class LoRAModule(nn.Module):
    """Low-rank update for one Linear or Conv2d layer."""

    rank_key = "lora_down.weight"     # the saved tensor whose first dimension is the rank

    def __init__(self, layer: nn.Module, rank: int, alpha: float, dropouts: Dropouts | None = None):
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
        self.dropouts = dropouts or Dropouts()

    def skips_this_call(self) -> bool:
        """Module dropout: in training, the whole update is left out of this call with its probability."""
        drop = self.dropouts
        return self.training and drop.module > 0 and float(drop.rand((), "cpu")) < drop.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight_dtype = self.down.weight.dtype
        if not torch.is_autocast_enabled(x.device.type) and x.dtype != weight_dtype:
            x = x.to(weight_dtype)
        hidden = self.down(x)
        scale = self.multiplier * self.scale
        drop = self.dropouts
        if self.training and drop.network > 0:                 # kohya: F.dropout on down(x)
            keep = drop.rand(hidden.shape, hidden.device) >= drop.network
            hidden = hidden * keep / (1.0 - drop.network)
        if self.training and drop.rank > 0:                    # kohya: a (batch, rank) mask, scale / (1 - p)
            keep = drop.rand((hidden.shape[0], self.rank), hidden.device) >= drop.rank
            keep = keep.unsqueeze(1) if hidden.dim() == 3 else keep.view(*keep.shape, *[1] * (hidden.dim() - 2))
            hidden = hidden * keep
            scale = scale / (1.0 - drop.rank)
        # scaled at rank width, before up(): the same product as kohya's up(h) * scale, without a pass over the
        # layer-wide output (16 of 320..1280 channels at rank 16); none when alpha = rank
        return self.up(hidden * scale if scale != 1.0 else hidden)

    def saved_parameters(self) -> dict[str, nn.Parameter]:
        """The trained tensors under their kohya key suffixes (`.alpha` is saved beside them by the network)."""
        return {"lora_down.weight": self.down.weight, "lora_up.weight": self.up.weight}

    def delta_weight(self) -> torch.Tensor:
        """The merged weight update, shaped like the wrapped layer's weight (for tests and merging)."""
        down, up = self.down.weight, self.up.weight
        if down.dim() == 2:
            return up @ down * self.scale
        if down.shape[2:] == (1, 1):
            return (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * self.scale
        return torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * self.scale
