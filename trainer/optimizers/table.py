"""The table of optimizer types: what kohya's `--optimizer_type` names, built the way kohya builds it.

Each row holds the class and where it comes from, kohya's class string for `ss_optimizer`, the typed
arguments with the class's own defaults, the package it needs, and for the 8-bit and paged types their
full-precision twin (run instead when bitsandbytes cannot run them). The Optimizer node's combo is this
table's keys. Adding an optimizer is one row here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .arguments import Argument
from .packages import BITSANDBYTES, DADAPTATION, LION_PYTORCH, PRODIGYOPT, TRANSFORMERS, Package, import_module


def _construct(cls, groups: list[dict], lr: float, kwargs: dict) -> torch.optim.Optimizer:
    return cls(groups, lr=lr, **kwargs)


def _construct_adafactor(cls, groups: list[dict], lr: float, kwargs: dict) -> torch.optim.Optimizer:
    """kohya: with relative_step the lr is dropped everywhere (Adafactor refuses one); the groups then get
    `lr` back only as the number the schedule reports, which Adafactor's relative step never reads."""
    if not kwargs.get("relative_step", True):
        return cls(groups, lr=lr, **kwargs)
    optimizer = cls([{k: v for k, v in group.items() if k != "lr"} for group in groups], lr=None, **kwargs)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return optimizer


def scheduled_lr(optimizer: torch.optim.Optimizer, group: dict) -> float:
    return float(group["lr"])


def d_times_lr(optimizer: torch.optim.Optimizer, group: dict) -> float:
    """DAdaptation and Prodigy: the step is d * lr, d the distance estimate the optimizer keeps in each group."""
    return float(group["d"]) * float(group["lr"])


def adafactor_lr(optimizer: torch.optim.Optimizer, group: dict) -> float:
    """The step size Adafactor used last for the group's first parameter (transformers' `_get_lr` formula, as
    its AdafactorSchedule reports it); the group's lr before the first step."""
    state = next((optimizer.state[p] for p in group["params"] if optimizer.state.get(p, {}).get("step")), None)
    if state is None:
        return float(group["lr"])
    size = float(group["lr"])
    if group["relative_step"]:
        floor = 1e-6 * state["step"] if group["warmup_init"] else 1e-2
        size = min(floor, 1.0 / math.sqrt(state["step"]))
    scale = max(group["eps"][1], float(state["RMS"])) if group["scale_parameter"] else 1.0
    return scale * size


@dataclass(frozen=True)
class OptimizerType:
    name: str
    module: str                               # imported when the type is chosen
    class_name: str
    kohya_class: str                          # ss_optimizer's name: the class's module + name, as kohya writes it
    arguments: tuple[Argument, ...]
    package: Package | None = None            # None: torch's own
    twin: str = ""                            # the full-precision type run when bitsandbytes cannot run this one
    fixed: tuple[tuple[str, Any], ...] = ()   # always passed, not written (kohya passes nesterov=True so)
    kohya_defaults: tuple[tuple[str, Any], ...] = ()   # what kohya adds when not given, and writes
    adaptive: bool = False                    # DAdaptation / Prodigy: lr around 1; one lr for all groups
    paged: bool = False
    construct: Callable = _construct
    effective_lr: Callable[[torch.optim.Optimizer, dict], float] = scheduled_lr
    help: str = ""

    def optimizer_class(self):
        return getattr(import_module(self.module), self.class_name)

    def argument(self, name: str) -> Argument | None:
        return next((argument for argument in self.arguments if argument.name == name), None)


def _betas(default: tuple, kind: str = "pair") -> Argument:
    return Argument("betas", kind, default, "moment decay rates")


_WD = "weight decay"
_D0 = Argument("d0", "float", 1e-6, "initial distance estimate")
_GROWTH = Argument("growth_rate", "float", math.inf, "largest factor d may grow by in a step")
_MIN_8BIT = Argument("min_8bit_size", "int", 4096, "tensors with fewer elements keep 32-bit state")
_EPS8 = Argument("eps", "float", 1e-8, "denominator term")

_ADAM = (_betas((0.9, 0.999)), _EPS8, Argument("weight_decay", "float", 0.01, _WD))
_ADAM_8BIT = _ADAM + (_MIN_8BIT,)
_LION = (_betas((0.9, 0.99)), Argument("weight_decay", "float", 0.0, _WD))
_SGD = (Argument("momentum", "float", 0.0, "kohya sets 0.9 when not given"),
        Argument("dampening", "float", 0.0), Argument("weight_decay", "float", 0.0, _WD))
