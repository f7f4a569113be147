"""torch.compile of the frozen model for a run (kohya's --torch_compile / --dynamo_backend), the LoRA inside.

The LoRA modules reach the model as forward hooks on its layers, and TorchDynamo does not guard on hooks
(`skip_nnmodule_hook_guards`): a model compiled before they are attached keeps running without them, so a
LoRA trained that way learns nothing (a bug seen in other trainers). Here the compiled callable is made after
the hooks (and the checkpointing wrappers) are in place, so they are traced into the graph, and is dropped at
the end of the run: the host's model object is never replaced.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from .errors import ConfigError

ADVICE = "switch torch_compile off (Train's input, or torch_compile = false in the config)"


class CompiledModel:
    """The compiled model, called as the model was, with a compiler's failure reported as what to change."""

    def __init__(self, model: torch.nn.Module, backend: str):
        self.backend = backend
        try:
            self.compiled = torch.compile(model, backend=backend)
        except Exception as exc:          # an unknown backend name is refused here
            raise ConfigError(f"torch.compile cannot use the backend {backend!r} ({first_line(exc)}); choose one of "
                              f"{', '.join(available_backends())}, or {ADVICE}.") from None

    def __call__(self, *args, **kwargs):
        from torch._dynamo.exc import TorchDynamoException

        try:
            return self.compiled(*args, **kwargs)
        except TorchDynamoException as exc:   # no C++ compiler, no Triton for this GPU, an unsupported operation
            raise ConfigError(f"torch.compile ({self.backend}) could not compile the model: {first_line(exc)}. "
                              f"Install what it names, or {ADVICE}.") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def available_backends() -> list[str]:
    import torch._dynamo

    return sorted(torch._dynamo.list_backends())


@contextmanager
def compiled_model(denoiser, backend: str = "inductor") -> Iterator[None]:
    """The denoiser calls a compiled copy of its model while the block lasts; call it once the LoRA is attached."""
    model = getattr(denoiser, "unet", None)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"This model cannot be compiled by the trainer; {ADVICE}.")
    denoiser.unet = CompiledModel(model, backend)
    try:
        yield
    finally:
        denoiser.unet = model
