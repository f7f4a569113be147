"""DoRA (Liu et al. 2024, weight-decomposed LoRA): LoRA's update on the direction, a trained magnitude.

    W' = m * (W0 + dW) / ||W0 + dW||,    dW = up @ down * alpha / rank   (LoRAModule's update)

with the norm taken per input column (over the output axis and the kernel), as in the DoRA paper, and the
magnitude `m` (saved as `dora_scale`, shape (1, in) or (1, in, 1, 1)) starting at ||W0||, so training starts
from the model itself. The hook adds (W' - W0) applied to the input to the layer's own output.

Why per input column: that is the layout every ComfyUI version reads exactly (comfy/weight_adapter/base.py
weight_decompose, the branch where dora_scale's first dimension is not the output size, normalises W0 + dW).
The other layout, LyCORIS's default wd_on_output=True with dora_scale (out, 1), is read by ComfyUI with the
norm of W0 alone (ComfyUI PR #15458, open), so a file in that layout would not give in ComfyUI what was
trained. The metadata says so for LyCORIS-aware tools: `dora_wd=True`, `wd_on_output=False`. A strength s
other than 1 in ComfyUI gives W0 + s * (W' - W0), which `multiplier` matches here.
"""

from __future__ import annotations

import torch
from torch import nn

from .lora import Dropouts, LoRAModule, apply_weight_delta, conv_arguments


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """||W|| per input column, shaped (1, in, 1, ...) to broadcast against W (out, in, ...)."""
    columns = weight.transpose(0, 1).reshape(weight.shape[1], -1)
    return columns.norm(dim=1).reshape(1, weight.shape[1], *[1] * (weight.dim() - 2))


class DoRAModule(LoRAModule):
    """LoRA with weight decomposition for one Linear or Conv2d layer (module dropout only)."""

    def __init__(self, layer: nn.Module, rank: int, alpha: float, dropouts: Dropouts | None = None):
        super().__init__(layer, rank, alpha, dropouts)
        if layer.weight.device.type == "meta":
            magnitude = torch.ones(1, layer.weight.shape[1], *[1] * (layer.weight.dim() - 2))
        else:
            magnitude = column_norm(layer.weight.detach().float())
        self.dora_scale = nn.Parameter(magnitude.to("cpu"))
        self.base_layer = (layer,)        # a tuple, so the frozen layer is not registered as a submodule
        self.conv = conv_arguments(layer)

    @torch.no_grad()
    def start_from_base(self) -> None:
        """m = ||W0|| per input column of the weight as it is now (after the host's own patches), so the run
        starts from the model in hand."""
        weight = self.base_layer[0].weight
        if weight.device.type != "meta":
            self.dora_scale.copy_(column_norm(weight.detach().float()).to(self.dora_scale.device))

    def delta_weight(self) -> torch.Tensor:
        """W' - W0: what DoRA adds to the layer's weight (the LoRA update itself is LoRAModule.delta_weight)."""
        base = self.base_layer[0].weight.detach().to(self.dora_scale.device, torch.float32)
        merged = base + super().delta_weight()
        # ComfyUI adds float32's eps to the norm (its patches are computed in float32)
        scale = self.dora_scale / (column_norm(merged) + torch.finfo(torch.float32).eps)
        return merged * scale - base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta_weight() * self.multiplier
        return apply_weight_delta(x, delta, self.conv)

    def saved_parameters(self) -> dict[str, nn.Parameter]:
        return {**super().saved_parameters(), "dora_scale": self.dora_scale}
