"""Host-to-GPU copies that do not make the CPU wait.

A plain `tensor.to("cuda")` from host memory ends with a stream synchronisation: the CPU waits until every
kernel already queued has run, and the GPU then idles while the CPU queues the next ones. A training step has
several such copies (latents, noise, timesteps, loss weights), so the step is copied with `non_blocking`:
from pinned memory for the large ones (a true asynchronous DMA; torch's pinned allocator keeps the buffer until
the copy has run), and from ordinary memory for the small ones (CUDA stages those before the call returns, so
the host tensor may go at once).
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device, pin: bool = False) -> torch.Tensor:
    """`tensor` on `device`, queued without a host wait when `device` is a CUDA GPU; `pin` for large batches."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    if pin:
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
