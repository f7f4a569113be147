"""Bucket every image and encode it once with the VAE, keeping the latents in memory.

The result, `LatentCache`, is what the Bucket & Cache Latents node hands to Train: latents grouped by
bucket, each with its caption and repeat count. Latents are stored raw (unscaled); the denoiser's
`scale_latents` is applied once per batch at train time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
from PIL import Image

from .dataset import Dataset, Skipped
from .dataset.buckets import BucketChoice, BucketSettings, Size, select_bucket
from .dataset.caption_processing import CaptionOptions
from .dataset.records import describe_skips
from .dataset.images import (RESIZE_INTERPOLATIONS, UnreadableImage, latent_mask, open_rgb, open_rgb_and_mask,
                             resize_and_crop, to_pixels)
from .dataset.regularization import balanced_reg_repeats
from .errors import ConfigError, DatasetError, TrainerError
from .interfaces import LatentEncoder
from .latent_disk import DiskLatentStore

logger = logging.getLogger(__name__)

CACHE_MODES = ("memory", "disk")
T = TypeVar("T")


@dataclass(frozen=True)
class CachedSample:
    image_path: str
    caption: str
    repeats: int
    subset: str
    original_size: Size
    bucket: Size
    latent: torch.Tensor          # [C, h, w] float32 on CPU, raw VAE output
    is_reg: bool = False          # a regularization image: its loss is weighted by Train's prior_loss_weight
    latent_flipped: torch.Tensor | None = None   # flip augmentation: the mirrored image's latent
    caption_options: CaptionOptions = field(default_factory=CaptionOptions)   # its subset's, applied per step
    alpha_mask: torch.Tensor | None = None       # [h, w] loss weights at latent resolution (kohya's alpha_mask)


@dataclass
class LatentCache:
    settings: BucketSettings
    buckets: dict[Size, list[CachedSample]]
    dataset: Dataset
    mean_ar_error: float
    cache_mode: str = "memory"
    skipped: tuple[Skipped, ...] = field(default=())     # images left out while caching, with the reason
    interpolation: str = "auto"                          # kohya's resize_interpolation
    disk_counts: tuple[int, int] = (0, 0)                # disk cache: (latents read back, latents written)

    @property
    def flip_aug(self) -> bool:
        return any(subset.flip_aug for subset in self.dataset.subsets)

    @property
    def alpha_mask(self) -> bool:
        return any(subset.alpha_mask for subset in self.dataset.subsets)

    @property
    def samples(self) -> list[CachedSample]:
        return [s for bucket in self.buckets.values() for s in bucket]

    def images_per_subset(self) -> Counter:
        """Cached images per subset folder name: what trains, after any skips."""
        return Counter(sample.subset for sample in self.samples)

    @property
    def num_train_images(self) -> int:
        """kohya's num_train_images over what was cached: training images times repeats."""
        return sum(sample.repeats for sample in self.samples if not sample.is_reg)

    @property
    def num_reg_images(self) -> int:
        """kohya's num_reg_images: cached reg images times their folder's repeats, before balancing."""
        repeats = {subset.name: subset.repeats for subset in self.dataset.subsets if subset.is_reg}
        return sum(repeats[sample.subset] for sample in self.samples if sample.is_reg)

    def bucket_counts(self) -> dict[Size, int]:
        """Images per bucket counting repeats, as kohya's bucket_info reports."""
        return {size: sum(s.repeats for s in items) for size, items in self.buckets.items()}

    def bucket_info(self) -> dict:
        return {"buckets": {i: {"resolution": list(size), "count": count}
                            for i, (size, count) in enumerate(sorted(self.bucket_counts().items()))},
                "mean_img_ar_error": self.mean_ar_error}

    def describe(self) -> str:
        lines = [f"{len(self.samples)} image(s) in {len(self.buckets)} bucket(s), latents in {self.cache_mode}"]
        if self.cache_mode == "disk":
            lines[0] += f" ({self.disk_counts[0]} read from .npz files, {self.disk_counts[1]} encoded and written)"
        counts = sorted(self.bucket_counts().items())
        widest = max((count for _, count in counts), default=1)
        for size, count in counts:                                  # a histogram: one bar per bucket
            bar = "#" * max(1, round(24 * count / widest))
            lines.append(f"  {size[0]:>4}x{size[1]:<4} {bar} {count} with repeats")
        per_epoch = ", ".join(f"batch {b}: {batches_per_epoch(self, b)}" for b in (1, 2, 4, 8))
        lines.append(f"steps per epoch (kohya's count) at {per_epoch}")
        lines.extend(describe_skips(self.skipped))
        return "\n".join(lines)


