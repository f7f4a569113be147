"""Learning-rate schedules: one pure function per schedule and a table of names (diffusers' optimization.py layout).

Each function gives the factor on the base learning rate at optimizer step `step` (0-based), with the formulas
of transformers' `get_*_schedule_with_warmup`, which kohya's `get_scheduler_fix` and diffusers' `get_scheduler`
use. `adafactor` is kohya's name for Adafactor's own relative step: the factor stays 1 and the optimizer sets
its step size (see `trainer.optimizers.effective_learning_rate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from .errors import ConfigError

POLYNOMIAL_LR_END = 1e-7          # transformers' and diffusers' lr_end for the polynomial schedule, absolute


@dataclass(frozen=True)
class ScheduleShape:
    """What a schedule needs besides the step."""

    warmup_steps: int
    total_steps: int
    num_cycles: int = 1           # cosine_with_restarts: hard restarts (kohya's --lr_scheduler_num_cycles)
    power: float = 1.0            # polynomial (kohya's --lr_scheduler_power)
    base_lr: float = 1.0          # the optimizer's default lr: polynomial ends at POLYNOMIAL_LR_END absolute


def _warming(step: int, shape: ScheduleShape) -> bool:
    return step < shape.warmup_steps


def _warmup_factor(step: int, shape: ScheduleShape) -> float:
    return step / max(1, shape.warmup_steps)


def _progress(step: int, shape: ScheduleShape) -> float:
    return (step - shape.warmup_steps) / max(1, shape.total_steps - shape.warmup_steps)


def constant(step: int, shape: ScheduleShape) -> float:
    return 1.0


def constant_with_warmup(step: int, shape: ScheduleShape) -> float:
    return _warmup_factor(step, shape) if _warming(step, shape) else 1.0


def linear(step: int, shape: ScheduleShape) -> float:
    if _warming(step, shape):
        return _warmup_factor(step, shape)
    return max(0.0, (shape.total_steps - step) / max(1, shape.total_steps - shape.warmup_steps))


def cosine(step: int, shape: ScheduleShape) -> float:
    """Half a cosine from 1 to 0 after the warmup (transformers' num_cycles = 0.5, as kohya calls it)."""
    if _warming(step, shape):
        return _warmup_factor(step, shape)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * _progress(step, shape))))


def cosine_with_restarts(step: int, shape: ScheduleShape) -> float:
    """`num_cycles` half cosines from 1 to 0, each restarting at 1 (hard restarts); 0 past the last step."""
    if _warming(step, shape):
        return _warmup_factor(step, shape)
    progress = _progress(step, shape)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(shape.num_cycles) * progress) % 1.0))))


def polynomial(step: int, shape: ScheduleShape) -> float:
    """From the base lr down to POLYNOMIAL_LR_END as (remaining share) ** power; linear when power is 1."""
    if _warming(step, shape):
        return _warmup_factor(step, shape)
    lr_init, lr_end = shape.base_lr, POLYNOMIAL_LR_END
    decay_steps = shape.total_steps - shape.warmup_steps
    if step > shape.total_steps or decay_steps <= 0:
        return lr_end / lr_init
    remaining = 1 - (step - shape.warmup_steps) / decay_steps
    return ((lr_init - lr_end) * remaining ** shape.power + lr_end) / lr_init


def adafactor(step: int, shape: ScheduleShape) -> float:
    return 1.0


@dataclass(frozen=True)
class Schedule:
    name: str
    function: Callable[[int, ScheduleShape], float]
    takes_warmup: bool
    help: str


SCHEDULES: dict[str, Schedule] = {s.name: s for s in (
    Schedule("constant", constant, False, "the same lr every step (kohya's default)"),
    Schedule("constant_with_warmup", constant_with_warmup, True, "linear warmup, then constant"),
    Schedule("cosine", cosine, True, "warmup, then half a cosine down to 0 (kohya_ss GUI default)"),
    Schedule("cosine_with_restarts", cosine_with_restarts, True,
             "warmup, then num_cycles cosines, each starting again at the full lr"),
    Schedule("linear", linear, True, "warmup, then straight down to 0"),
    Schedule("polynomial", polynomial, True, "warmup, then down to 1e-7 as (share of steps left) ^ power"),
    Schedule("adafactor", adafactor, False, "Adafactor's relative step sets the lr itself (Adafactor only)"),
)}


def lr_multiplier(scheduler: str, step: int, warmup_steps: int, total_steps: int, num_cycles: int = 1,
                  power: float = 1.0, base_lr: float = 1.0) -> float:
    """Learning-rate factor at optimizer step `step` (0-based)."""
    if scheduler not in SCHEDULES:
        raise ConfigError(f"Unknown lr scheduler {scheduler!r}; choose one of {', '.join(SCHEDULES)}.")
    shape = ScheduleShape(warmup_steps, total_steps, num_cycles, power, base_lr)
    return SCHEDULES[scheduler].function(step, shape)


def lambda_scheduler(optimizer: torch.optim.Optimizer, scheduler: str, shape: ScheduleShape) -> LambdaLR:
    """A LambdaLR running `scheduler`; its state (the step count) saves and loads with the run's state."""
    function = SCHEDULES[scheduler].function
    return LambdaLR(optimizer, lambda step: function(step, shape))
