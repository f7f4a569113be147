"""Validation loss, as kohya computes it (train_network.py, validation_split / validate_every_n_*): the loss of
held-out images at fixed timesteps (kohya's 4: evenly spaced inside the timestep range) and fixed noise, so the
curve measures the LoRA and not the draw.

Held-out images come from a separate validation dataset, or from a share of each training folder's images
(kohya's `split_train_val`: shuffled with the validation seed, the last round(n x share) held out). The noise
comes from generators of its own (seeded by the validation seed and the sample), never from the training
step's: a run with a separate validation set trains the same LoRA as one without.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import torch

from .errors import ConfigError
from .latent_cache import CachedSample, LatentCache
from .text_contexts import CaptionContexts

VALIDATION_TIMESTEPS = 4          # kohya's NUM_VALIDATION_TIMESTEPS


@dataclass(frozen=True)
class ValidationSettings:
    split: float = 0.0            # kohya's validation_split: share of each training folder's images held out
    seed: int = -1                # kohya's validation_seed; -1: the training seed
    every_n_steps: int = 0        # kohya's validate_every_n_steps; 0: off
    every_n_epochs: int = 1       # kohya's validate_every_n_epochs (kohya: every epoch when there is a set)

    def validated(self) -> "ValidationSettings":
        if not 0.0 <= self.split < 1.0:
            raise ConfigError(f"validation_split is {self.split}; it is a share of the images, from 0 (none) up to "
                              "below 1 (kohya's examples use 0.1).")
        if self.every_n_steps < 0 or self.every_n_epochs < 0:
            raise ConfigError("validate_every_n_steps and validate_every_n_epochs must be 0 (off) or more.")
        return self

    def seed_for(self, training_seed: int) -> int:
        return training_seed if self.seed < 0 else self.seed


def split_validation(cache: LatentCache, share: float, seed: int) -> tuple[LatentCache, LatentCache | None]:
    """(training cache, validation cache) with `share` of each training folder's images held out as kohya
    splits them; regularization images always train. `share` 0 gives (cache, None)."""
    if not share:
        return cache, None
    held_out: set[int] = set()
    for subset in cache.dataset.subsets:
        if subset.is_reg:
            continue
        images = sorted((s for s in cache.samples if s.subset == subset.name), key=lambda s: s.image_path)
        random.Random(seed).shuffle(images)
        keep = len(images) - round(len(images) * share)
        if keep < 1 and images:
            raise ConfigError(f"validation_split {share} would hold out every image of {subset.name!r} "
                              f"({len(images)} image(s)); lower it or add images.")
        held_out.update(id(sample) for sample in images[keep:])
    if not held_out:
        raise ConfigError(f"validation_split {share} holds out no image (too few images per folder); raise it or "
                          "give a validation dataset instead.")

    def only(keep_held_out: bool) -> LatentCache:
        buckets = {size: [s for s in samples if (id(s) in held_out) == keep_held_out]
                   for size, samples in cache.buckets.items()}
        return replace(cache, buckets={size: samples for size, samples in buckets.items() if samples})

    return only(False), only(True)


def validation_timesteps(min_timestep: int, max_timestep: int) -> list[int]:
    """kohya: np.linspace(min, max, 4 + 2, dtype=int)[1:-1] (200, 400, 600, 800 for the full range)."""
    return [int(t) for t in np.linspace(min_timestep, max_timestep, VALIDATION_TIMESTEPS + 2, dtype=int)[1:-1]]


def validation_contexts(encoder, cache: LatentCache, device, seed: int, encoder_trains: bool) -> CaptionContexts:
    """The validation captions as the first epoch would draw them, from a caption stream of their own; encoded
    once now, or, when the text encoder trains, at every evaluation (with its LoRA as it is then)."""
    samples = [s for s in cache.samples if not s.is_reg]
    return CaptionContexts(encoder, samples, device, seed, encoder_trains=encoder_trains)


class Validator:
    """Evaluates a network's validation loss; the same images, timesteps and noise at every evaluation."""

    def __init__(self, cache: LatentCache, step, seed: int, timesteps: list[int],
                 captions: CaptionContexts | None = None):
        self.samples: list[CachedSample] = [s for s in cache.samples if not s.is_reg]
        self.step, self.seed, self.timesteps = step, seed, timesteps
        self.captions = captions or validation_contexts(step.captions.encoder, cache, step.device, seed, False)

    @property
    def count(self) -> int:
        return len(self.samples)

    def loss(self, network) -> float:
        step = self.step
        was_training = network.training
        network.eval()                  # no dropout, DyLoRA at full rank: the LoRA as it will be used
        total, count = 0.0, 0
        try:
            with torch.no_grad():
                for index, sample in enumerate(self.samples):
                    caption = self.captions.caption_for(sample, 0, index)
                    text = self.captions.batch([caption])
                    for timestep in self.timesteps:
                        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index * 1009 + timestep)
                        total += step.evaluate(sample, text, timestep, generator)
                        count += 1
        finally:
            network.train(was_training)
        return total / max(1, count)


def describe(settings: ValidationSettings, validator: Validator | None) -> str:
    if validator is None:
        return ""
    when = [f"every {settings.every_n_steps} step(s)"] if settings.every_n_steps else []
    if settings.every_n_epochs:
        when.append("every epoch" if settings.every_n_epochs == 1 else f"every {settings.every_n_epochs} epochs")
    return (f"validation: {validator.count} image(s) at timesteps {', '.join(map(str, validator.timesteps))}, "
            f"{' and '.join(when) or 'at the end'}")