def cache_latents(dataset: Dataset, encoder: LatentEncoder, settings: BucketSettings, vae_batch_size: int = 1,
                  progress: Callable[[int, int], None] | None = None, interpolation: str = "auto",
                  transparent_on_white: bool = True, cache_mode: str = "memory",
                  fallback_folder: str | None = None) -> LatentCache:
    """Assign buckets, resize and crop, and encode every image; `progress(done, total)` after each batch.

    `interpolation` is kohya's resize_interpolation (images.RESIZE_INTERPOLATIONS); `transparent_on_white`
    off keeps the colour under transparent pixels, as kohya does. A subset with `flip_aug` also gets each
    image's mirror encoded; training then takes one of the two at random per draw (kohya's flip_aug with
    cached latents); one with `alpha_mask` gets each image's loss mask: its transparency, or a
    `<stem>_mask.png` beside it (white = train, black = ignore); images with neither train everywhere.
    `cache_mode` "disk" also keeps kohya `.npz` files beside the images (or under `fallback_folder` where the
    image folder is read-only) and reuses those that still match; the latents are held in memory either way.
    """
    if cache_mode not in CACHE_MODES:
        raise ConfigError(f"cache {cache_mode!r} is unknown; choose one of {', '.join(CACHE_MODES)}.")
    disk = None
    if cache_mode == "disk":
        identity = getattr(encoder, "identity", None)
        if identity is None:
            raise ConfigError("This VAE cannot name itself, so latents on disk could not be matched to it; "
                              "use cache 'memory'.")
        disk = DiskLatentStore(identity(), {"interpolation": interpolation,
                                            "transparent_on_white": transparent_on_white}, fallback_folder)
    if interpolation not in RESIZE_INTERPOLATIONS:
        raise ConfigError(f"resize interpolation {interpolation!r} is unknown; choose one of "
                          f"{', '.join(RESIZE_INTERPOLATIONS)}.")
    if vae_batch_size < 1:
        raise TrainerError(f"vae_batch_size is {vae_batch_size}; it must be 1 or more.")
    for subset in dataset.subsets:
        for option in ("random_crop", "color_aug"):
            if getattr(subset, option):
                raise ConfigError(f"{option} is on for {subset.name}, but it changes the image at every step, so its "
                                  "latents cannot be cached, and this trainer always caches them (kohya refuses "
                                  f"{option} with cached latents too). Turn it off; flip_aug gives variety that "
                                  "caches.")
    settings = settings.validated()

    planned: dict[Size, list[tuple[object, object, BucketChoice, Size]]] = {}
    skipped: list[Skipped] = []
    ar_errors = []
    used_reg = dataset.reg_balance()                  # kohya caches only the reg images balancing uses
    for subset in dataset.subsets:
        for entry in subset.images:
            if subset.is_reg and entry.path not in used_reg:
                continue
            choice = select_bucket(settings, *entry.size)
            if min(choice.bucket) < settings.bucket_reso_steps:
                skipped.append(Skipped(entry.path, f"{entry.size[0]}x{entry.size[1]} is smaller than one bucket "
                                                   f"step ({settings.bucket_reso_steps} px) on a side, so "
                                                   "bucket_no_upscale leaves no bucket for it"))
                continue
            ar_errors.append(abs(choice.ar_error))
            planned.setdefault(choice.bucket, []).append((subset, entry, choice, entry.size))

    total = sum(len(v) for v in planned.values())
    done = 0
    ready: dict[Size, dict[int, CachedSample]] = {}
    # one worker thread does the reading (disk cache, decode, resize, to pixels) one batch ahead and the writing
    # of .npz files behind, so the encoder never waits for files: caching costs about the encode alone
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-trainer-caching") as worker:
        writes = []
        with closing(read_ahead(worker, prepared_work(planned, disk, vae_batch_size, interpolation,
                                                      transparent_on_white))) as work:
            for part in work:
                bucket_ready = ready.setdefault(part.bucket, {})
                if isinstance(part, FromDisk):
                    bucket_ready.update(part.samples)
                    done += len(part.samples)
                    if progress is not None and part.samples:
                        progress(done, total)
                    continue
                skipped.extend(part.skipped)
                done += part.planned
                if part.chunk:
                    samples = encoded_samples(encoder, part)
                    bucket_ready.update((index, sample) for (index, _, _), sample in zip(part.chunk, samples))
                    if disk is not None:
                        writes.append(worker.submit(store_on_disk, disk, part.chunk, samples, part.masks))
                if progress is not None:
                    progress(done, total)
        for write in writes:
            write.result()                # a write that failed unexpectedly fails the caching, as it did inline
    # each bucket's images in the folder's order, as planned
    buckets = {bucket: [found[index] for index in sorted(found)] for bucket, found in ready.items() if found}

    for item in skipped:
        logger.warning("lora-trainer caching: skipped %s", item.describe())
    if not buckets:
        reasons = "\n".join(f"  {item.describe()}" for item in skipped[:20])
        raise DatasetError(f"No image of {dataset.root} could be cached:\n{reasons}")
    buckets = balance_regularization(buckets, dataset)
    mean_error = float(np.mean(ar_errors)) if ar_errors else 0.0
    return LatentCache(settings, dict(sorted(buckets.items())), dataset, mean_error, cache_mode, tuple(skipped),
                       interpolation, (disk.loaded, disk.written) if disk is not None else (0, 0))


