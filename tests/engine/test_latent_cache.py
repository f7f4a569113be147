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


def test_regularization_images_are_balanced_weighted_and_recorded(tmp_path, tiny_vae_encoder, tiny_trainable):
    from tests.helpers import make_kohya_folder
    from trainer.loop import train_lora
    from trainer.networks import NetworkConfig
    from trainer.optim import OptimizerConfig
    from trainer.plan import TrainSettings, plan_run

    root = make_kohya_folder(str(tmp_path / "train"), {"3_sks dog": [(64, 64)] * 2})
    reg = make_kohya_folder(str(tmp_path / "reg"), {"1_dog": [(64, 64)] * 8})
    encoded = []

    class CountingEncoder:
        def encode(self, pixels):
            encoded.append(pixels.shape[0])
            return tiny_vae_encoder.encode(pixels)

    cache = cache_latents(load_dataset_folder(root, ".txt", reg), CountingEncoder(), BucketSettings((64, 64), 64, 64))
    assert sum(encoded) == 2 + 6                                  # the 2 unused reg images are never encoded
    reg_samples = [s for s in cache.samples if s.is_reg]
    assert len(reg_samples) == 6 and all(s.repeats == 1 for s in reg_samples)    # 6 of 8 reach the 6 train samples
    assert cache.num_train_images == 6 and cache.num_reg_images == 6
    settings = TrainSettings(epochs=1, batch_size=1, prior_loss_weight=0.0)
    assert plan_run(cache, settings).total_steps == 12                          # an epoch is twice as long
    # with prior_loss_weight 0 the reg steps add nothing: the loss recorded for them is 0
    result = train_lora(tiny_trainable, cache, NetworkConfig(rank=2), OptimizerConfig(), settings)
    assert sum(1 for loss in result.progress.losses if loss == 0.0) == 6


def test_flip_augmentation_caches_the_mirror_and_trains_on_both(tmp_path, tiny_vae_encoder, tiny_trainable):
    import torch

    from tests.helpers import make_kohya_folder
    from trainer.dataset.images import open_rgb, to_pixels
    from trainer.loop import TrainStep

    root = make_kohya_folder(str(tmp_path / "set"), {"4_x": [(64, 64), (64, 64)]})
    dataset = load_dataset_folder(root, flip_aug=True)
    cache = cache_latents(dataset, tiny_vae_encoder, BucketSettings((64, 64), 64, 64))
    sample = cache.samples[0]
    mirrored = tiny_vae_encoder.encode(to_pixels([open_rgb(sample.image_path)]).flip(2))[0]
    assert torch.allclose(sample.latent_flipped, mirrored, atol=1e-5)
    assert not torch.allclose(sample.latent_flipped, sample.latent)
    stepper = TrainStep.__new__(TrainStep)
    stepper.generator = torch.Generator().manual_seed(0)
    picked = [stepper.batch_latents(cache.samples)[0][0] is sample.latent_flipped for _ in range(40)]
    assert 5 < sum(picked) < 35                                  # a fair coin per sample and step
    plain = cache_latents(load_dataset_folder(root), tiny_vae_encoder, BucketSettings((64, 64), 64, 64))
    assert all(s.latent_flipped is None for s in plain.samples) and not plain.flip_aug
    # a subset option, as in kohya: a mirrored style folder beside an unmirrored character folder
    other = make_kohya_folder(str(tmp_path / "other"), {"2_y": [(64, 64)]})
    mixed = cache_latents(load_dataset_folder(other).combined_with(dataset), tiny_vae_encoder,
                          BucketSettings((64, 64), 64, 64), vae_batch_size=3)
    assert {s.subset: s.latent_flipped is not None for s in mixed.samples} == {"2_y": False, "4_x": True}


def disk_cache(dataset, encoder, **options):
    return cache_latents(dataset, encoder, BucketSettings((64, 64), 64, 128), cache_mode="disk", **options)


