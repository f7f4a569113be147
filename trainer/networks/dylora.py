"""DyLoRA (Valipour et al., EACL 2023): a LoRA trained so that its first k ranks are a LoRA of their own.

Layout and saved file as kohya's networks/dylora.py (sd-scripts @ 48d368fa): every rank is its own parameter,
`lora_A[i]` of shape (1, in[, kh, kw]) and `lora_B[i]` of shape (out, 1[, 1, 1]), kaiming-uniform (a=sqrt(5)) on
A and zeros on B; the file holds the slices concatenated under the plain LoRA keys `lora_down.weight`
(r, in[, kh, kw]), `lora_up.weight` (out, r[, 1, 1]) and `alpha`, so any LoRA reader takes it as a rank-r LoRA
with scale alpha / r, and kohya's extract_lora_from_dylora.py cuts rank-k files from it by keeping
`lora_down[:k]`, `lora_up[:, :k]` and the same alpha (so those are read with scale alpha / k).

Training forward (each call, in training mode only):

    b ~ uniform{0, ..., r - 1}, rounded down to a multiple of `unit`;   k = b + unit
    update = multiplier * (alpha / k) * up[:, :k] @ down[:k] (x)
    only slices b .. k-1 get gradients; slices < b take part detached, slices >= k are left out.

Kohya draws b the same way (dylora.py L85-86, `random.randint(0, r - 1)` minus `b % unit`) and gives gradients
to the same slices (L89-97, by toggling requires_grad). We draw b from `dropouts.rand`, the training step's own
generator, so a resumed run draws the same b (kohya uses Python's `random`), and freeze by `.detach()` instead
of toggling `requires_grad` (same gradients, no state left on the parameters).

Deviation, on purpose: kohya concatenates all r slices (L99-100) and scales by `scale * sqrt(r / (b + unit))`
(L118, commented "I think this scaling makes the low ranks bigger"), i.e. it trains a full-rank LoRA at
alpha / sqrt(r * k). That is a bug on both counts the saved file is read by: (1) the full-rank file is read at
alpha / r, but training used that only on the draws with k = r and a larger scale (up to sqrt(r / unit) times)
on all the others; (2) the rank-k file cut by extract_lora_from_dylora.py (first k ranks, alpha kept, read at
alpha / k) is a model that training never ran, since the forward never truncated. The paper's forward is the
truncated one with scale alpha / b at rank b (its `W_up[:b] W_dw[:b] * alpha / b`), which is what we compute:
at every drawn k the training forward is exactly the rank-k file's reading, and at k = r the full file's.
(LyCORIS's DyLoRA truncates too, with scale alpha / block index.)

Eval mode (not training): all r ranks, scale alpha / r, like a plain LoRA; `delta_weight()` is the same update.

Dropouts: kohya's DyLoRAModule takes none ("support dropout in future", L33) and its create_network drops
`neuron_dropout` and the rank / module dropout args silently. We refuse them here (ValueError) so that nothing is
ignored silently; `skips_this_call()` is always False.

The untouched slices' parameters have `grad is None` after backward (the loop zeroes grads with
set_to_none=True), so AdamW skips them: no weight decay, no moment update, bit-exactly unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from .lora import Dropouts


class DyLoRAModule(nn.Module):
    """Dynamic-rank LoRA update for one Linear or Conv2d layer; see the module docstring for the math."""

    RANK_KEY = "lora_down.weight"     # the saved tensor whose first dimension is the rank
    rank_key = RANK_KEY

    def __init__(self, layer: nn.Module, rank: int, alpha: float, dropouts: Dropouts | None = None, *,
                 unit: int = 1):
        super().__init__()
        if isinstance(unit, bool) or not isinstance(unit, int) or unit < 1:
            raise ValueError(f"DyLoRA unit must be a positive whole number, not {unit!r}")
        if rank < 1 or rank % unit != 0:
            raise ValueError(f"DyLoRA unit ({unit}) must divide the rank ({rank}): rank must be a multiple of unit")
        dropouts = dropouts or Dropouts()
        if dropouts.network > 0 or dropouts.rank > 0 or dropouts.module > 0:
            raise ValueError("DyLoRA takes no network, rank or module dropout (kohya's DyLoRA has none)")
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise TypeError("DyLoRA wraps Conv2d layers with groups=1 only")
            in_shape = (1, layer.in_channels, *layer.kernel_size)
            up_shape = (layer.out_channels, 1, 1, 1)
            self.conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
        elif isinstance(layer, nn.Linear):
            in_shape, up_shape = (1, layer.in_features), (layer.out_features, 1)
            self.conv = None
        else:
            raise TypeError(f"DyLoRA wraps Linear and Conv2d layers, not {type(layer).__name__}")
        self.lora_A = nn.ParameterList([nn.Parameter(torch.empty(in_shape)) for _ in range(rank)])
        self.lora_B = nn.ParameterList([nn.Parameter(torch.zeros(up_shape)) for _ in range(rank)])
        for down in self.lora_A:
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        self.rank, self.unit = rank, unit
        self.register_buffer("alpha", torch.tensor(float(alpha)), persistent=True)
        self.alpha_value = float(alpha)      # the buffer's value as a Python float (no device sync per call)
        self.scale = self.alpha_value / rank
        self.multiplier = 1.0
        self.dropouts = dropouts
        self.last_b: int | None = None        # the b of the latest training call (for logs and tests)

    # -- rank draw and forward -------------------------------------------------------------------------------

    def skips_this_call(self) -> bool:
        """kohya's DyLoRA has no module dropout: the update is never skipped."""
        return False

    def draw_b(self) -> int:
        """b in [0, rank), a multiple of unit, from the training step's generator (one number per call)."""
        b = min(int(float(self.dropouts.rand((), "cpu")) * self.rank), self.rank - 1)
        return b - b % self.unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._update(x, *self._full(), self.scale)
        b = self.draw_b()
        self.last_b = b
        return self.forward_at(x, b)

    def forward_at(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """The training forward for a given b: ranks [0, b + unit) at scale alpha / (b + unit); only slices
        [b, b + unit) get gradients."""
        if b < 0 or b % self.unit or b >= self.rank:
            raise ValueError(f"b must be a multiple of unit {self.unit} in [0, {self.rank}), not {b}")
        k = b + self.unit
        down = torch.cat([a.detach() for a in self.lora_A[:b]] + list(self.lora_A[b:k]))
        up = torch.cat([u.detach() for u in self.lora_B[:b]] + list(self.lora_B[b:k]), dim=1)
        return self._update(x, down, up, self.alpha_value / k)

    def _update(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type) and x.dtype != down.dtype:
            x = x.to(down.dtype)
        if self.conv is None:
            hidden = functional.linear(functional.linear(x, down), up)
        else:
            hidden = functional.conv2d(functional.conv2d(x, down, **self.conv), up)
        return hidden * (self.multiplier * scale)

    # -- merged weight and saved tensors ----------------------------------------------------------------------

    def _full(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(tuple(self.lora_A)), torch.cat(tuple(self.lora_B), dim=1)

    def delta_weight(self) -> torch.Tensor:
        """The full-rank merged update (scale alpha / rank), shaped like the wrapped layer's weight."""
        down, up = self._full()
        if down.dim() == 2:
            return up @ down * self.scale
        if down.shape[2:] == (1, 1):
            return (up.flatten(1) @ down.flatten(1)).unsqueeze(2).unsqueeze(3) * self.scale
        return functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * self.scale

    def saved_parameters(self) -> dict[str, torch.Tensor]:
        """The slices concatenated into a plain LoRA's tensors (detached; `.alpha` is saved by the network)."""
        down, up = self._full()
        return {"lora_down.weight": down.detach(), "lora_up.weight": up.detach()}

    def load_saved_parameters(self, tensors: dict[str, torch.Tensor]) -> None:
        """Split plain-LoRA tensors (as saved_parameters writes them, same rank) back into the slices."""
        expected = {"lora_down.weight": (self.rank, *self.lora_A[0].shape[1:]),
                    "lora_up.weight": (self.lora_B[0].shape[0], self.rank, *self.lora_B[0].shape[2:])}
        for key, shape in expected.items():
            saved = tensors.get(key)
            if saved is None or tuple(saved.shape) != shape:
                got = "nothing" if saved is None else f"shape {tuple(saved.shape)}"
                raise ValueError(f"DyLoRA {key} must have shape {shape}, got {got}")
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        with torch.no_grad():
            for i in range(self.rank):
                self.lora_A[i].copy_(down[i:i + 1])
                self.lora_B[i].copy_(up[:, i:i + 1])
