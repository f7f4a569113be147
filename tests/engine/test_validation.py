"""Validation loss as kohya takes it: held-out images, kohya's fixed timesteps, fixed noise, and nothing of
the training stream touched."""

from __future__ import annotations

import pytest
import torch

from tests.engine.test_train_loop import fresh_model
from tests.helpers import make_kohya_folder
from trainer.dataset import load_dataset_folder
from trainer.dataset.buckets import BucketSettings
from trainer.errors import ConfigError
from trainer.latent_cache import cache_latents
from trainer.loop import train_lora
from trainer.networks import NetworkConfig
from trainer.optim import OptimizerConfig
from trainer.plan import TrainSettings
from trainer.validation import ValidationSettings, split_validation, validation_timesteps


def cache_of(tmp_path, encoder, name: str, count: int, reg: int = 0):
    root = make_kohya_folder(str(tmp_path / name), {"2_sks dog": [(64, 64)] * count},
                             {f"2_sks dog/{i}": f"sks dog photo {i}" for i in range(count)})
    reg_folder = make_kohya_folder(str(tmp_path / f"{name}_reg"), {"1_dog": [(64, 64)] * reg}) if reg else ""
    return cache_latents(load_dataset_folder(root, regularization_folder=reg_folder), encoder,
                         BucketSettings((64, 64), 64, 128, 64))


def test_kohyas_timesteps_and_split():
    assert validation_timesteps(0, 1000) == [200, 400, 600, 800]
    assert validation_timesteps(100, 600) == [200, 300, 400, 500]


def test_the_split_holds_out_kohyas_share_of_each_folder_and_never_regularization(tmp_path, tiny_vae_encoder):
    cache = cache_of(tmp_path, tiny_vae_encoder, "data", 10, reg=3)
    train, held_out = split_validation(cache, 0.2, seed=5)
    assert len(held_out.samples) == 2 and not any(s.is_reg for s in held_out.samples)
    assert len(train.samples) == len(cache.samples) - 2
    assert {s.image_path for s in train.samples}.isdisjoint(s.image_path for s in held_out.samples)
    again = split_validation(cache, 0.2, seed=5)[1]
    assert [s.image_path for s in again.samples] == [s.image_path for s in held_out.samples]     # seeded
    with pytest.raises(ConfigError, match="holds out no image"):
        split_validation(cache_of(tmp_path, tiny_vae_encoder, "one", 1), 0.2, seed=5)


def test_a_separate_validation_set_leaves_the_run_as_it_was_and_its_loss_is_fixed(tmp_path, tiny_vae_encoder):
    cache = cache_of(tmp_path, tiny_vae_encoder, "data", 3)
    held_out = cache_of(tmp_path, tiny_vae_encoder, "val", 2)
    network, optimizer = NetworkConfig(rank=2, network_dropout=0.1), OptimizerConfig(learning_rate=1e-3)
    settings = TrainSettings(epochs=2, batch_size=2, seed=3,
                             validation=ValidationSettings(every_n_steps=2, every_n_epochs=1))
    plain = train_lora(fresh_model(), cache, network, optimizer, settings)
    validated = train_lora(fresh_model(), cache, network, optimizer, settings, validation_cache=held_out)
    assert validated.progress.losses == plain.progress.losses
    assert all(torch.equal(validated.tensors[k], plain.tensors[k]) for k in plain.tensors)
    steps = [step for step, _ in validated.progress.validation_losses]
    assert steps == [2, 3, 4, 6] and plain.progress.validation_losses == []       # every 2 steps and each epoch
    again = train_lora(fresh_model(), cache, network, optimizer, settings, validation_cache=held_out)
    assert again.progress.validation_losses == validated.progress.validation_losses   # same LoRA, same loss


def test_with_a_split_the_lora_is_the_one_trained_on_the_remaining_images(tmp_path, tiny_vae_encoder):
    cache = cache_of(tmp_path, tiny_vae_encoder, "data", 5)
    network, optimizer = NetworkConfig(rank=2), OptimizerConfig(learning_rate=1e-3)
    split = ValidationSettings(split=0.4, seed=11)
    validated = train_lora(fresh_model(), cache, network, optimizer,
                           TrainSettings(epochs=2, batch_size=1, seed=2, validation=split))
    remaining, held_out = split_validation(cache, 0.4, seed=11)
    plain = train_lora(fresh_model(), remaining, network, optimizer, TrainSettings(epochs=2, batch_size=1, seed=2))
    assert all(torch.equal(validated.tensors[k], plain.tensors[k]) for k in plain.tensors)
    assert len(validated.progress.validation_losses) == 2 and len(held_out.samples) == 2
    with pytest.raises(ConfigError, match="use one of them"):
        train_lora(fresh_model(), cache, network, optimizer, TrainSettings(validation=split), validation_cache=cache)


def test_with_learning_rate_0_the_validation_loss_stays_and_with_training_it_moves(tmp_path, tiny_vae_encoder):
    cache = cache_of(tmp_path, tiny_vae_encoder, "data", 3)
    held_out = cache_of(tmp_path, tiny_vae_encoder, "val", 2)
    settings = TrainSettings(epochs=3, batch_size=2, seed=3, validation=ValidationSettings(every_n_epochs=1))
    frozen = train_lora(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(optimizer_type="AdamW",
                        learning_rate=0.0), settings, validation_cache=held_out)
    values = [value for _, value in frozen.progress.validation_losses]
    assert len(values) == 3 and len(set(values)) == 1
    trained = train_lora(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(optimizer_type="AdamW",
                         learning_rate=1e-2), settings, validation_cache=held_out)
    moved = [value for _, value in trained.progress.validation_losses]
    assert moved[0] != moved[-1] and moved[0] != values[0]


def test_the_validation_loss_sees_the_text_encoders_lora_when_it_trains(tmp_path, tiny_vae_encoder):
    from tests.engine.conftest import tiny_unet
    from tests.engine.test_network_variants import TinyClipCaptions
    from trainer.diffusers_adapter import FunctionCaptionEncoder, diffusers_sd1_trainable

    cache = cache_of(tmp_path, tiny_vae_encoder, "data", 3)
    held_out = cache_of(tmp_path, tiny_vae_encoder, "val", 2)
    clip = TinyClipCaptions()
    model = diffusers_sd1_trainable(tiny_unet(), FunctionCaptionEncoder(clip), text_encoder=clip.model)
    result = train_lora(model, cache, NetworkConfig(rank=2, train_on="text_encoder"),
                        OptimizerConfig(optimizer_type="AdamW", learning_rate=1e-2, text_encoder_lr=1e-2),
                        TrainSettings(epochs=3, batch_size=2, seed=3), validation_cache=held_out)
    values = [value for _, value in result.progress.validation_losses]
    assert len(values) == 3 and len(set(values)) == 3, "text-encoder-only training left the validation loss flat"