def test_disk_cache_encodes_once_then_only_what_changed(tmp_path, tiny_vae_encoder):
    import numpy as np
    import torch

    from tests.helpers import make_kohya_folder, write_image

    root = make_kohya_folder(str(tmp_path / "set"), {"2_x": [(64, 64), (64, 128), (64, 64)]})
    calls = []

    class CountingEncoder:
        def encode(self, pixels):
            calls.append(pixels.shape[0])
            return tiny_vae_encoder.encode(pixels)

        def identity(self):
            return tiny_vae_encoder.identity()

    encoder = CountingEncoder()
    first = disk_cache(load_dataset_folder(root), encoder)
    assert sum(calls) == 3 and first.disk_counts == (0, 3)
    npz = tmp_path / "set" / "2_x" / "1_0064x0128_sd.npz"                   # kohya's name: original size
    with np.load(npz) as stored:                                            # kohya's keys and shapes
        assert stored["latents"].shape == (4, 8, 8) and stored["latents"].dtype == np.float32
        assert list(stored["original_size"]) == [64, 128] and list(stored["crop_ltrb"]) == [16, 0, 48, 64]
    calls.clear()
    second = disk_cache(load_dataset_folder(root), encoder)
    assert calls == [] and second.disk_counts == (3, 0) and "3 read from .npz files" in second.describe()
    for a, b in zip(first.samples, second.samples):
        assert torch.equal(a.latent, b.latent) and a.image_path == b.image_path

    write_image(str(tmp_path / "set" / "2_x" / "0.png"), (64, 64), seed=99)       # the image's bytes change
    assert disk_cache(load_dataset_folder(root), encoder).disk_counts == (2, 1) and sum(calls) == 1
    calls.clear()
    flipped = disk_cache(load_dataset_folder(root, flip_aug=True), encoder)  # another setting: all again
    assert flipped.disk_counts == (0, 3) and sum(calls) == 6
    with np.load(npz) as stored:
        assert stored["latents_flipped"].shape == (4, 8, 8)
    resized = cache_latents(load_dataset_folder(root, flip_aug=True), encoder,
                            BucketSettings((128, 128), enabled=False), cache_mode="disk")   # another resolution
    assert resized.disk_counts == (0, 3)


def test_disk_cache_tells_vaes_apart_and_uses_a_fallback_for_read_only_folders(tmp_path, tiny_vae_encoder,
                                                                              monkeypatch):
    import os

    from tests.engine.conftest import tiny_vae
    from trainer import latent_disk
    from tests.helpers import make_kohya_folder
    from trainer.diffusers_adapter import DiffusersVAEEncoder

    root = make_kohya_folder(str(tmp_path / "set"), {"2_x": [(64, 64)]})
    disk_cache(load_dataset_folder(root), tiny_vae_encoder)
    other_vae = DiffusersVAEEncoder(tiny_vae(seed=7))
    assert other_vae.identity() != tiny_vae_encoder.identity()
    assert disk_cache(load_dataset_folder(root), other_vae).disk_counts == (0, 1)

    locked = make_kohya_folder(str(tmp_path / "locked"), {"1_y": [(64, 64)]})
    write = latent_disk.write_atomic

    def read_only_dataset(path, data):                  # as a read-only folder answers (root ignores chmod)
        if path.startswith(locked):
            raise PermissionError(13, "Permission denied", path)
        write(path, data)

    monkeypatch.setattr(latent_disk, "write_atomic", read_only_dataset)
    fallback = str(tmp_path / "fallback")
    assert disk_cache(load_dataset_folder(locked), tiny_vae_encoder, fallback_folder=fallback).disk_counts == (0, 1)
    assert not [name for name in os.listdir(os.path.join(locked, "1_y")) if name.endswith(".npz")]
    assert disk_cache(load_dataset_folder(locked), tiny_vae_encoder, fallback_folder=fallback).disk_counts == (1, 0)