@dataclass
class FromDisk:
    """A bucket's latents read back from the disk cache (by the image's place in the bucket), before its other
    images are encoded."""

    bucket: Size
    samples: dict[int, CachedSample]


@dataclass
class PreparedBatch:
    """One VAE batch, read and ready for the encoder: the images that decoded (`chunk`: their place in the
    bucket, the planned item, its disk source) as pixels, with the mirrors of flip_aug images after them."""

    bucket: Size
    planned: int                        # images the batch was planned with, those skipped included
    chunk: list[tuple[int, tuple, dict | None]]
    pixels: torch.Tensor | None         # [B + mirrors, H, W, 3] in 0..1; None when no image decoded
    mirrored: list[int]                 # the chunk positions whose mirror follows in `pixels`
    masks: list[Image.Image | None]     # each chunk image's bucket-sized loss mask (alpha_mask subsets)
    skipped: list[Skipped]


def prepared_work(planned: dict, disk: DiskLatentStore | None, vae_batch_size: int, interpolation: str,
                  transparent_on_white: bool) -> Iterator[FromDisk | PreparedBatch]:
    """All that caching does besides encoding, in the order the cache is built: bucket by bucket (smallest
    first, as kohya sorts by area), what the disk cache still holds, then each VAE batch of the rest."""
    for bucket in sorted(planned, key=lambda b: (b[0] * b[1], b)):
        stored, to_encode = {}, []
        for index, item in enumerate(planned[bucket]):
            source = disk_source(disk, item)
            sample = from_disk(disk, item, source)
            if sample is not None:
                stored[index] = sample
            else:
                to_encode.append((index, item, source))
        yield FromDisk(bucket, stored)
        for start in range(0, len(to_encode), vae_batch_size):
            yield prepare_batch(bucket, to_encode[start:start + vae_batch_size], interpolation, transparent_on_white)


