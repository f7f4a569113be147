"""Optimizer: optimizer type, learning rates, its arguments, and the LR schedule -> LORA_OPTIMIZER.

The combos come from the engine's tables (`trainer.optimizers.OPTIMIZERS`, `trainer.schedules.SCHEDULES`).
An argument at -1 (numbers) or `default` (switches) is not passed, so each type gets its own default, as
kohya passes no argument it was not given. The node shows what will run and every warning.
"""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..trainer.optimizers import OPTIMIZERS, OptimizerConfig, completed_betas
from ..trainer.schedules import SCHEDULES
from .wire_types import CATEGORY, LoraOptimizer

DEFAULT = -1.0                     # a number widget at this value: the optimizer's own default
SWITCH = ["default", "true", "false"]


def _types_taking(name: str) -> str:
    return ", ".join(t.name for t in OPTIMIZERS.values() if t.argument(name) is not None)


def _number(name: str, tooltip: str, maximum: float = 10.0, step: float = 0.001) -> io.Float.Input:
    return io.Float.Input(name, default=DEFAULT, min=DEFAULT, max=maximum, step=step, round=False, optional=True,
                          tooltip=f"{tooltip} -1: the optimizer's own default. Taken by: {_types_taking(name)}.")


def _switch(name: str, tooltip: str) -> io.Combo.Input:
    return io.Combo.Input(name, options=SWITCH, default="default", optional=True,
                          tooltip=f"{tooltip} default: the optimizer's own. Taken by: {_types_taking(name)}.")


def _optional(value, neutral=DEFAULT):
    return None if value is None or value == neutral else value


def _switch_value(value):
    return None if value in (None, "default") else value == "true"


def training_device_type() -> str | None:
    """Where ComfyUI trains (its torch device), for the warnings that depend on it; None if unknown."""
    try:
        import comfy.model_management

        return comfy.model_management.get_torch_device().type
    except Exception:  # a warning's detail only: never stop the node for it
        return None


