"""The plan before step one (trainer/preflight.py, trainer/warmup.py): steps and saves equal what the run does, the
estimate comes from measured warm-up passes that leave the run as it was, a run that cannot fit stops before
training with what to change, plan-only stops after the plan, and every warning is in one list."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from tests.engine.test_train_loop import fresh_model, small_cache
from tests.helpers import make_kohya_folder
from trainer.dataset import load_dataset_folder
from trainer.dataset.buckets import BucketSettings
from trainer.errors import ConfigError
from trainer.latent_cache import cache_latents
from trainer.loop import train_lora
from trainer.networks import NetworkConfig
from trainer.optim import OptimizerConfig
from trainer.plan import TrainSettings, plan_run
from trainer.preflight import save_points
from trainer.session import RunFolders, run_session


def folders_in(tmp_path) -> RunFolders:
    folders = RunFolders(str(tmp_path / "loras"), str(tmp_path / "runs"))
    os.makedirs(folders.loras)
    return folders


def written(tmp_path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(folder, name), tmp_path)
                  for root in ("loras", "runs") for folder, _, names in os.walk(tmp_path / root) for name in names)


def ticking_clock(seconds_per_call: float):
    """A clock that advances by the same amount at every reading: each timed pass takes `seconds_per_call`."""
    ticks = itertools.count()
    return lambda: next(ticks) * seconds_per_call


def mixed_cache(tmp_path, encoder):
    """Repeats, a regularization folder and two buckets: 3 x 3 train samples at 128x128 (square images), 1 x 3
    at 128x64, 4 regularization images balanced against them."""
    root = make_kohya_folder(str(tmp_path / "data"), {"3_sks dog": [(64, 64)] * 3 + [(128, 64)]})
    reg = make_kohya_folder(str(tmp_path / "reg"), {"1_dog": [(64, 64)] * 4})
    return cache_latents(load_dataset_folder(root, regularization_folder=reg), encoder,
                         BucketSettings((128, 128), 64, 128, 64))


def test_the_plans_steps_and_saves_are_what_the_run_then_does(tmp_path, tiny_vae_encoder):
    cache = mixed_cache(tmp_path, tiny_vae_encoder)
    assert len(cache.buckets) == 2
    folders = folders_in(tmp_path)
    settings = TrainSettings(output_name="planned", epochs=3, batch_size=2, gradient_accumulation_steps=2,
                             save_every_n_epochs=1, save_every_n_steps=4)
    plan = plan_run(cache, settings)
    points = save_points(plan, settings, "planned")
    session = run_session(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(), settings, folders,
                          clock=ticking_clock(0.5))
    assert session.result.progress.step == plan.total_steps
    assert f"= {plan.total_steps} step(s)" in session.summary
    saved = sorted(name for name in os.listdir(folders.loras))
    assert saved == sorted(point.file_name for point in points)
    assert f"intermediate saves ({len(points)}," in session.summary
    assert all(point.file_name in session.summary for point in points[:3])
    assert "ceil(" in session.summary and f"-> {plan.batches_per_epoch}" in session.summary


@pytest.mark.parametrize("settings", [TrainSettings(epochs=0, max_steps=7, batch_size=2, save_every_n_epochs=1,
                                                    save_every_n_steps=2),
                                      TrainSettings(epochs=3, batch_size=1, save_every_n_epochs=2,
                                                    save_every_n_steps=3)],
                         ids=["max_steps_cuts_the_last_epoch", "step_saves_at_epoch_ends"])
def test_save_points_are_the_loops_own(tmp_path, tiny_vae_encoder, settings):
    from trainer.loop import TrainCallbacks

    cache = small_cache(tmp_path, tiny_vae_encoder)
    saves = []
    train_lora(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(), settings,
               TrainCallbacks(on_checkpoint=lambda progress, state, kind: saves.append((progress.step, kind))))
    assert saves and [(p.step, p.kind) for p in save_points(plan_run(cache, settings), settings, "x")] == saves


@pytest.mark.parametrize("network, checkpointing", [(NetworkConfig(rank=4, alpha=2, network_dropout=0.1), False),
                                                    (NetworkConfig("DyLoRA", rank=4, alpha=2, dylora_unit=2), True)],
                         ids=["dropout", "dylora_checkpointed"])
def test_the_estimate_is_the_warm_up_passes_time_and_they_leave_the_run_as_it_was(tmp_path, tiny_vae_encoder,
                                                                                  network, checkpointing):
    """Dropout coins and DyLoRA's rank draws come from the step's stream, which the warm-up puts back."""
    cache = small_cache(tmp_path, tiny_vae_encoder)
    args = (network, OptimizerConfig(learning_rate=2e-3))
    settings = TrainSettings(output_name="timed", epochs=2, batch_size=2, seed=5, gradient_accumulation_steps=2,
                             gradient_checkpointing=checkpointing)
    plain = train_lora(fresh_model(), cache, *args, settings)          # no plan, no warm-up passes
    session = run_session(fresh_model(), cache, *args, settings, folders_in(tmp_path), clock=ticking_clock(0.25))
    assert all(torch.equal(session.result.tensors[k], plain.tensors[k]) for k in plain.tensors)
    assert session.result.progress.losses == plain.progress.losses
    steps = plan_run(cache, settings).total_steps
    # each pass reads the clock twice, 0.25 s apart; a step is 2 accumulated batches
    width, height = max(cache.buckets, key=lambda side: side[0] * side[1])
    assert f"estimate: 0.5 s/step at the largest bucket {width}x{height}, batch 2" in session.summary
    assert f"at most {0.5 * steps:.0f} s for {steps} step(s)" in session.summary
    assert "memory: peak" in session.summary and "computed: weights" in session.summary


def test_a_run_that_cannot_fit_stops_before_training_naming_what_to_change(tmp_path, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    settings = TrainSettings(output_name="too_big", epochs=1, batch_size=2)
    with pytest.raises(ConfigError) as error:
        run_session(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(), settings, folders_in(tmp_path),
                    memory_budget=lambda device, resident: 2 ** 20)
    message = str(error.value)
    assert "will not fit" in message and "MiB available on cpu" in message
    assert "batch_size 2 -> 1" in message and "gradient_checkpointing on" in message and "AdamW8bit" in message
    assert written(tmp_path) == []


def test_plan_only_stops_after_the_plan_and_writes_nothing(tmp_path, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    settings = TrainSettings(output_name="looked", epochs=2, batch_size=2, save_every_n_epochs=1, plan_only=True)
    model = fresh_model()
    before = {k: v.clone() for k, v in model.frozen_root.state_dict().items()}
    session = run_session(model, cache, NetworkConfig(rank=2), OptimizerConfig(), settings, folders_in(tmp_path))
    assert session.planned_only and session.result is None and session.lora is None
    assert "plan only: nothing was trained or written" in session.summary
    assert "looked-000001.safetensors" in session.summary and "estimate:" in session.summary
    assert written(tmp_path) == []
    assert all(torch.equal(before[k], v) for k, v in model.frozen_root.state_dict().items())


def test_every_warning_is_listed_once_before_step_one(tmp_path, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)        # two of its three images have no caption file
    settings = TrainSettings(output_name="warned", epochs=1, batch_size=2, plan_only=True)
    session = run_session(fresh_model(), cache, NetworkConfig(rank=2, alpha=8),
                          OptimizerConfig(optimizer_type="Prodigy", learning_rate=1e-4, text_encoder_lr=5e-5),
                          settings, folders_in(tmp_path))
    listed = session.summary.split("warning(s) before step one:")[1]
    assert "alpha 8 is greater than rank 2" in listed
    assert "text_encoder_lr is 5e-05, but the LoRA trains the UNet only" in listed
    assert "Prodigy" in listed                                           # the adaptive optimizer's small lr
    assert "2 image(s) in 2_sks dog have no .txt caption file" in listed


def test_options_the_run_ignores_are_named(tmp_path, tiny_vae_encoder):
    """Flow-matching options on an SD model, keep_tokens with nothing that moves tags."""
    from dataclasses import replace

    from trainer.flow_objective import FlowSettings

    cache = small_cache(tmp_path, tiny_vae_encoder)
    for samples in cache.buckets.values():
        for index, sample in enumerate(samples):
            samples[index] = replace(sample, caption_options=replace(sample.caption_options, keep_tokens=1))
    subsets = tuple(replace(s, caption_options=replace(s.caption_options, keep_tokens=1))
                    for s in cache.dataset.subsets)
    cache.dataset = replace(cache.dataset, subsets=subsets)
    settings = TrainSettings(output_name="ignored", epochs=1, batch_size=2, plan_only=True,
                             flow=FlowSettings(timestep_sampling="sigmoid"))
    session = run_session(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(), settings,
                          folders_in(tmp_path))
    listed = session.summary.split("warning(s) before step one:")[1]
    assert "keep_tokens 1 in 2_sks dog does nothing" in listed
    assert "is not a flow-matching model: they are ignored" in listed


def test_latents_a_vae_overflowed_in_are_named_before_step_one(tmp_path, tiny_vae_encoder):
    """SDXL's VAE in fp16 overflows to NaN latents: the plan says so and what to re-cache with."""
    cache = small_cache(tmp_path, tiny_vae_encoder)
    cache.samples[0].latent[0, 0, 0] = float("nan")
    settings = TrainSettings(output_name="nan", epochs=1, batch_size=2, plan_only=True)
    session = run_session(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(), settings,
                          folders_in(tmp_path))
    assert "1 cached latent(s) hold NaN or infinite values" in session.summary and "--fp32-vae" in session.summary
