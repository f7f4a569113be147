"""Gradient checkpointing for the frozen model's blocks, for the duration of a run (kohya's
--gradient_checkpointing): each block's activations are recomputed in the backward pass instead of kept.

The LoRA modules inside a block draw random numbers (dropouts, DyLoRA's rank) from the training step's own
generator; torch's checkpoint restores only its default generator for the recomputation, so here the step's
generator is set back to where the block's forward started while the block is recomputed, and returned to
where it was afterwards. The recomputed block then draws exactly what the forward drew, and the run's random
stream is the same with and without checkpointing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _generator_contexts(generator: torch.Generator | None):
    """checkpoint's context_fn: (around the forward, around the recomputation)."""
    started = {}

    @contextmanager
    def forward():
        if generator is not None:
            started["state"] = generator.get_state()
        yield

    @contextmanager
    def recompute():
        if generator is None:
            yield
            return
        now = generator.get_state()
        generator.set_state(started["state"])
        try:
            yield
        finally:
            generator.set_state(now)

    return forward(), recompute()


@contextmanager
def checkpointed(blocks: list[nn.Module], generator: torch.Generator | None = None) -> Iterator[None]:
    """Run each block's forward under torch.utils.checkpoint while the block lasts (only when gradients are on);
    the blocks' own forward methods are back afterwards (nothing is left on a shared model)."""
    patched = []                              # (block, the instance forward it had, if another pack set one)
    try:
        for block in blocks:
            original = block.forward
            own = vars(block).get("forward")

            def forward(*args, _original=original, **kwargs):
                if not torch.is_grad_enabled():
                    return _original(*args, **kwargs)
                if generator is None:     # nothing inside draws: torch.compile can trace a plain checkpoint
                    return checkpoint(_original, *args, use_reentrant=False, **kwargs)
                return checkpoint(_original, *args, use_reentrant=False,
                                  context_fn=lambda: _generator_contexts(generator), **kwargs)

            block.forward = forward           # an instance attribute, shadowing the class's method
            patched.append((block, own))
        yield
    finally:
        for block, own in patched:
            if own is None:
                del block.forward
            else:
                block.forward = own
