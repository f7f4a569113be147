"""LoKr (LyCORIS's Kronecker-product adapter), as LyCORIS 4.1.3 builds it for kohya (`algo=lokr`).

Shapes. The layer's output size is split as out = a * b and its input size (in_channels // groups for a
convolution) as in = c * d, each by `factorization` below (a <= b, c <= d). The update is

    dW = kron(W1, W2) * scale,        W1: (a, c),  W2: (b, d * kh * kw)  (kh = kw = 1 for a Linear),

reshaped to the layer's weight shape; the layer then adds F.linear / F.conv2d of its input with dW (times
the multiplier). A convolution kernel lives in W2 only, so for a k x k conv (no Tucker here: LyCORIS's
`use_tucker` is off for kohya unless asked) W2 is (b, d, kh, kw) when full and W2 = w2_a @ w2_b with
w2_b flattened to (r, d * kh * kw) when decomposed; kron of W1 (a, c) with the flattened W2 equals kron of
W1[:, :, None, None] with the 4-d W2, reshaped.

Which factor is low rank (r = the network dim):
    W2 = lokr_w2_a (b, r) @ lokr_w2_b (r, d*kh*kw)   when r < max(b, d) / 2 and not full_matrix,
       = lokr_w2 (b, d[, kh, kw])                    otherwise (LyCORIS logs "using full matrix mode");
    W1 = lokr_w1_a (a, r) @ lokr_w1_b (r, c)         when decompose_both and r < max(a, c) / 2 and not
                                                     full_matrix,
       = lokr_w1 (a, c)                              otherwise.
Because a <= b and c <= d, a decomposed W1 always comes with a decomposed W2.

Alpha and scale: alpha 0 / None means alpha = r; scale = alpha / r; the saved `.alpha` is that alpha. When
both W1 and W2 are full, LyCORIS forces alpha = r, so scale is 1 and the saved alpha is r (e.g. 100000 for
the GUI's "network_dim=100000" full-matrix presets).

Init (so training starts from the model itself): W1 (or w1_a and w1_b) and w2_a kaiming-uniform (a = sqrt(5));
lokr_w2_b = 0, or lokr_w2 = 0 when W2 is full. LyCORIS initialises W2's factor first, then W1; so do we.

Saved keys: `<name>.lokr_w1` or `.lokr_w1_a` / `.lokr_w1_b`; `.lokr_w2` or `.lokr_w2_a` / `.lokr_w2_b`;
`.alpha` (0-d). `rank_key` names the saved tensor whose first dimension is r (`lokr_w2_b`), or None when
both factors are full (the rank is then not in the file; LyCORIS reloads it as rank 1, scale 1).

Dropouts, in training only, as LyCORIS's LokrModule: module dropout skips the whole update for a call;
rank dropout keeps each output row of dW (one coin per output channel per call, shared by the batch) when
its coin is > p, with no rescaling (LyCORIS's `rank_dropout_scale` is off and kohya's front end never
sets it). Neuron dropout (`network_dropout`) is not implemented by LyCORIS for LoKr (it only warns); this
module refuses it. Coins come from `Dropouts.rand`, the training step's generator.

How ComfyUI reads it (comfy/weight_adapter/lokr.py, LoKrAdapter.calculate_weight, the same in v0.3.64 and
in the newer checkout): W1 = w1 or w1_a @ w1_b, W2 = w2 or w2_a @ w2_b (a 4-d w2 gets W1 unsqueezed to
(a, c, 1, 1)), dW = kron(W1, W2).reshape(weight.shape) * alpha / dim with dim = w2_b.shape[0] (else
w1_b.shape[0]) and scale 1 when neither is decomposed (the saved alpha is ignored then). That is LyCORIS's
scale in every case above. The newer ComfyUI (v0.33) also has a bypass path (`LoKrAdapter.h`, used by
`load_bypass_lora_for_models`) with the same scale, but for a convolution with a decomposed W2 it passes the
saved 2-d w2_b (r, d*kh*kw) to F.conv2d, which fails ("weight should have at least three dimensions"), for
1x1 and 3x3 kernels alike; that is LyCORIS's functional layout (w2_b kept (r, d, kh, kw)), not the layout its
modules save. The same happens to files written by LyCORIS itself. Linear layers and full W2 work there.
LyCORIS 4.1.3 itself: its forward applies scale once, but LokrModule.get_merged_weight (merge_to) applies it
twice (scale ** 2); files are unaffected.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .lora import Dropouts, apply_weight_delta, conv_arguments


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split `dimension` as m * n with m <= n, as LyCORIS's `functional.general.factorization` does.

    An explicit factor that divides the dimension is used as one side. Otherwise the divisors of the
    dimension are walked upwards (none above `factor` when one is given, 0 allowing none): the walk stops
    at the first divisor m with m >= dimension / m, i.e. at the most balanced pair, e.g. 320 -> (16, 20),
    1280 -> (32, 40), 768 -> (24, 32), 127 -> (1, 127); 250 with factor 8 -> (5, 50).
    """
    if factor > 0 and dimension % factor == 0:
        first, second = factor, dimension // factor
        return (first, second) if first <= second else (second, first)
    limit = dimension if factor < 0 else factor
    chosen = 1
    for candidate in range(2, min(limit, dimension) + 1):
        if dimension % candidate:
            continue
        chosen = candidate
        if candidate >= dimension // candidate:
            break
    first, second = chosen, dimension // chosen
    return (first, second) if first <= second else (second, first)