def prepare_batch(bucket: Size, batch: list, interpolation: str, transparent_on_white: bool) -> PreparedBatch:
    """Decode, resize and crop one VAE batch's images, and make the encoder's pixels; images corrupt past their
    header (found only now, before training) are skipped. The decoded images are dropped here: only the pixels
    of the batch being encoded and of the next one are held."""
    chunk, images, masks, skipped = [], [], [], []
    for index, item, source in batch:
        try:
            image, mask = entry_image(item[1], transparent_on_white, item[0].alpha_mask)
            images.append(resize_and_crop(image, item[2], interpolation))
            masks.append(resize_and_crop(mask, item[2], interpolation) if mask is not None else None)
            chunk.append((index, item, source))
        except UnreadableImage as exc:
            skipped.append(Skipped(exc.path, exc.reason))
    pixels, mirrored = encoder_pixels([item for _, item, _ in chunk], images) if chunk else (None, [])
    return PreparedBatch(bucket, len(batch), chunk, pixels, mirrored, masks, skipped)


def read_ahead(worker: ThreadPoolExecutor, items: Iterator[T]) -> Iterator[T]:
    """`items`, each one made by `worker` (one thread) while the caller uses the one before it: one ahead, never
    more, so two are held at most. An exception raised making an item is raised here, at that item."""
    end = object()
    upcoming = worker.submit(next, items, end)
    try:
        while True:
            item = upcoming.result()
            if item is end:
                return
            upcoming = worker.submit(next, items, end)
            yield item
    finally:
        upcoming.cancel()                 # the caller stopped early: the item not yet started is not made


def encoded_samples(encoder: LatentEncoder, batch: PreparedBatch) -> list[CachedSample]:
    """The batch's cached samples, their loss masks at latent resolution."""
    samples = encode_chunk(encoder, [item for _, item, _ in batch.chunk], batch.pixels, batch.mirrored)
    return [dataclasses.replace(sample, alpha_mask=latent_mask(mask)) for sample, mask in zip(samples, batch.masks)]


def store_on_disk(disk: DiskLatentStore, chunk: list, samples: list[CachedSample], masks: list) -> None:
    """One encoded batch's .npz files (PreparedBatch.chunk and .masks, with the samples made of them)."""
    for (_, item, source), sample, mask in zip(chunk, samples, masks):
        to_disk(disk, item, source, sample, mask)


def disk_source(disk: DiskLatentStore | None, item) -> dict | None:
    """What the image's latent on disk must have been made from; None when it has no place on disk."""
    _, entry, choice, _ = item
    if disk is None or entry.pixels is not None:      # images from the graph have no folder to cache beside
        return None
    try:
        return disk.source(entry.path, choice, flip=item[0].flip_aug, alpha_mask=item[0].alpha_mask)
    except OSError:
        return None


def from_disk(disk: DiskLatentStore | None, item, source: dict | None) -> CachedSample | None:
    subset, entry, choice, size = item
    stored = disk.load(entry.path, size, source) if source is not None else None
    if stored is None:
        return None
    latent, flipped, mask = stored
    return CachedSample(entry.path, entry.caption, subset.repeats, subset.name, size, choice.bucket, latent,
                        subset.is_reg, flipped, subset.caption_options, latent_mask(mask))


def to_disk(disk: DiskLatentStore | None, item, source: dict | None, sample: CachedSample, mask) -> None:
    _, entry, choice, size = item
    if source is None:
        return
    if disk.save(entry.path, size, choice, source, sample.latent, sample.latent_flipped, mask) is None:
        logger.warning("lora-trainer caching: could not write the latent cache of %s anywhere", entry.path)


