"""Building the optimizer and its schedule from an OptimizerConfig and the network's parameter groups."""

from __future__ import annotations

import logging

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..errors import ConfigError
from ..schedules import ScheduleShape, lambda_scheduler
from .arguments import format_value
from .config import OptimizerConfig
from .table import OPTIMIZERS, OptimizerType, scheduled_lr

logger = logging.getLogger(__name__)

# kohya's prepare_optimizer_params lists the text encoder's groups before the UNet's
KOHYA_GROUP_ORDER = ("textencoder", "textencoder plus", "unet", "unet plus")


def first_group_lr(groups: list[dict]) -> float:
    """The lr of kohya's first group: the one adaptive optimizers use for all groups."""
    def rank(indexed):
        index, group = indexed
        name = group.get("name")
        return (KOHYA_GROUP_ORDER.index(name) if name in KOHYA_GROUP_ORDER else len(KOHYA_GROUP_ORDER), index)
    return float(min(enumerate(groups), key=rank)[1]["lr"])


def _as_groups(config: OptimizerConfig, params) -> list[dict]:
    params = list(params)
    if params and isinstance(params[0], dict):
        return [dict(group, params=list(group["params"])) for group in params]
    return [{"params": params, "lr": config.base_lr}] if params else []


def build_optimizer(config: OptimizerConfig, params: list, total_steps: int) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """The optimizer and its LR schedule. `params`: parameters, or groups (dicts with params, lr and name, as
    LoRANetwork.parameter_groups makes; groups whose lr is 0 are already left out, as kohya drops them)."""
    config = config.validated()
    groups = _as_groups(config, params)
    if not groups:
        raise ConfigError("Every learning rate of this run is 0, so nothing would train; set the learning rate of "
                          "the part you train above 0.")
    spec = config.spec
    if spec.adaptive:                     # one lr for every group, else these optimizers refuse to step
        lr = first_group_lr(groups)
        groups = [dict(group, lr=lr) for group in groups]
    device_type = next((p.device.type for group in groups for p in group["params"]), None)
    for warning in config.warnings(device_type):
        logger.warning("lora-trainer optimizer: %s", warning)
    optimizer = _construct(spec, config, groups, device_type)
    shape = ScheduleShape(config.warmup_steps(total_steps), total_steps, config.num_cycles, config.power,
                          config.base_lr)
    return optimizer, lambda_scheduler(optimizer, config.effective_scheduler(), shape)


# torch optimizers with a fused CUDA kernel: one launch updates every LoRA tensor (the default, foreach, takes a
# few per step); the same update, to float rounding
FUSED_ON_CUDA = ("torch.optim.adamw.AdamW",)


def _construct(spec: OptimizerType, config: OptimizerConfig, groups: list[dict],
               device_type: str | None = None) -> torch.optim.Optimizer:
    kwargs = config.explicit_arguments()
    fixed = dict(spec.fixed)
    if device_type == "cuda" and spec.kohya_class in FUSED_ON_CUDA:
        fixed["fused"] = True
    try:
        cls = spec.optimizer_class()
    except Exception as exc:  # the package checked out, but the class is not where it should be
        raise ConfigError(f"{spec.name}: {spec.module}.{spec.class_name} could not be loaded ({exc}); reinstall "
                          f"{spec.package.distribution if spec.package else 'torch'}.") from None
    try:
        return spec.construct(cls, groups, config.base_lr, {**fixed, **kwargs})
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:
        given = ", ".join(f"{k}={format_value(v)}" for k, v in kwargs.items()) or "none beyond lr"
        raise ConfigError(f"{spec.name} refused its arguments ({given}): {exc}. Change them on the Optimizer node "
                          "or in its extra_args.") from None


def effective_learning_rate(optimizer: torch.optim.Optimizer, group_index: int = 0) -> float:
    """The step size a group actually took in the last step, chosen by the optimizer's class: d * lr for
    DAdaptation and Prodigy (as kohya logs `lr/d*lr`), Adafactor's own relative step, else the scheduled lr.
    Read it after `optimizer.step()` and before `scheduler.step()`."""
    return effective_learning_rate_reader(optimizer)(group_index)


def effective_learning_rate_reader(optimizer: torch.optim.Optimizer):
    """effective_learning_rate for one optimizer, its class looked up once (the training loop reads it every
    step): a function of the group index."""
    function = _effective_function(optimizer)
    return lambda group_index=0: function(optimizer, optimizer.param_groups[group_index])


def effective_learning_rates(optimizer: torch.optim.Optimizer) -> list[float]:
    function = _effective_function(optimizer)
    return [function(optimizer, group) for group in optimizer.param_groups]


def _effective_function(optimizer: torch.optim.Optimizer):
    cls = type(optimizer)
    for spec in OPTIMIZERS.values():
        if spec.class_name == cls.__name__ and cls.__module__.startswith(spec.module.split(".")[0]):
            return spec.effective_lr
    return scheduled_lr
