"""Bucket every image and encode it once with the VAE, keeping the latents in memory.

The result, `LatentCache`, is what the Bucket & Cache Latents node hands to Train: latents grouped by
bucket, each with its caption and repeat count. Latents are stored raw (unscaled); the denoiser's
`scale_latents` is applied once per batch at train time.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .buckets import BucketChoice, BucketSettings, Size, resize_and_crop, select_bucket
from .dataset import Dataset
from .errors import DatasetError, TrainerError
from .interfaces import LatentEncoder


@dataclass(frozen=True)
class CachedSample:
    image_path: str
    caption: str
    repeats: int
    subset: str
    original_size: Size
    bucket: Size
    latent: torch.Tensor          # [C, h, w] float32 on CPU, raw VAE output
    loss_weight: float = 1.0


@dataclass
class LatentCache:
    settings: BucketSettings
    buckets: dict[Size, list[CachedSample]]
    dataset: Dataset
    mean_ar_error: float
    cache_mode: str = "memory"

    @property
    def samples(self) -> list[CachedSample]:
        return [s for bucket in self.buckets.values() for s in bucket]

    def bucket_counts(self) -> dict[Size, int]:
        """Images per bucket counting repeats, as kohya's bucket_info reports."""
        return {size: sum(s.repeats for s in items) for size, items in self.buckets.items()}

    def bucket_info(self) -> dict:
        return {"buckets": {i: {"resolution": list(size), "count": count}
                            for i, (size, count) in enumerate(sorted(self.bucket_counts().items()))},
                "mean_img_ar_error": self.mean_ar_error}

    def describe(self) -> str:
        lines = [f"{len(self.samples)} image(s) in {len(self.buckets)} bucket(s), latents in {self.cache_mode}"]
        for size, count in sorted(self.bucket_counts().items()):
            lines.append(f"  bucket {size[0]}x{size[1]}: {count} with repeats")
        return "\n".join(lines)


def open_rgb(path: str) -> Image.Image:
    """Open an image as RGB, honouring EXIF rotation, with an actionable error when it can't be read."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                background = Image.new("RGB", image.size, (255, 255, 255))
                background.paste(image.convert("RGBA"), mask=image.convert("RGBA").split()[-1])
                return background
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"Image {path} cannot be read ({exc}). Remove it or re-save it as PNG/JPEG.") from None


def image_size(path: str) -> Size:
    try:
        with Image.open(path) as image:
            size = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"Image {path} cannot be read ({exc}). Remove it or re-save it as PNG/JPEG.") from None
    # EXIF orientations 5..8 rotate by 90 degrees: the trained image is the transposed one
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def to_pixels(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images of one size -> [B, H, W, 3] float32 in 0..1 (ComfyUI's IMAGE layout)."""
    arrays = np.stack([np.asarray(img, dtype=np.float32) for img in images]) / 255.0
    return torch.from_numpy(arrays)


def cache_latents(dataset: Dataset, encoder: LatentEncoder, settings: BucketSettings, vae_batch_size: int = 1,
                  progress: Callable[[int, int], None] | None = None) -> LatentCache:
    """Assign buckets, resize and crop, and encode every image; `progress(done, total)` after each batch."""
    if vae_batch_size < 1:
        raise TrainerError(f"vae_batch_size is {vae_batch_size}; it must be 1 or more.")
    settings = settings.validated()

    planned: dict[Size, list[tuple[object, object, BucketChoice, Size]]] = {}
    ar_errors = []
    for subset in dataset.subsets:
        for entry in subset.images:
            size = image_size(entry.path)
            choice = select_bucket(settings, *size)
            if min(choice.bucket) < settings.bucket_reso_steps:
                raise DatasetError(f"Image {entry.path} is {size[0]}x{size[1]}, smaller than one bucket step "
                                   f"({settings.bucket_reso_steps} px) on a side, so bucket_no_upscale leaves no "
                                   "bucket for it. Remove or enlarge it, or turn bucket_no_upscale off.")
            ar_errors.append(abs(choice.ar_error))
            planned.setdefault(choice.bucket, []).append((subset, entry, choice, size))

    total = sum(len(v) for v in planned.values())
    done = 0
    buckets: dict[Size, list[CachedSample]] = {}
    # smallest buckets first, as kohya sorts by area before caching
    for bucket in sorted(planned, key=lambda b: (b[0] * b[1], b)):
        items = planned[bucket]
        cached = []
        for start in range(0, len(items), vae_batch_size):
            chunk = items[start:start + vae_batch_size]
            images = [resize_and_crop(open_rgb(entry.path), choice) for _, entry, choice, _ in chunk]
            with torch.no_grad():
                latents = encoder.encode(to_pixels(images))
            latents = latents.detach().to("cpu", torch.float32).clone()
            if not torch.isfinite(latents).all():
                bad = [entry.path for (_, entry, _, _), lat in zip(chunk, latents) if not torch.isfinite(lat).all()]
                raise TrainerError(f"The VAE produced NaN/inf latents for {', '.join(bad)}. An fp16 VAE is the usual "
                                   "cause (the SDXL VAE in particular): load the VAE in fp32 or use an fp16-fix VAE.")
            for (subset, entry, choice, size), latent in zip(chunk, latents):
                cached.append(CachedSample(entry.path, entry.caption, subset.repeats, subset.name, size,
                                           choice.bucket, latent))
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        buckets[bucket] = cached

    mean_error = float(np.mean(ar_errors)) if ar_errors else 0.0
    return LatentCache(settings, dict(sorted(buckets.items())), dataset, mean_error)


def batches_per_epoch(cache: LatentCache, batch_size: int) -> int:
    """kohya's len(train_dataloader): per-bucket ceil of (images x repeats) / batch size."""
    return sum(math.ceil(count / batch_size) for count in cache.bucket_counts().values())


def tag_frequency(cache: LatentCache) -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: per folder, each comma-separated tag counted once per image."""
    result: dict[str, Counter] = {}
    for subset in cache.dataset.subsets:
        counter = result.setdefault(subset.name, Counter())
        for entry in subset.images:
            for tag in entry.caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    counter[tag] += 1
    return {folder: dict(counts) for folder, counts in result.items()}