def balance_regularization(buckets: dict[Size, list[CachedSample]], dataset: Dataset) -> dict[Size, list[CachedSample]]:
    """kohya's reg balancing over the images that were cached: reg repeats set per image, unused ones dropped."""
    cached_reg = {s.image_path: s for samples in buckets.values() for s in samples if s.is_reg}
    if not cached_reg:
        return buckets
    train_samples = sum(s.repeats for samples in buckets.values() for s in samples if not s.is_reg)
    in_order = [(image.path, subset.repeats) for subset in dataset.subsets if subset.is_reg
                for image in subset.images if image.path in cached_reg]
    repeats = balanced_reg_repeats(train_samples, in_order)
    balanced = {}
    for size, samples in buckets.items():
        kept = [dataclasses.replace(s, repeats=repeats[s.image_path]) if s.is_reg else s
                for s in samples if not s.is_reg or s.image_path in repeats]
        if kept:
            balanced[size] = kept
    return balanced


def entry_image(entry, transparent_on_white: bool, with_mask: bool) -> tuple[Image.Image, Image.Image | None]:
    """The entry's picture, and its loss mask when asked: pixels it carries (images from the graph), else its
    file, decoded."""
    if entry.pixels is not None:
        return Image.fromarray(entry.pixels, "RGB"), None
    if with_mask:
        return open_rgb_and_mask(entry.path, transparent_on_white)
    return open_rgb(entry.path, transparent_on_white), None


def encoder_pixels(chunk: list, images: list) -> tuple[torch.Tensor, list[int]]:
    """A VAE batch's pixels [B, H, W, 3], the mirrors of flip_aug subsets' images appended, and which chunk
    positions have their mirror there."""
    pixels = to_pixels(images)
    mirrored = [index for index, (subset, _, _, _) in enumerate(chunk) if subset.flip_aug]
    if mirrored:
        pixels = torch.cat([pixels, pixels[mirrored].flip(2)])        # [B, H, W, C]: mirror along the width
    return pixels, mirrored


def encode_chunk(encoder: LatentEncoder, chunk: list, pixels: torch.Tensor, mirrored: list[int]) -> list[CachedSample]:
    """One VAE batch of same-bucket images (encoder_pixels: the mirrors after them) -> cached samples.

    NaN/inf latents are refused, naming the files.
    """
    with torch.no_grad():
        latents = encoder.encode(pixels)
    latents = latents.detach().to("cpu", torch.float32).clone()
    if not torch.isfinite(latents).all():
        finite = torch.isfinite(latents.flatten(1)).all(dim=1)
        owners = list(range(len(chunk))) + mirrored
        bad = sorted({chunk[owner][1].path for owner, ok in zip(owners, finite.tolist()) if not ok})
        raise TrainerError(f"The VAE produced NaN/inf latents for {', '.join(bad)}. An fp16 VAE is the usual "
                           "cause (the SDXL VAE in particular): load the VAE in fp32 or use an fp16-fix VAE.")
    flipped: list[torch.Tensor | None] = [None] * len(chunk)
    for position, index in enumerate(mirrored):
        flipped[index] = latents[len(chunk) + position]
    return [CachedSample(entry.path, entry.caption, subset.repeats, subset.name, size, choice.bucket, latent,
                         subset.is_reg, mirror, subset.caption_options)
            for (subset, entry, choice, size), latent, mirror in zip(chunk, latents[:len(chunk)], flipped)]


def batches_per_epoch(cache: LatentCache, batch_size: int) -> int:
    """kohya's len(train_dataloader): per-bucket ceil of (images x repeats) / batch size."""
    return sum(math.ceil(count / batch_size) for count in cache.bucket_counts().values())


def tag_frequency(cache: LatentCache) -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: per folder, each comma-separated tag counted once per cached image."""
    result: dict[str, Counter] = {}
    for sample in cache.samples:
        counter = result.setdefault(sample.subset, Counter())
        for tag in sample.caption.split(","):
            tag = tag.strip().lower()
            if tag:
                counter[tag] += 1
    return {folder: dict(counts) for folder, counts in result.items()}
