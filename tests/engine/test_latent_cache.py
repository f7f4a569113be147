"""Caching a real-world folder: what cannot be decoded is skipped by name before training, the rest trains."""

import os

from tests.helpers import make_messy_folder
from trainer.dataset import load_dataset_folder
from trainer.dataset.buckets import BucketSettings
from trainer.latent_cache import cache_latents, tag_frequency


def test_an_image_corrupt_past_its_header_is_skipped_while_caching(tmp_path, tiny_vae_encoder):
    expected = make_messy_folder(str(tmp_path / "messy"))
    dataset = load_dataset_folder(str(tmp_path / "messy"))
    seen = []
    cache = cache_latents(dataset, tiny_vae_encoder, BucketSettings((64, 64), 64, 128), vae_batch_size=4,
                          progress=lambda done, total: seen.append((done, total)))
    cached = sorted(os.path.basename(s.image_path) for s in cache.samples)
    assert cached == sorted(set(expected["good"]) - set(expected["skipped_at_cache"]))
    assert [os.path.basename(item.path) for item in cache.skipped] == ["truncated.png"]
    assert "truncated or corrupt" in cache.skipped[0].reason and "truncated.png" in cache.describe()
    assert seen[-1] == (len(expected["good"]), len(expected["good"]))
    assert cache.num_train_images == 11 * 4 + 1 * 2            # what trains, not what was scanned
    assert sum(tag_frequency(cache)["4_sks dog"].values()) == 10     # the empty caption has no tag
