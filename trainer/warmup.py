"""Warm-up passes before a run's first step, to measure its time and memory for the plan (trainer/preflight.py).

A pass is the step's forward and backward on the largest bucket's batch, without the optimizer step. What it
touches is put back: the step's random stream (noise, timesteps, dropout coins, DyLoRA ranks), the global
random state, and the LoRA's gradients (set to None again); the LoRA's weights, the optimizer and the schedule
are never touched. So the run that follows is the run without warm-up passes, bit for bit.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from .latent_cache import CachedSample, LatentCache
from .loop import OUT_OF_MEMORY, TrainStep


@dataclass(frozen=True)
class WarmupMeasure:
    seconds: tuple[float, ...]        # each pass, forward + backward, as the clock measured it
    bucket: tuple[int, int]           # (width, height) of the largest bucket, the batch's
    batch_size: int
    saved_bytes: int                  # what autograd kept for the backward in the first pass (distinct storages;
                                      # inside checkpointed blocks checkpointing keeps its own, not counted)
    device_peak: int | None = None    # CUDA: the most the allocator held during the passes (weights included)
    device_before: int | None = None  # CUDA: what it held when they started
    out_of_memory: bool = False       # a pass ran out of device memory

    @property
    def step_seconds(self) -> float | None:
        """A pass's time: the median of the passes after the first (which warms caches, compiles), or the
        first when it is the only one."""
        timed = sorted(self.seconds[1:] or self.seconds)
        return timed[len(timed) // 2] if timed else None


class SavedBytes:
    """Counts the distinct storages autograd saves for the backward, by address and size only, leaving out the
    parameters (the model's weights are not activations)."""

    def __init__(self, parameters):
        self.excluded = {storage_address(p) for p in parameters}
        self.sizes: dict[int, int] = {}

    def pack(self, tensor):
        address = storage_address(tensor)
        if address is not None and address not in self.excluded:
            self.sizes.setdefault(address, tensor.untyped_storage().nbytes())
        return tensor

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


def largest_batch(cache: LatentCache, batch_size: int) -> tuple[list[CachedSample], tuple[int, int]]:
    """A batch of the largest bucket (by area), its samples repeated where the bucket holds fewer."""
    size = max(cache.buckets, key=lambda side: (side[0] * side[1], side))
    samples = cache.buckets[size]
    return [samples[i % len(samples)] for i in range(batch_size)], size


def storage_address(tensor) -> int | None:
    """A tensor's storage address, None for tensors without one of their own (meta, wrapper subclasses such as
    ComfyUI's quantized weights)."""
    if tensor.device.type == "meta":
        return None
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def measure_warmup(stepper: TrainStep, parameters: list[torch.nn.Parameter], frozen: list[torch.nn.Module],
                   cache: LatentCache, captions, batch_size: int, passes: int,
                   clock: Callable[[], float]) -> WarmupMeasure:
    """`passes` forward + backward passes of the largest bucket's batch, each timed by `clock` (synchronised on
    CUDA), the run left as it was (module docstring)."""
    batch, size = largest_batch(cache, batch_size)
    texts = [captions.caption_for(sample, 0, index) for index, sample in enumerate(batch)]
    device = stepper.device
    cuda = device.type == "cuda"
    generator_state = stepper.generator.get_state()
    counter = SavedBytes([*parameters, *(t for root in frozen for t in (*root.parameters(), *root.buffers()))])
    try:
        with torch.random.fork_rng(devices=[device] if cuda else []):
            seconds, before, peak, out_of_memory = _passes(stepper, parameters, batch, texts, passes, clock,
                                                           counter)
    finally:                                # whatever happened in the passes, the run's stream is as it was
        stepper.generator.set_state(generator_state)
        for parameter in parameters:
            parameter.grad = None
    return WarmupMeasure(tuple(seconds), size, batch_size, counter.total, peak, before, out_of_memory)


def _passes(stepper: TrainStep, parameters, batch, texts, passes: int, clock, counter: SavedBytes):
    """The timed passes: (seconds of each, CUDA bytes allocated before and at most, whether memory ran out)."""
    device = stepper.device
    cuda = device.type == "cuda"
    seconds: list[float] = []
    before = peak = None
    out_of_memory = False
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    try:
        for index in range(passes):
            counting = torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda tensor: tensor) \
                if index == 0 else nullcontext()
            start = clock()
            with counting:
                stepper.forward_backward(batch, 1, texts)
            if cuda:
                torch.cuda.synchronize(device)
            seconds.append(clock() - start)
            for parameter in parameters:
                parameter.grad = None
    except OUT_OF_MEMORY:
        out_of_memory = True
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.empty_cache()
    return seconds, before, peak, out_of_memory
