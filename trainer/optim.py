"""Optimizers and learning-rate schedules with kohya's meanings.

Schedules follow transformers' `get_*_schedule_with_warmup` formulas, which kohya's
get_scheduler_fix uses; warmup is given as a share of the run's total steps (kohya's float
`--lr_warmup_steps` < 1: `int(share * total_steps)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from .errors import ConfigError

OPTIMIZER_TYPES = ("AdamW",)
SCHEDULERS = ("constant", "constant_with_warmup", "cosine")


@dataclass(frozen=True)
class OptimizerConfig:
    """What the Optimizer node produces (LORA_OPTIMIZER)."""

    optimizer_type: str = "AdamW"
    learning_rate: float = 1e-4          # the UNet's (kohya's learning_rate / unet_lr)
    text_encoder_lr: float = 1e-4        # kohya_ss GUI default; 0 leaves the text encoder's LoRA as it is
    loraplus_lr_ratio: float = 0.0       # LoRA+: the up matrices train at lr x ratio (kohya suggests 16); 0 = off
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0

    def validated(self) -> "OptimizerConfig":
        if self.optimizer_type not in OPTIMIZER_TYPES:
            raise ConfigError(f"Optimizer {self.optimizer_type!r} is not available yet; choose one of "
                              f"{', '.join(OPTIMIZER_TYPES)}.")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"Scheduler {self.scheduler!r} is not available yet; choose one of "
                              f"{', '.join(SCHEDULERS)}.")
        if not self.learning_rate >= 0 or not self.text_encoder_lr >= 0:
            raise ConfigError("learning rates must be 0 or more (0 leaves that part as it is; kohya_ss default 1e-4).")
        if self.loraplus_lr_ratio and not self.loraplus_lr_ratio >= 1:
            raise ConfigError(f"loraplus_lr_ratio is {self.loraplus_lr_ratio}; use 0 (off) or 1 and more (the "
                              "LoRA+ paper and kohya suggest 16).")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup is {self.warmup_ratio}; give it as a share of all steps, 0 to below 1 "
                              "(0.1 = the first 10% of steps).")
        for beta in self.betas:
            if not 0 <= beta < 1:
                raise ConfigError(f"betas {self.betas}: each must be in [0, 1).")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("weight_decay and max_grad_norm must be 0 or more.")
        return self

    def warmup_steps(self, total_steps: int) -> int:
        return int(self.warmup_ratio * total_steps)

    def effective_scheduler(self) -> str:
        """kohya refuses warmup with `constant`; we run it as constant_with_warmup instead."""
        if self.scheduler == "constant" and self.warmup_ratio > 0:
            return "constant_with_warmup"
        return self.scheduler

    def describe(self, total_steps: int) -> str:
        text = (f"{self.optimizer_type} lr {self.learning_rate:g}"
                + (f", LoRA+ ratio {self.loraplus_lr_ratio:g}" if self.loraplus_lr_ratio else "")
                + f", weight decay {self.weight_decay:g}, "
                f"betas {self.betas[0]:g}/{self.betas[1]:g}; {self.effective_scheduler()} schedule, "
                f"{self.warmup_steps(total_steps)} warmup step(s)")
        if self.effective_scheduler() != self.scheduler:
            text += " (constant with warmup runs as constant_with_warmup)"
        return text

    def optimizer_string(self) -> str:
        """kohya's ss_optimizer: module.Class(args)."""
        return (f"torch.optim.adamw.AdamW(weight_decay={self.weight_decay},betas={self.betas},eps={self.eps})")


def lr_multiplier(scheduler: str, step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor at optimizer step `step` (0-based), transformers' formulas."""
    if scheduler == "constant":
        return 1.0
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if scheduler == "constant_with_warmup":
        return 1.0
    if scheduler == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    raise ConfigError(f"unknown scheduler {scheduler!r}")


def build_optimizer(config: OptimizerConfig, params: list, total_steps: int) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """`params`: parameters, or groups (dicts with params and lr, as LoRANetwork.parameter_groups makes)."""
    config = config.validated()
    if not params:
        raise ConfigError("Every learning rate of this run is 0, so nothing would train; set the learning rate of "
                          "the part you train above 0.")
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=config.betas, eps=config.eps,
                                  weight_decay=config.weight_decay)
    scheduler_name = config.effective_scheduler()
    warmup = config.warmup_steps(total_steps)
    scheduler = LambdaLR(optimizer, lambda step: lr_multiplier(scheduler_name, step, warmup, total_steps))
    return optimizer, scheduler
