"""Optimizer: optimizer type, learning rate, its arguments, and the LR schedule -> LORA_OPTIMIZER."""

from __future__ import annotations

from comfy_api.latest import io

from ..trainer.optim import OPTIMIZER_TYPES, SCHEDULERS, OptimizerConfig
from .wire_types import CATEGORY, LoraOptimizer


class LoRAOptimizer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoRAOptimizer",
            display_name="Optimizer",
            category=CATEGORY,
            description="Optimizer and learning-rate schedule, with kohya's meanings.",
            inputs=[
                io.Combo.Input("optimizer_type", options=list(OPTIMIZER_TYPES), default="AdamW"),
                io.Float.Input("learning_rate", default=1e-4, min=0.0, max=10.0, step=1e-6, round=False,
                               tooltip="kohya_ss default 1e-4."),
                io.Float.Input("weight_decay", default=0.01, min=0.0, max=10.0, step=0.001, round=False),
                io.Float.Input("beta1", default=0.9, min=0.0, max=0.9999, step=0.001, round=False),
                io.Float.Input("beta2", default=0.999, min=0.0, max=0.99999, step=0.0001, round=False),
                io.Combo.Input("lr_scheduler", options=list(SCHEDULERS), default="cosine"),
                io.Float.Input("lr_warmup", default=0.1, min=0.0, max=0.99, step=0.01,
                               tooltip="Warmup as a share of all steps (0.1 = first 10%)."),
                io.Float.Input("max_grad_norm", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Gradient clipping (kohya default 1.0; 0 turns it off)."),
                io.Float.Input("text_encoder_lr", default=1e-4, min=0.0, max=10.0, step=1e-6, round=False,
                               optional=True,
                               tooltip="Learning rate of the text encoder's LoRA, when Configure LoRA trains it "
                                       "(kohya_ss default 1e-4; 0 leaves it as it is)."),
                io.Float.Input("loraplus_lr_ratio", default=0.0, min=0.0, max=1000.0, step=1.0, optional=True,
                               tooltip="LoRA+: the up matrices learn at lr x this ratio (kohya's loraplus_lr_ratio; "
                                       "the paper suggests 16). 0 turns it off."),
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
    def config(optimizer_type, learning_rate, weight_decay, beta1, beta2, lr_scheduler, lr_warmup,
               max_grad_norm, text_encoder_lr=1e-4, loraplus_lr_ratio=0.0) -> OptimizerConfig:
        return OptimizerConfig(optimizer_type=optimizer_type, learning_rate=learning_rate,
                               text_encoder_lr=text_encoder_lr, loraplus_lr_ratio=loraplus_lr_ratio,
                               weight_decay=weight_decay, betas=(beta1, beta2), scheduler=lr_scheduler,
                               warmup_ratio=lr_warmup, max_grad_norm=max_grad_norm).validated()

    @classmethod
    def execute(cls, **values) -> io.NodeOutput:
        return io.NodeOutput(cls.config(**values))