_ADAN = (_betas((0.98, 0.92, 0.99), "triple"), _EPS8, Argument("weight_decay", "float", 0.02, _WD),
         Argument("no_prox", "bool", False), _D0, _GROWTH)
_DADAPT_ADAM = (_betas((0.9, 0.999)), _EPS8, Argument("weight_decay", "float", 0.0, _WD),
                Argument("decouple", "bool", False, "AdamW-style decoupled weight decay"), _D0, _GROWTH)
_BIAS = Argument("use_bias_correction", "bool", False, "Adam's bias correction")

_BNB = "bitsandbytes.optim"
_DA, _DAX = "dadaptation", "dadaptation.experimental"

OPTIMIZERS: dict[str, OptimizerType] = {t.name: t for t in (
    OptimizerType("AdamW", "torch.optim", "AdamW", "torch.optim.adamw.AdamW",
                  _ADAM + (Argument("amsgrad", "bool", False),), help="torch's AdamW (kohya's default type)"),
    OptimizerType("AdamW8bit", _BNB, "AdamW8bit", "bitsandbytes.optim.adamw.AdamW8bit", _ADAM_8BIT,
                  BITSANDBYTES, twin="AdamW", help="AdamW with 8-bit state (kohya_ss GUI default)"),
    OptimizerType("PagedAdamW8bit", _BNB, "PagedAdamW8bit", "bitsandbytes.optim.adamw.PagedAdamW8bit", _ADAM_8BIT,
                  BITSANDBYTES, twin="AdamW", paged=True, help="AdamW8bit whose state pages out of GPU memory"),
    OptimizerType("PagedAdamW", _BNB, "PagedAdamW", "bitsandbytes.optim.adamw.PagedAdamW", _ADAM_8BIT,
                  BITSANDBYTES, twin="AdamW", paged=True, help="32-bit AdamW whose state pages out of GPU memory"),
    OptimizerType("PagedAdamW32bit", _BNB, "PagedAdamW32bit", "bitsandbytes.optim.adamw.PagedAdamW32bit",
                  _ADAM_8BIT, BITSANDBYTES, twin="AdamW", paged=True, help="the same as PagedAdamW"),
    OptimizerType("Lion", "lion_pytorch", "Lion", "lion_pytorch.lion_pytorch.Lion",
                  _LION + (Argument("decoupled_weight_decay", "bool", False),), LION_PYTORCH,
                  help="lion-pytorch's Lion (lr about 3-10x smaller than AdamW's)"),
    OptimizerType("Lion8bit", _BNB, "Lion8bit", "bitsandbytes.optim.lion.Lion8bit", _LION + (_MIN_8BIT,),
                  BITSANDBYTES, twin="Lion", help="Lion with 8-bit state"),
    OptimizerType("PagedLion8bit", _BNB, "PagedLion8bit", "bitsandbytes.optim.lion.PagedLion8bit",
                  _LION + (_MIN_8BIT,), BITSANDBYTES, twin="Lion", paged=True, help="Lion8bit, paged"),
    OptimizerType("SGDNesterov", "torch.optim", "SGD", "torch.optim.sgd.SGD", _SGD,
                  fixed=(("nesterov", True),), kohya_defaults=(("momentum", 0.9),), help="SGD with Nesterov momentum"),
    OptimizerType("SGDNesterov8bit", _BNB, "SGD8bit", "bitsandbytes.optim.sgd.SGD8bit", _SGD + (_MIN_8BIT,),
                  BITSANDBYTES, twin="SGDNesterov", fixed=(("nesterov", True),), kohya_defaults=(("momentum", 0.9),),
                  help="SGDNesterov with 8-bit state"),
    OptimizerType("DAdaptation", _DAX, "DAdaptAdamPreprint",
                  "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint", _DADAPT_ADAM, DADAPTATION,
                  adaptive=True, effective_lr=d_times_lr, help="kohya's DAdaptation: D-Adaptation's AdamPreprint"),
    OptimizerType("DAdaptAdam", _DA, "DAdaptAdam", "dadaptation.dadapt_adam.DAdaptAdam", _DADAPT_ADAM + (_BIAS,),
                  DADAPTATION, adaptive=True, effective_lr=d_times_lr, help="D-Adaptation Adam"),
    OptimizerType("DAdaptAdaGrad", _DA, "DAdaptAdaGrad", "dadaptation.dadapt_adagrad.DAdaptAdaGrad",
                  (Argument("momentum", "float", 0.0), Argument("weight_decay", "float", 0.0, _WD),
                   Argument("eps", "float", 1e-6), _D0, _GROWTH),
                  DADAPTATION, adaptive=True, effective_lr=d_times_lr, help="D-Adaptation AdaGrad"),
    OptimizerType("DAdaptAdan", _DA, "DAdaptAdan", "dadaptation.dadapt_adan.DAdaptAdan", _ADAN, DADAPTATION,
                  adaptive=True, effective_lr=d_times_lr, help="D-Adaptation Adan"),
    OptimizerType("DAdaptAdanIP", _DAX, "DAdaptAdanIP", "dadaptation.experimental.dadapt_adan_ip.DAdaptAdanIP",
                  _ADAN, DADAPTATION, adaptive=True, effective_lr=d_times_lr, help="D-Adaptation Adan (IP)"),
    OptimizerType("DAdaptLion", _DA, "DAdaptLion", "dadaptation.dadapt_lion.DAdaptLion",
                  _LION + (_D0,), DADAPTATION, adaptive=True, effective_lr=d_times_lr, help="D-Adaptation Lion"),
    OptimizerType("DAdaptSGD", _DA, "DAdaptSGD", "dadaptation.dadapt_sgd.DAdaptSGD",
                  (Argument("momentum", "float", 0.0), Argument("weight_decay", "float", 0.0, _WD), _D0, _GROWTH),
                  DADAPTATION, adaptive=True, effective_lr=d_times_lr, help="D-Adaptation SGD"),
    OptimizerType("Prodigy", "prodigyopt", "Prodigy", "prodigyopt.prodigy.Prodigy",
                  (_betas((0.9, 0.999)), Argument("beta3", "float_or_none", None, "None: sqrt(beta2)"), _EPS8,
                   Argument("weight_decay", "float", 0.0, _WD),
                   Argument("decouple", "bool", True, "AdamW-style decoupled weight decay"), _BIAS,
                   Argument("safeguard_warmup", "bool", False, "keeps d from growing too fast during warmup"),
                   _D0, Argument("d_coef", "float", 1.0, "scales the estimated step (below 1: smaller steps)"),
                   _GROWTH, Argument("slice_p", "int", 1, "estimate d on every p-th element (saves memory)")),
                  PRODIGYOPT, adaptive=True, effective_lr=d_times_lr, help="Prodigy (an improved D-Adaptation)"),
    OptimizerType("Adafactor", "transformers.optimization", "Adafactor", "transformers.optimization.Adafactor",
                  (Argument("eps", "pair", (1e-30, 1e-3), "regularisation of the squared gradient and of the scale"),
                   Argument("clip_threshold", "float", 1.0), Argument("decay_rate", "float", -0.8),
                   Argument("beta1", "float_or_none", None, "None: no first moment"),
                   Argument("weight_decay", "float", 0.0, _WD),
                   Argument("scale_parameter", "bool", True, "scale the step by the parameter's RMS"),
                   Argument("relative_step", "bool", True, "Adafactor finds its own lr (the adafactor schedule)"),
                   Argument("warmup_init", "bool", False, "relative step with its own warmup")),
                  TRANSFORMERS, kohya_defaults=(("relative_step", True),), construct=_construct_adafactor,
                  effective_lr=adafactor_lr, help="transformers' Adafactor (kohya: relative step on)"),
)}


TORCH_ADAM_BETAS = (0.9, 0.999)


def completed_betas(optimizer_type: str, beta1: float | None, beta2: float | None) -> tuple[float, float] | None:
    """(beta1, beta2) with a missing one taken from the optimizer's own default pair (the Optimizer node's and the
    command line's beta widgets: one may be set alone); None when neither is given."""
    if beta1 is None and beta2 is None:
        return None
    spec = OPTIMIZERS.get(optimizer_type)
    known = spec.argument("betas") if spec else None
    default = known.default if known is not None and known.kind == "pair" else TORCH_ADAM_BETAS
    return (default[0] if beta1 is None else beta1, default[1] if beta2 is None else beta2)
