"""The Optimizer node in real ComfyUI: its combos come from the engine's tables, bad input is reported before the
run, and warnings (adaptive lr, one lr for all groups, paged on CPU, bitsandbytes fallback) show on the node."""

from __future__ import annotations

import pytest

DEFAULTS = dict(optimizer_type="AdamW8bit", learning_rate=1e-4, weight_decay=-1.0, beta1=-1.0, beta2=-1.0,
                lr_scheduler="cosine", lr_warmup=0.1, max_grad_norm=1.0)


@pytest.fixture
def node(pack):
    from comfyui_lora_trainer.nodes.optimizer import LoRAOptimizer

    return LoRAOptimizer


def shown(output) -> str:
    return "\n".join(output.ui.as_dict()["text"])


def test_combos_are_the_engine_tables(node):
    from comfyui_lora_trainer.trainer.optimizers import OPTIMIZERS
    from comfyui_lora_trainer.trainer.schedules import SCHEDULES

    inputs = {i.id: i for i in node.define_schema().inputs}
    assert inputs["optimizer_type"].options == list(OPTIMIZERS) and inputs["optimizer_type"].default == "AdamW8bit"
    assert inputs["lr_scheduler"].options == list(SCHEDULES)


def test_defaults_give_kohyas_adamw8bit_with_paged_and_adaptive_warnings_shown(node):
    output = node.execute(**DEFAULTS)
    config = output.result[0]
    assert config.optimizer_string() == "bitsandbytes.optim.adamw.AdamW8bit" and "AdamW8bit lr 0.0001" in shown(output)
    paged = shown(node.execute(**{**DEFAULTS, "optimizer_type": "PagedAdamW8bit"}))
    assert "warning: bitsandbytes: Paged optimizers are not supported on CPU" in paged       # ComfyUI runs on CPU here
    prodigy = shown(node.execute(**{**DEFAULTS, "optimizer_type": "Prodigy", "text_encoder_lr": 5e-5, "d_coef": 0.5,
                                    "safeguard_warmup": "true"}))
    assert "set the learning rate around 1.0" in prodigy and "only the first group's lr counts" in prodigy
    assert "d_coef 0.5" in prodigy and "safeguard_warmup True" in prodigy


def test_bitsandbytes_missing_falls_back_with_the_warning_on_the_node(node, monkeypatch):
    from comfyui_lora_trainer.trainer.optimizers import packages

    real = packages.import_module
    monkeypatch.setattr(packages, "import_module",
                        lambda name: (_ for _ in ()).throw(ImportError(name)) if name == "bitsandbytes" else real(name))
    output = node.execute(**DEFAULTS)
    assert output.result[0].optimizer_type == "AdamW" and output.result[0].fallback_from == "AdamW8bit"
    assert "warning: AdamW8bit needs bitsandbytes: bitsandbytes is not installed. Training runs AdamW" in shown(output)


@pytest.mark.parametrize("values, message", [
    ({"extra_args": "d_coef=2"}, "AdamW8bit has no argument 'd_coef'. Valid ones: betas, eps, weight_decay, "
                                 "min_8bit_size"),
    ({"extra_args": "betas=0.9"}, "betas=0.9 is not two numbers"),
    ({"lr_warmup_steps": 10}, "Warmup is given twice"),
    ({"lr_scheduler": "adafactor"}, "The adafactor schedule is Adafactor's relative step"),
])
def test_bad_input_is_reported_before_the_run(node, values, message):
    assert message in node.validate_inputs(**{**DEFAULTS, **values})
    assert node.validate_inputs(**DEFAULTS) is True
