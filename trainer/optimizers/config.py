"""OptimizerConfig: what the Optimizer node gives (LORA_OPTIMIZER), checked and made runnable here.

`validated()` checks every value, parses the extra arguments strictly and resolves the type against the
installed packages: an 8-bit or paged type whose bitsandbytes is missing, broken or too old becomes its
full-precision twin (`fallback_from` keeps what was asked for), a type whose package is missing and has
no twin is a ConfigError with the install command. Warmup is a share of all steps (kohya's float
`--lr_warmup_steps` < 1: `int(share * total_steps)`) or a step count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError
from ..schedules import POLYNOMIAL_LR_END, SCHEDULES
from .arguments import format_value, parse_extra_arguments
from .packages import BITSANDBYTES, package_problem
from .table import OPTIMIZERS, OptimizerType

# arguments the node has widgets for; None = the optimizer's own default
WIDGET_ARGUMENTS = ("weight_decay", "betas", "eps", "d_coef", "decouple", "use_bias_correction", "safeguard_warmup",
                    "relative_step")
PAGED_ON_CPU = ("bitsandbytes: Paged optimizers are not supported on CPU. Falling back to non-paged optimizer "
                "behavior.")


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer, its learning rates and arguments, and the learning-rate schedule."""

    optimizer_type: str = "AdamW"
    learning_rate: float = 1e-4          # the UNet's (kohya's learning_rate / unet_lr)
    text_encoder_lr: float = 1e-4        # kohya_ss GUI default; 0 leaves the text encoder's LoRA as it is
    loraplus_lr_ratio: float = 0.0       # LoRA+: the up matrices train at lr x ratio (kohya suggests 16); 0 = off
    weight_decay: float | None = None    # None (each of these): the optimizer's own default, as kohya passes none
    betas: tuple[float, float] | None = None
    eps: float | None = None
    d_coef: float | None = None
    decouple: bool | None = None
    use_bias_correction: bool | None = None
    safeguard_warmup: bool | None = None
    relative_step: bool | None = None
    extra_args: str = ""                 # kohya's --optimizer_args: "key=value key=value"
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1            # share of all steps
    warmup_step_count: int = 0           # or a number of steps (not both)
    num_cycles: int = 1                  # cosine_with_restarts
    power: float = 1.0                   # polynomial
    max_grad_norm: float = 1.0
    fallback_from: str = ""              # the type asked for, when its twin runs instead (set by validated)

    @property
    def spec(self) -> OptimizerType:
        return OPTIMIZERS[self.optimizer_type]

    @property
    def requested_spec(self) -> OptimizerType:
        return OPTIMIZERS[self.fallback_from or self.optimizer_type]

    # ---- checks -------------------------------------------------------------------------------------------

    def validated(self) -> "OptimizerConfig":
        if self.optimizer_type not in OPTIMIZERS:
            raise ConfigError(f"Optimizer type {self.optimizer_type!r} is unknown; choose one of "
                              f"{', '.join(OPTIMIZERS)}.")
        if self.scheduler not in SCHEDULES:
            raise ConfigError(f"Scheduler {self.scheduler!r} is unknown; choose one of {', '.join(SCHEDULES)}.")
        if not self.learning_rate >= 0 or not self.text_encoder_lr >= 0:
            raise ConfigError("learning rates must be 0 or more (0 leaves that part as it is; kohya_ss default 1e-4).")
        if self.loraplus_lr_ratio and not self.loraplus_lr_ratio >= 1:
            raise ConfigError(f"loraplus_lr_ratio is {self.loraplus_lr_ratio}; use 0 (off) or 1 and more (the "
                              "LoRA+ paper and kohya suggest 16).")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup is {self.warmup_ratio}; give it as a share of all steps, 0 to below 1 "
                              "(0.1 = the first 10% of steps), or as a step count in lr_warmup_steps.")
        if self.warmup_step_count < 0:
            raise ConfigError(f"lr_warmup_steps is {self.warmup_step_count}; use 0 or more.")
        if self.warmup_step_count and self.warmup_ratio:
            raise ConfigError(f"Warmup is given twice: lr_warmup {self.warmup_ratio} (a share) and lr_warmup_steps "
                              f"{self.warmup_step_count} (steps). Set one of them to 0.")
        if self.num_cycles < 1:
            raise ConfigError(f"lr_scheduler_num_cycles is {self.num_cycles}; use 1 or more.")
        if not self.power > 0:
            raise ConfigError(f"lr_scheduler_power is {self.power}; use a number above 0 (1 = linear).")
        if not self.max_grad_norm >= 0:
            raise ConfigError("max_grad_norm must be 0 (off) or more (kohya default 1.0).")
        self._check_widget_values()
        self.explicit_arguments()             # the extra arguments parse, with no key given twice
        self._check_schedule()
        return self._resolved()

    def _check_widget_values(self) -> None:
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay is {self.weight_decay}; use 0 or more (-1 on the node: the optimizer's "
                              "default).")
        for beta in self.betas or ():
            if not 0 <= beta < 1:
                raise ConfigError(f"betas {self.betas}: each must be in [0, 1) (-1 on the node: the optimizer's "
                                  "default).")
        for name in ("eps", "d_coef"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} is {value}; use a number above 0 (-1 on the node: the optimizer's "
                                  "default).")

    def _check_schedule(self) -> None:
        if self.scheduler == "adafactor" and not (self.optimizer_type == "Adafactor" and self.uses_relative_step):
            raise ConfigError("The adafactor schedule is Adafactor's relative step (kohya: it must be used with the "
                              "Adafactor optimizer, relative_step on). Choose the Adafactor type with relative_step "
                              "default or true, or another lr_scheduler.")
        if self.effective_scheduler() == "polynomial" and not self.base_lr > POLYNOMIAL_LR_END:
            raise ConfigError(f"The polynomial schedule decays to {POLYNOMIAL_LR_END:g}, so the learning rate must be "
                              f"above it (it is {self.base_lr:g}). Raise learning_rate or choose another schedule.")

    def _resolved(self) -> "OptimizerConfig":
        """The type that runs here: a twin for bitsandbytes types that cannot run, else this type."""
        package = self.spec.package
        problem = package_problem(package) if package else ""
        if not problem:
            return self
        if self.spec.twin:
            twin = replace(self, optimizer_type=self.spec.twin, fallback_from=self.fallback_from or self.optimizer_type)
            try:
                return twin._resolved()
            except ConfigError as exc:
                raise ConfigError(f"{self.optimizer_type} cannot run: {problem} (install it with "
                                  f"{package.install_command()}), and its full-precision twin {exc}") from None
        raise ConfigError(f"{self.optimizer_type} needs the {package.distribution} package: {problem}. Install it "
                          f"into the Python that runs ComfyUI with {package.install_command()} and restart "
                          "ComfyUI, or choose another optimizer type.")

    # ---- arguments ----------------------------------------------------------------------------------------

    def _widget_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in WIDGET_ARGUMENTS if getattr(self, name) is not None}

    def ignored_arguments(self) -> list[str]:
        """Node arguments set (not -1 / default) that this type does not take."""
        ignored = []
        for name, value in self._widget_values().items():
            argument = self.spec.argument(name)
            if argument is None or (argument.kind in ("pair", "triple")) != isinstance(value, tuple) or \
                    (argument.kind == "triple" and len(value) != 3):
                ignored.append(name)
        return ignored

    def explicit_arguments(self) -> dict[str, Any]:
        """The keyword arguments passed beyond lr, as kohya's optimizer_kwargs: the node's set arguments this type
        takes, then the extra arguments, then what kohya adds when not given (SGD's momentum 0.9, ...)."""
        ignored = set(self.ignored_arguments())
        kwargs = {name: value for name, value in self._widget_values().items() if name not in ignored}
        requested = self.requested_spec
        extra = parse_extra_arguments(self.extra_args, requested.arguments, requested.name)
        for name, value in extra.items():
            if name in kwargs:
                raise ConfigError(f"{name} is set on the Optimizer node ({format_value(kwargs[name])}) and in its "
                                  f"extra arguments ({format_value(value)}); keep one.")
            if self.spec.argument(name) is not None:      # a fallback twin may lack an 8-bit argument
                kwargs[name] = value
        for name, value in self.spec.kohya_defaults:
            kwargs.setdefault(name, value)
        if self.optimizer_type == "Adafactor" and kwargs.get("warmup_init") and not kwargs["relative_step"]:
            kwargs["relative_step"] = True                 # kohya: warmup_init needs the relative step
        return kwargs

    def all_arguments(self) -> dict[str, Any]:
        """Every argument's value in this run: the class defaults with the explicit ones over them."""
        values = {argument.name: argument.default for argument in self.spec.arguments}
        values.update(self.explicit_arguments())
        return values

    @property
    def uses_relative_step(self) -> bool:
        return self.optimizer_type == "Adafactor" and bool(self.explicit_arguments().get("relative_step", True))

    @property
    def base_lr(self) -> float:
        """The optimizer's default lr (kohya's learning_rate): the UNet's, or the text encoder's when that is 0."""
        return self.learning_rate or self.text_encoder_lr

    # ---- schedule -----------------------------------------------------------------------------------------

    def effective_scheduler(self) -> str:
        """kohya refuses warmup with `constant`: it runs as constant_with_warmup. Adafactor's relative step always
        runs its own schedule (kohya switches to `adafactor` the same way)."""
        if self.uses_relative_step:
            return "adafactor"
        if self.scheduler == "constant" and (self.warmup_ratio > 0 or self.warmup_step_count > 0):
            return "constant_with_warmup"
        return self.scheduler

    def warmup_steps(self, total_steps: int) -> int:
        if not SCHEDULES[self.effective_scheduler()].takes_warmup:
            return 0
        return self.warmup_step_count or int(self.warmup_ratio * total_steps)

    def scheduler_string(self) -> str:
        """kohya's ss_lr_scheduler (it writes `adafactor:<lr>` for Adafactor's relative step)."""
        name = self.effective_scheduler()
        return f"adafactor:{self.base_lr}" if name == "adafactor" else name

    # ---- what the user sees -------------------------------------------------------------------------------

    def warnings(self, device_type: str | None = None) -> list[str]:
        """What is allowed, as kohya allows it, but worth saying; `device_type`: where training runs, if known."""
        found, spec, name = [], self.spec, self.optimizer_type
        if self.fallback_from:
            problem = package_problem(BITSANDBYTES) or "it cannot run here"
            found.append(f"{self.fallback_from} needs bitsandbytes: {problem}. Training runs {name}, its "
                         f"full-precision twin, instead (the file's ss_optimizer says so). For 8-bit state install "
                         f"{BITSANDBYTES.install_command()} and restart ComfyUI.")
        for ignored in self.ignored_arguments():
            takes = ", ".join(argument.name for argument in spec.arguments)
            found.append(f"{ignored} is not an argument of {name} in this form, so it is ignored ({name} takes: "
                         f"{takes}; set it to -1 / default, or give it in extra_args).")
        if spec.adaptive:
            found.extend(self._adaptive_warnings())
        if name == "Adafactor":
            found.extend(self._adafactor_warnings())
        if spec.paged and device_type == "cpu":
            found.append(PAGED_ON_CPU)
        if self.scheduler == "constant" and self.effective_scheduler() == "constant_with_warmup":
            found.append("constant with a warmup runs as constant_with_warmup (kohya refuses the combination).")
        return found

    def _adaptive_warnings(self) -> list[str]:
        name, found = self.optimizer_type, []
        lrs = [lr for lr in (self.learning_rate, self.text_encoder_lr) if lr > 0]
        if any(lr <= 0.1 for lr in lrs):
            found.append(f"{name} finds its own step size: set the learning rate around 1.0 (it is "
                         f"{' / '.join(f'{lr:g}' for lr in lrs)})"
                         + ("; d_coef scales its step instead." if self.spec.argument("d_coef") else "."))
        if len(set(lrs)) > 1 or self.loraplus_lr_ratio:
            found.append(f"{name} takes one learning rate for all parameter groups, so only the first group's lr "
                         f"counts (kohya's rule): when Configure LoRA trains the text encoder, every group trains at "
                         f"text_encoder_lr {self.text_encoder_lr:g}, else at learning_rate {self.learning_rate:g}"
                         + ("; the LoRA+ ratio has no effect" if self.loraplus_lr_ratio else "") + ".")
        return found

    def _adafactor_warnings(self) -> list[str]:
        found = []
        if self.uses_relative_step:
            if self.scheduler != "adafactor":
                found.append(f"Adafactor's relative step sets the learning rate itself, so the adafactor schedule runs "
                             f"instead of {self.scheduler} (as kohya does); learning_rate and text_encoder_lr are only "
                             "reported (an lr of 0 still leaves its part as it is).")
            if self.warmup_ratio or self.warmup_step_count:
                found.append("The adafactor schedule has no warmup, so lr_warmup is not used (kohya refuses a warmup "
                             "there); warmup_init=true in extra_args gives Adafactor's own warmup.")
            return found
        if self.max_grad_norm:
            found.append("Adafactor without relative_step clips gradients too (max_grad_norm is set); kohya suggests "
                         "max_grad_norm 0.")
        if self.effective_scheduler() != "constant_with_warmup":
            found.append("Adafactor without relative_step: kohya suggests the constant_with_warmup schedule.")
        if self.all_arguments()["clip_threshold"] != 1.0:
            found.append("Adafactor: kohya suggests clip_threshold=1.0.")
        return found

    def describe(self, total_steps: int | None = None, device_type: str | None = None) -> str:
        lrs = f"lr {self.learning_rate:g}, text encoder lr {self.text_encoder_lr:g}"
        if self.loraplus_lr_ratio:
            lrs += f", LoRA+ ratio {self.loraplus_lr_ratio:g}"
        arguments = ", ".join(f"{key} {format_value(value)}" for key, value in self.all_arguments().items())
        name = self.optimizer_type + (f" (asked: {self.fallback_from})" if self.fallback_from else "")
        schedule = self.effective_scheduler()
        if schedule == "cosine_with_restarts":
            schedule += f" ({self.num_cycles} cycle(s))"
        elif schedule == "polynomial":
            schedule += f" (power {self.power:g})"
        if total_steps is None:
            warmup = (f"{self.warmup_step_count} warmup step(s)" if self.warmup_step_count
                      else f"warmup {self.warmup_ratio:g} of all steps")
            if not SCHEDULES[self.effective_scheduler()].takes_warmup:
                warmup = "no warmup"
        else:
            warmup = f"{self.warmup_steps(total_steps)} warmup step(s)"
        text = (f"{name} {lrs}; {arguments}; {schedule} schedule, {warmup}; "
                f"max grad norm {self.max_grad_norm:g}")
        return "\n".join([text] + [f"warning: {warning}" for warning in self.warnings(device_type)])

    def optimizer_string(self) -> str:
        """kohya's ss_optimizer: the class that ran, module.Class, with the arguments given beyond lr."""
        kwargs = self.explicit_arguments()
        if not kwargs:
            return self.spec.kohya_class
        return self.spec.kohya_class + "(" + ",".join(f"{k}={format_value(v)}" for k, v in kwargs.items()) + ")"
