"""LoHa (LyCORIS's Hadamard-product adapter), as LyCORIS and kohya write it.

dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank, shaped like the wrapped layer's weight (a convolution's
kernel is flattened into w1_b / w2_b); the layer then adds F.linear / F.conv2d of its input with dW. Init as
LyCORIS: w1_b and w2_b ~ N(0, 1), w1_a ~ N(0, 0.1), w2_a = 0, so training starts from the model itself.
Saved keys: `<name>.hada_w1_a`, `.hada_w1_b`, `.hada_w2_a`, `.hada_w2_b`, `.alpha` (ComfyUI's LoraLoader,
LyCORIS and A1111 read them).
"""

from __future__ import annotations

import torch
from torch import nn

from .lora import Dropouts, apply_weight_delta, conv_arguments


class LoHaModule(nn.Module):
    rank_key = "hada_w1_b"            # the saved tensor whose first dimension is the rank

    def __init__(self, layer: nn.Module, rank: int, alpha: float, dropouts: Dropouts | None = None):
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            fan_in = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            self.conv = conv_arguments(layer)
        elif isinstance(layer, nn.Linear):
            fan_in, self.conv = layer.in_features, None
        else:
            raise TypeError(f"LoHa wraps Linear and Conv2d layers, not {type(layer).__name__}")
        self.weight_shape = tuple(layer.weight.shape)
        out = self.weight_shape[0]
        self.hada_w1_a = nn.Parameter(torch.empty(out, rank))
        self.hada_w1_b = nn.Parameter(torch.empty(rank, fan_in))
        self.hada_w2_a = nn.Parameter(torch.empty(out, rank))
        self.hada_w2_b = nn.Parameter(torch.empty(rank, fan_in))
        nn.init.normal_(self.hada_w1_b, std=1.0)
        nn.init.normal_(self.hada_w1_a, std=0.1)
        nn.init.normal_(self.hada_w2_b, std=1.0)
        nn.init.zeros_(self.hada_w2_a)
        self.rank = rank
        self.register_buffer("alpha", torch.tensor(float(alpha)), persistent=True)
        self.scale = alpha / rank
        self.multiplier = 1.0
        self.dropouts = dropouts or Dropouts()          # module dropout only (config refuses the other two)

    def skips_this_call(self) -> bool:
        drop = self.dropouts
        return self.training and drop.module > 0 and float(drop.rand((), "cpu")) < drop.module

    def delta_weight(self) -> torch.Tensor:
        product = (self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b)
        return product.view(self.weight_shape) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta_weight() * self.multiplier
        return apply_weight_delta(x, delta, self.conv)

    def saved_parameters(self) -> dict[str, nn.Parameter]:
        return {"hada_w1_a": self.hada_w1_a, "hada_w1_b": self.hada_w1_b, "hada_w2_a": self.hada_w2_a,
                "hada_w2_b": self.hada_w2_b}