def test_alpha_mask_weights_the_loss_from_transparency_or_a_mask_file(tmp_path, tiny_vae_encoder, tiny_trainable):
    import numpy as np
    import torch
    from PIL import Image

    from trainer.loop import train_lora
    from trainer.networks import NetworkConfig
    from trainer.optim import OptimizerConfig
    from trainer.plan import TrainSettings

    folder = tmp_path / "set" / "1_x"
    folder.mkdir(parents=True)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3], rgba[:, :32, 3] = 120, 255                          # left half opaque, right half transparent
    Image.fromarray(rgba, "RGBA").save(folder / "half.png")
    Image.new("RGB", (64, 64), (50, 60, 70)).save(folder / "photo.jpg")
    Image.new("L", (64, 64), 0).save(folder / "photo_mask.png")        # a mask file: ignore everything
    Image.new("RGB", (64, 64), (9, 9, 9)).save(folder / "plain.png")
    dataset = load_dataset_folder(str(tmp_path / "set"), alpha_mask=True, flip_aug=True)
    assert sorted(os.path.basename(e.path) for e in dataset.subsets[0].images) == ["half.png", "photo.jpg",
                                                                                   "plain.png"]
    cache = cache_latents(dataset, tiny_vae_encoder, BucketSettings((64, 64), 64, 64), cache_mode="disk")
    masks = {os.path.basename(s.image_path): s.alpha_mask for s in cache.samples}
    assert masks["plain.png"] is None                                  # nothing says where: train everywhere
    assert masks["half.png"].shape == (8, 8) and torch.equal(masks["half.png"][:, :4], torch.ones(8, 4))
    assert torch.equal(masks["half.png"][:, 4:], torch.zeros(8, 4)) and masks["photo.jpg"].abs().sum() == 0
    again = cache_latents(load_dataset_folder(str(tmp_path / "set"), alpha_mask=True, flip_aug=True),
                          tiny_vae_encoder, BucketSettings((64, 64), 64, 64), cache_mode="disk")
    assert again.disk_counts == (3, 0)
    assert all(torch.equal(a.alpha_mask, b.alpha_mask) for a, b in zip(cache.samples, again.samples)
               if a.alpha_mask is not None)
    with np.load(folder / "half_0064x0064_sd.npz") as stored:
        assert stored["alpha_mask"].shape == (64, 64) and float(stored["alpha_mask"].max()) == 1.0
    Image.new("L", (64, 64), 255).save(folder / "photo_mask.png")      # the mask is edited: that image again
    edited = cache_latents(load_dataset_folder(str(tmp_path / "set"), alpha_mask=True, flip_aug=True),
                           tiny_vae_encoder, BucketSettings((64, 64), 64, 64), cache_mode="disk")
    assert edited.disk_counts == (2, 1)
    assert next(s for s in edited.samples if s.image_path.endswith("photo.jpg")).alpha_mask.min() == 1.0

    only_photo = dataclasses_replace_buckets(cache, "photo.jpg")
    result = train_lora(tiny_trainable, only_photo, NetworkConfig(rank=2), OptimizerConfig(),
                        TrainSettings(epochs=2, batch_size=1))
    assert result.progress.losses == [0.0, 0.0]                        # a fully masked image adds no loss


def dataclasses_replace_buckets(cache, name):
    import dataclasses

    kept = {size: [s for s in samples if os.path.basename(s.image_path) == name]
            for size, samples in cache.buckets.items()}
    return dataclasses.replace(cache, buckets={size: samples for size, samples in kept.items() if samples})


def test_the_node_summary_shows_a_bucket_histogram_and_steps_per_epoch(tmp_path, tiny_vae_encoder):
    from tests.helpers import make_kohya_folder

    root = make_kohya_folder(str(tmp_path / "set"), {"3_x": [(64, 64), (64, 64), (128, 64)]})
    settings = BucketSettings((128, 128), 64, 128, 64, no_upscale=True)     # each image keeps its own size
    text = cache_latents(load_dataset_folder(root), tiny_vae_encoder, settings).describe()
    assert "   64x64   ######################## 6 with repeats" in text
    assert "  128x64   ############ 3 with repeats" in text
    assert "steps per epoch (kohya's count) at batch 1: 9, batch 2: 5, batch 4: 3, batch 8: 2" in text


