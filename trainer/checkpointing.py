"""Gradient checkpointing for the frozen model's blocks, for the duration of a run (kohya's
--gradient_checkpointing): each block's activations are recomputed in the backward pass instead of kept.

The LoRA modules inside a block draw random numbers (dropouts, DyLoRA's rank) from the training step's own
generator; torch's checkpoint restores only its default generator for the recomputation, so here the step's
generator is set back to where the block's forward started while the block is recomputed, and returned to
where it was afterwards. The recomputed block then draws exactly what the forward drew, and the run's random
stream is the same with and without checkpointing.

With `copy_inputs`, each checkpointed call works on its own copy of its tensor inputs: ComfyUI's DiT blocks
(Flux, Chroma) add their residual into their input in place (`x += ...`, written for inference), and checkpoint
keeps the inputs for the recomputation, which must find them as they were. The copies live only while the block
runs. (Off for the UNets, whose blocks leave their inputs alone: a copy can change a strided input's layout
and with it the last bit of a kernel's sum.)
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


def _on_copies(function):
    """`function` called with copies of its tensor arguments, so an in-place update inside cannot reach them."""
    def copy(value):
        return value.clone() if isinstance(value, torch.Tensor) else value

    def run(*args, **kwargs):
        return function(*(copy(a) for a in args), **{k: copy(v) for k, v in kwargs.items()})

    return run


@contextmanager
def checkpointed(blocks: list[nn.Module], generator: torch.Generator | None = None,
                 copy_inputs: bool = False) -> Iterator[None]:
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
                on_copies = _on_copies(_original) if copy_inputs else _original
                if generator is None:     # nothing inside draws: torch.compile can trace a plain checkpoint
                    return checkpoint(on_copies, *args, use_reentrant=False, **kwargs)
                return checkpoint(on_copies, *args, use_reentrant=False,
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
