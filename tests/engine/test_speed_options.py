"""Speed options of a run: torch_compile trains the same LoRA as the eager model (so the LoRA is inside the
graph) and leaves the model uncompiled; channels_last trains the same LoRA and gives the model its weights back."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.engine.test_train_loop import fresh_model, small_cache
from trainer.errors import ConfigError
from trainer.loop import train_lora
from trainer.networks import NetworkConfig
from trainer.optim import OptimizerConfig
from trainer.plan import TrainSettings

OPTIMIZER = OptimizerConfig(learning_rate=1e-2, scheduler="constant", warmup_ratio=0.0)
SETTINGS = TrainSettings(epochs=1, batch_size=2, seed=4)


def trained(cache, settings, network=NetworkConfig(rank=4, alpha=4)):
    model = fresh_model()
    unet = model.denoiser.unet
    result = train_lora(model, cache, network, OPTIMIZER, settings)
    assert model.denoiser.unet is unet                 # the run's compiled callable is gone
    return result


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_a_compiled_model_trains_the_lora_the_eager_model_trains(tmp_path, tiny_vae_encoder, checkpointing):
    # aot_eager traces the graph and its backward as inductor does, without a C++ compiler: what is checked here
    # is that the LoRA hooks are in the graph and get their gradients, not inductor's kernels
    cache = small_cache(tmp_path, tiny_vae_encoder)
    settings = dataclasses.replace(SETTINGS, gradient_checkpointing=checkpointing)
    eager = trained(cache, settings)
    compiled = trained(cache, dataclasses.replace(settings, torch_compile=True, dynamo_backend="aot_eager"))
    before = trained(cache, dataclasses.replace(settings, epochs=0, max_steps=1))   # one step: the LoRA moved
    assert any(not torch.equal(eager.tensors[k], before.tensors[k]) for k in eager.tensors if "lora_up" in k)
    for key, value in eager.tensors.items():
        torch.testing.assert_close(compiled.tensors[key], value, atol=1e-5, rtol=1e-4, msg=key)
    assert compiled.progress.losses == pytest.approx(eager.progress.losses, rel=1e-4)


def test_an_unknown_backend_is_refused_with_the_choices(tmp_path, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    with pytest.raises(ConfigError, match="backend 'nope'.*inductor.*torch_compile off"):
        trained(cache, dataclasses.replace(SETTINGS, torch_compile=True, dynamo_backend="nope"))


@pytest.mark.slow
def test_inductor_compiles_the_model_with_the_lora_on_this_machine(tmp_path, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    eager = trained(cache, SETTINGS)
    compiled = trained(cache, dataclasses.replace(SETTINGS, torch_compile=True))
    for key, value in eager.tensors.items():
        torch.testing.assert_close(compiled.tensors[key], value, atol=1e-4, rtol=1e-3, msg=key)


def test_channels_last_trains_the_same_lora_and_gives_the_weights_back(tmp_path, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    eager = trained(cache, SETTINGS)
    model = fresh_model()
    weights = {name: (p.data_ptr(), p.detach().clone()) for name, p in model.frozen_root.named_parameters()}
    seen = []
    model.denoiser.unet.conv_in.register_forward_pre_hook(
        lambda module, args: seen.append((module.weight.is_contiguous(memory_format=torch.channels_last),
                                          args[0].is_contiguous(memory_format=torch.channels_last))))
    nhwc = train_lora(model, cache, NetworkConfig(rank=4, alpha=4), OPTIMIZER,
                      dataclasses.replace(SETTINGS, channels_last=True))
    assert seen and all(weight and latents for weight, latents in seen)
    for name, p in model.frozen_root.named_parameters():
        assert p.data_ptr() == weights[name][0] and p.is_contiguous() and torch.equal(p, weights[name][1]), name
    for key, value in eager.tensors.items():
        torch.testing.assert_close(nhwc.tensors[key], value, atol=1e-4, rtol=1e-3, msg=key)   # conv rounding
