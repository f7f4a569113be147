"""Data-parallel training over several processes (torch.distributed, launched by `torchrun`).

One run, the same loop on every process; what changes is passed in as a `DistributedContext`, never held
globally. The run trains the LoRA that one process trains with the same settings:

- `batch_size` is the global batch (kohya / accelerate users' "total batch"): every process draws the same
  batches (plan.epoch_batches is seeded by seed and epoch), and process r trains a contiguous share of each
  one (`DistributedContext.share`). A batch need not divide by the number of processes: kohya's last batch of
  each bucket is short anyway, so shares are as even as they can be, and a batch smaller than the world leaves
  some processes without a sample of it.
- Loss weighting: a process's loss is the sum of its samples' losses divided by the size of the whole batch,
  and the gradients are summed over processes, so the sum is the gradient of the batch's mean loss, the one
  process's gradient, however the batch was split. The losses reported are summed the same way.
- Randomness: noise, timesteps and flip coins are drawn for the whole batch on every process from the step's
  generator (the same stream on all), and each process takes its share's rows; captions are processed with a
  generator seeded by (seed, epoch, draw index) (dataset/caption_processing.py), so no draw depends on the
  rank. Every process's generator stays where the single process's is, which is what a resumable state holds.
  The LoRA's own draws in its forward (network, rank and module dropout, DyLoRA's rank) depend on how many
  samples and calls a process sees, so those are refused here (`check_splittable`).
- All processes take the same optimizer step on the same summed gradients, so their LoRA and optimizer
  states stay equal with no broadcast; only rank 0 writes files and reports progress (session.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from . import errors
from .errors import ConfigError, TrainerError

Answer = TypeVar("Answer")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a data-parallel run."""

    rank: int
    world_size: int
    device: torch.device                 # where this process trains: cuda:LOCAL_RANK, or the CPU
    group: object | None = None          # the process group; None: torch's default group

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run's files and reports its progress."""
        return self.rank == 0

    def share(self, batch_size: int) -> slice:
        """This process's contiguous part of a batch: the first `batch_size % world_size` processes take one
        sample more; a batch smaller than the world leaves the last processes an empty share."""
        base, extra = divmod(batch_size, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def sum_gradients(self, parameters: list[torch.Tensor], values: list[float]) -> list[float]:
        """Sum every parameter's gradient, and `values`, over the processes, in one all_reduce of one flat
        tensor. A parameter that no process has a gradient for keeps None, so the optimizer skips it (no
        weight decay, no moment update) exactly as on one process."""
        device = parameters[0].device
        pieces = [p.grad.reshape(-1).float() if p.grad is not None else p.new_zeros(p.numel(), dtype=torch.float32)
                  for p in parameters]
        present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=device)
        flat = torch.cat(pieces + [present, torch.tensor(values, dtype=torch.float32, device=device)])
        dist.all_reduce(flat, group=self.group)
        offset, grads = 0, []
        for parameter in parameters:
            grads.append(flat[offset:offset + parameter.numel()])
            offset += parameter.numel()
        present, totals = flat[offset:offset + len(parameters)], flat[offset + len(parameters):]
        for parameter, grad, count in zip(parameters, grads, present.tolist()):
            parameter.grad = grad.view_as(parameter).to(parameter.dtype) if count > 0 else None
        return totals.tolist()

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def any_process(self, flag: bool) -> bool:
        """Whether `flag` is true on any process (every process must ask at the same point of the run)."""
        total = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(total, group=self.group)
        return bool(total.item() > 0)

    def from_main(self, decide: Callable[[], Answer]) -> Answer:
        """`decide()` run on rank 0 only (it may read files), its answer on every process; when it raises,
        every process raises (a TrainerError as the same class and message), so none waits for the others."""
        message: list = [None]
        failure = None
        if self.is_main:
            try:
                message[0] = ("answer", decide())
            except Exception as exc:            # handed on first, so the others stop too, then raised here
                failure = exc
                kind = type(exc).__name__ if isinstance(exc, TrainerError) else ""
                message[0] = ("error", kind, f"{type(exc).__name__} on rank 0: {exc}" if not kind else str(exc))
        dist.broadcast_object_list(message, src=0, group=self.group,
                                   device=self.device if self.device.type == "cuda" else None)
        if failure is not None:
            raise failure
        if message[0][0] == "error":
            _, kind, text = message[0]
            raise getattr(errors, kind, TrainerError)(text) if kind else RuntimeError(text)
        return message[0][1]

    def close(self) -> None:
        """End the process group (at the end of the program)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def context_from_environment(environ: dict[str, str] | None = None) -> DistributedContext | None:
    """The run torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), with the process
    group started: NCCL on CUDA (this process on GPU LOCAL_RANK), else gloo on the CPU. None when there is no
    such run or it has one process: that one trains on the ordinary single-process path."""
    environ = os.environ if environ is None else environ
    world_size = int(environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is {world_size} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                          "not set: start a multi-process run with torchrun (torchrun --nproc_per_node N ...), which "
                          "sets them all.")
    rank, local_rank = int(environ["RANK"]), int(environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, device)


def check_splittable(network, model_device: torch.device, context: DistributedContext) -> None:
    """What a split batch cannot train the same way as one process, refused before the first step.

    Dropout masks are drawn per sample inside the LoRA's forward, and module dropout and DyLoRA's rank once per
    call, from the step's generator: a process that sees part of the batch (or, training the text encoder, part
    of the captions) would draw other numbers than the single process, and processes would drift apart."""
    drawing = [name.replace("_", " ") for name in ("network_dropout", "rank_dropout", "module_dropout")
               if getattr(network, name, 0) > 0]
    if network.algorithm == "DyLoRA":
        drawing.append("DyLoRA (its rank is drawn each step)")
    if drawing:
        raise ConfigError(f"{', '.join(drawing)} cannot train over {context.world_size} processes yet: the LoRA's "
                          "forward draws those random numbers per sample, and a process sees only its share of the "
                          "batch. Set them to 0 (or train LoRA / LoCon), or train on one process.")
    if _device_index(torch.device(model_device)) != _device_index(context.device):
        raise ConfigError(f"This process (rank {context.rank}) trains on {context.device}, but the model is on "
                          f"{model_device}: load it onto the context's device (cuda:LOCAL_RANK).")


def _device_index(device: torch.device) -> tuple[str, int | None]:
    """A device with its index made explicit: plain "cuda" is the current GPU."""
    if device.type == "cuda" and device.index is None:
        return device.type, torch.cuda.current_device()
    return device.type, device.index
