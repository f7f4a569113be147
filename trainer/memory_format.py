"""Channels-last for a run (NHWC): the frozen model's convolution weights, and the latents fed to it.

GPU tensor cores run convolutions in NHWC; a NCHW model pays a layout transpose around each one. Converting is
a copy of each 4-D weight, same values, so the host's model is given its own layout back when the run ends.
On a CPU it measured no faster (0.99-1.02 on the SD1.5 layout, benchmarks/RESULTS.md), so it is off unless
asked for.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def channels_last(root: nn.Module) -> Iterator[None]:
    """Every 4-D weight under `root` in channels-last memory format for the duration of the block."""
    changed = []
    try:
        for module in root.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 4 and \
                    not weight.is_contiguous(memory_format=torch.channels_last):
                changed.append((weight, weight.data))
                weight.data = weight.data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        for weight, original in changed:
            weight.data = original