def test_caching_streams_images_one_vae_batch_at_a_time(tmp_path, tiny_vae_encoder, monkeypatch):
    """Memory does not grow with the folder: decoded images live only for the VAE batch that encodes them."""
    import gc
    import weakref

    from tests.helpers import make_kohya_folder
    from trainer import latent_cache

    root = make_kohya_folder(str(tmp_path / "set"), {"1_x": [(64, 64)] * 12})
    decoded, most = [], [0]
    decode = latent_cache.entry_image

    def tracked(entry, transparent_on_white, with_mask):
        gc.collect()
        most[0] = max(most[0], sum(ref() is not None for ref in decoded))
        image, mask = decode(entry, transparent_on_white, with_mask)
        decoded.append(weakref.ref(image))
        return image, mask

    monkeypatch.setattr(latent_cache, "entry_image", tracked)
    cache = cache_latents(load_dataset_folder(root), tiny_vae_encoder, BucketSettings((64, 64), 64, 64),
                          vae_batch_size=3)
    assert len(cache.samples) == 12 and len(decoded) == 12
    assert most[0] <= 2                                        # the rest of this VAE batch, never earlier ones


def test_nan_latents_are_refused_naming_the_file(tmp_path, tiny_vae_encoder):
    import pytest

    from tests.helpers import make_kohya_folder
    from trainer.errors import TrainerError

    root = make_kohya_folder(str(tmp_path / "set"), {"1_x": [(64, 64), (64, 64)]})

    class HalfBrokenVAE:                                           # an fp16 VAE overflowing on the second image
        def encode(self, pixels):
            latents = tiny_vae_encoder.encode(pixels)
            latents[1:] = float("nan")
            return latents

    with pytest.raises(TrainerError, match=r"NaN/inf latents for \S*1\.png\. An fp16 VAE") as info:
        cache_latents(load_dataset_folder(root), HalfBrokenVAE(), BucketSettings((64, 64), 64, 64), vae_batch_size=2)
    assert "0.png" not in str(info.value)


def test_random_crop_and_color_aug_are_refused_with_the_reason(tmp_path, tiny_vae_encoder):
    import pytest

    from tests.helpers import make_kohya_folder
    from trainer.errors import ConfigError

    root = make_kohya_folder(str(tmp_path / "set"), {"1_x": [(64, 64)]})
    for option in ("random_crop", "color_aug"):
        with pytest.raises(ConfigError, match=f"{option} is on for 1_x, but .*kohya refuses"):
            cache_latents(load_dataset_folder(root, **{option: True}), tiny_vae_encoder,
                          BucketSettings((64, 64), 64, 64))


def test_reading_ahead_reads_one_batch_ahead_and_stops_with_the_caller(tmp_path, tiny_vae_encoder, monkeypatch):
    """The next VAE batch is read in a worker thread while this one encodes; an error reading an image, or the
    caller stopping (Cancel raises from the progress callback), ends the caching there, leaving no thread."""
    import threading

    import pytest

    from tests.helpers import make_kohya_folder
    from trainer import latent_cache

    root = make_kohya_folder(str(tmp_path / "set"), {"1_x": [(64, 64)] * 9})
    dataset, settings = load_dataset_folder(root), BucketSettings((64, 64), 64, 64)
    decode, events, disk_gone = latent_cache.entry_image, [], []

    def tracked(entry, transparent_on_white, with_mask):
        events.append(("read", threading.current_thread().name))
        if disk_gone:
            raise RuntimeError("disk gone")
        return decode(entry, transparent_on_white, with_mask)

    class CountingEncoder:
        def encode(self, pixels):
            events.append(("encode", len([e for e in events if e[0] == "read"])))
            return tiny_vae_encoder.encode(pixels)

    monkeypatch.setattr(latent_cache, "entry_image", tracked)
    cache_latents(dataset, CountingEncoder(), settings, vae_batch_size=3)
    assert {name for kind, name in events if kind == "read"} == {"lora-trainer-caching_0"}
    # each batch's encode starts with at most the next batch read beside it, never two batches ahead
    assert all(reads <= 3 * (encoded + 2) for encoded, (_, reads) in
               enumerate(e for e in events if e[0] == "encode"))

    def cancel(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    events.clear()
    with pytest.raises(KeyboardInterrupt):
        cache_latents(dataset, tiny_vae_encoder, settings, vae_batch_size=3, progress=cancel)
    assert len(events) <= 6                                    # the batch cancelled and at most the next one
    disk_gone.append(True)
    with pytest.raises(RuntimeError, match="disk gone"):
        cache_latents(dataset, tiny_vae_encoder, settings, vae_batch_size=3)
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("lora-trainer-caching")]