class LoKrModule(nn.Module):
    def __init__(self, layer: nn.Module, rank: int, alpha: float, dropouts: Dropouts | None = None, *,
                 factor: int = -1, decompose_both: bool = False, full_matrix: bool = False):
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            in_dim = layer.in_channels // layer.groups
            kernel = tuple(layer.kernel_size)
            self.conv = conv_arguments(layer)
        elif isinstance(layer, nn.Linear):
            in_dim, kernel, self.conv = layer.in_features, (), None
        else:
            raise TypeError(f"LoKr wraps Linear and Conv2d layers, not {type(layer).__name__}")
        self.dropouts = dropouts or Dropouts()
        if self.dropouts.network > 0:
            raise ValueError("LoKr has no neuron dropout (LyCORIS does not implement it); use module or rank dropout")
        self.weight_shape = tuple(layer.weight.shape)
        out_a, out_b = factorization(self.weight_shape[0], int(factor))
        in_c, in_d = factorization(in_dim, int(factor))
        self.factors = ((out_a, out_b), (in_c, in_d))
        self.w1_decomposed = bool(decompose_both) and rank < max(out_a, in_c) / 2 and not full_matrix
        self.w2_decomposed = rank < max(out_b, in_d) / 2 and not full_matrix

        # W2 first, then W1: LyCORIS's order of initialisation
        if self.w2_decomposed:
            self.lokr_w2_a = nn.Parameter(torch.empty(out_b, rank))
            self.lokr_w2_b = nn.Parameter(torch.zeros(rank, in_d * math.prod(kernel)))
            nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))
        else:
            self.lokr_w2 = nn.Parameter(torch.zeros(out_b, in_d, *kernel))
        if self.w1_decomposed:
            self.lokr_w1_a = nn.Parameter(torch.empty(out_a, rank))
            self.lokr_w1_b = nn.Parameter(torch.empty(rank, in_c))
            nn.init.kaiming_uniform_(self.lokr_w1_a, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lokr_w1_b, a=math.sqrt(5))
        else:
            self.lokr_w1 = nn.Parameter(torch.empty(out_a, in_c))
            nn.init.kaiming_uniform_(self.lokr_w1, a=math.sqrt(5))

        alpha = float(alpha) if alpha else float(rank)
        if not self.w1_decomposed and not self.w2_decomposed:
            alpha = float(rank)                                 # LyCORIS: both full -> scale 1
        self.rank = rank
        self.register_buffer("alpha", torch.tensor(alpha), persistent=True)
        self.scale = alpha / rank
        self.multiplier = 1.0
        self.rank_key = "lokr_w2_b" if self.w2_decomposed else None

    def skips_this_call(self) -> bool:
        drop = self.dropouts
        return self.training and drop.module > 0 and float(drop.rand((), "cpu")) < drop.module

    def delta_weight(self) -> torch.Tensor:
        w1 = self.lokr_w1_a @ self.lokr_w1_b if self.w1_decomposed else self.lokr_w1
        if self.w2_decomposed:
            w2 = self.lokr_w2_a @ self.lokr_w2_b
        else:
            w2 = self.lokr_w2.reshape(self.lokr_w2.shape[0], -1)
        return torch.kron(w1, w2).view(self.weight_shape) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta_weight() * self.multiplier
        drop = self.dropouts
        if self.training and drop.rank > 0:                    # LyCORIS: output rows of dW, no rescale
            keep = drop.rand((delta.shape[0],), delta.device) > drop.rank
            delta = delta * keep.to(delta.dtype).view(-1, *[1] * (delta.dim() - 1))
        return apply_weight_delta(x, delta, self.conv)

    def saved_parameters(self) -> dict[str, nn.Parameter]:
        saved = {}
        if self.w1_decomposed:
            saved.update(lokr_w1_a=self.lokr_w1_a, lokr_w1_b=self.lokr_w1_b)
        else:
            saved["lokr_w1"] = self.lokr_w1
        if self.w2_decomposed:
            saved.update(lokr_w2_a=self.lokr_w2_a, lokr_w2_b=self.lokr_w2_b)
        else:
            saved["lokr_w2"] = self.lokr_w2
        return saved