class LoRAOptimizer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        types = "; ".join(f"{t.name}: {t.help}" for t in OPTIMIZERS.values())
        schedules = "; ".join(f"{s.name}: {s.help}" for s in SCHEDULES.values())
        return io.Schema(
            node_id="LoRAOptimizer",
            display_name="Optimizer",
            category=CATEGORY,
            description="Optimizer, learning rates and learning-rate schedule, with kohya's meanings and defaults. "
                        "The node shows the arguments that will run and any warning.",
            inputs=[
                io.Combo.Input("optimizer_type", options=list(OPTIMIZERS), default="AdamW8bit",
                               tooltip=f"kohya's optimizer_type (kohya_ss GUI default AdamW8bit). {types}."),
                io.Float.Input("learning_rate", default=1e-4, min=0.0, max=10.0, step=1e-6, round=False,
                               tooltip="The UNet's learning rate (kohya_ss default 1e-4; 0 leaves the UNet's LoRA as "
                                       "it is). DAdaptation and Prodigy: about 1.0."),
                io.Float.Input("weight_decay", default=DEFAULT, min=DEFAULT, max=10.0, step=0.001, round=False,
                               tooltip="-1: the optimizer's default (AdamW 0.01, Lion / Prodigy / SGD 0, "
                                       "DAdaptAdan 0.02)."),
                io.Float.Input("beta1", default=DEFAULT, min=DEFAULT, max=0.9999, step=0.001, round=False,
                               tooltip="-1: the optimizer's default (0.9)."),
                io.Float.Input("beta2", default=DEFAULT, min=DEFAULT, max=0.99999, step=0.0001, round=False,
                               tooltip="-1: the optimizer's default (Adam family 0.999, Lion 0.99)."),
                io.Combo.Input("lr_scheduler", options=list(SCHEDULES), default="cosine",
                               tooltip=f"kohya_ss GUI default cosine. {schedules}."),
                io.Float.Input("lr_warmup", default=0.1, min=0.0, max=0.99, step=0.01,
                               tooltip="Warmup as a share of all steps (0.1 = first 10%, the kohya_ss default). Set "
                                       "0 to give it in steps with lr_warmup_steps."),
                io.Float.Input("max_grad_norm", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Gradient clipping (kohya default 1.0; 0 turns it off)."),
                io.Float.Input("text_encoder_lr", default=1e-4, min=0.0, max=10.0, step=1e-6, round=False,
                               optional=True,
                               tooltip="Learning rate of the text encoder's LoRA, when Configure LoRA trains it "
                                       "(kohya_ss default 1e-4; 0 leaves it as it is)."),
                io.Float.Input("loraplus_lr_ratio", default=0.0, min=0.0, max=1000.0, step=1.0, optional=True,
                               tooltip="LoRA+: the up matrices learn at lr x this ratio (kohya's loraplus_lr_ratio; "
                                       "the paper suggests 16). 0 turns it off."),
                _number("eps", "The denominator's small term.", maximum=1.0, step=1e-9),
                _number("d_coef", "Prodigy: scales its estimated step (below 1: smaller steps).", maximum=100.0,
                        step=0.01),
                _switch("decouple", "AdamW-style decoupled weight decay."),
                _switch("use_bias_correction", "Adam's bias correction."),
                _switch("safeguard_warmup", "Prodigy: keeps d from growing too fast during warmup."),
                _switch("relative_step", "Adafactor finds its own lr (kohya's default: true; runs the adafactor "
                                         "schedule)."),
                io.String.Input("extra_args", default="", multiline=True, optional=True,
                                tooltip="Any other argument of the chosen optimizer, as kohya's optimizer_args: "
                                        "key=value separated by spaces, e.g. 'd0=1e-6 growth_rate=1.02' or "
                                        "'betas=0.9,0.99'. An unknown key is an error naming the valid ones."),
                io.Int.Input("lr_warmup_steps", default=0, min=0, max=1_000_000, optional=True,
                             tooltip="Warmup as a number of steps (kohya's integer lr_warmup_steps); lr_warmup must "
                                     "be 0 then."),
                io.Int.Input("lr_scheduler_num_cycles", default=1, min=1, max=1000, optional=True,
                             tooltip="cosine_with_restarts: how many cosines (hard restarts); kohya default 1."),
                io.Float.Input("lr_scheduler_power", default=1.0, min=0.01, max=100.0, step=0.1, optional=True,
                               tooltip="polynomial: the power of the decay (1 = linear); kohya default 1."),
            ],
            outputs=[LoraOptimizer.Output(display_name="optimizer")],
        )

    @classmethod
    def validate_inputs(cls, **values):
        if any(value is None for value in values.values()):
            return True                           # a linked input: its value is known only at run time
        try:
            cls.config(**values)
        except Exception as exc:  # shown to the user before the run starts
            return str(exc)
        return True

    @staticmethod
    def config(optimizer_type, learning_rate, weight_decay, beta1, beta2, lr_scheduler, lr_warmup, max_grad_norm,
               text_encoder_lr=1e-4, loraplus_lr_ratio=0.0, eps=DEFAULT, d_coef=DEFAULT, decouple="default",
               use_bias_correction="default", safeguard_warmup="default", relative_step="default", extra_args="",
               lr_warmup_steps=0, lr_scheduler_num_cycles=1, lr_scheduler_power=1.0) -> OptimizerConfig:
        betas = completed_betas(optimizer_type, _optional(beta1), _optional(beta2))
        return OptimizerConfig(
            optimizer_type=optimizer_type, learning_rate=learning_rate, text_encoder_lr=text_encoder_lr,
            loraplus_lr_ratio=loraplus_lr_ratio, weight_decay=_optional(weight_decay), betas=betas,
            eps=_optional(eps), d_coef=_optional(d_coef), decouple=_switch_value(decouple),
            use_bias_correction=_switch_value(use_bias_correction), safeguard_warmup=_switch_value(safeguard_warmup),
            relative_step=_switch_value(relative_step), extra_args=extra_args or "", scheduler=lr_scheduler,
            warmup_ratio=lr_warmup, warmup_step_count=lr_warmup_steps, num_cycles=lr_scheduler_num_cycles,
            power=lr_scheduler_power, max_grad_norm=max_grad_norm).validated()

    @classmethod
    def execute(cls, **values) -> io.NodeOutput:
        config = cls.config(**values)
        device_type = training_device_type()
        for warning in config.warnings(device_type):     # allowed, as kohya allows it, but said where it is seen
            logging.warning("lora-trainer Optimizer: %s", warning)
        return io.NodeOutput(config, ui=ui.PreviewText(config.describe(device_type=device_type)))
