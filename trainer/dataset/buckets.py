"""Aspect-ratio buckets, as kohya's sd-scripts makes and assigns them (the resize itself: images.py).

Formulas follow kohya's `make_bucket_resolutions`, `BucketManager.select_bucket` and
`trim_and_resize_if_required` (see docs/kohya-behaviour.md, Buckets); the numbers are checked against
kohya's own output in tests (reference/buckets.json).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from ..errors import ConfigError

Size = tuple[int, int]  # (width, height), as kohya writes bucket resolutions


def make_bucket_resolutions(max_reso: Size, min_size: int = 256, max_size: int = 1024,
                            divisible: int = 64) -> list[Size]:
    """Every bucket whose area fits in max_reso's area, stepping one side by `divisible`."""
    max_area = max_reso[0] * max_reso[1]
    square = int(math.sqrt(max_area) // divisible) * divisible
    resolutions = {(square, square)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resolutions.add((width, height))
            resolutions.add((height, width))
        width += divisible
    return sorted(resolutions)


@dataclass(frozen=True)
class BucketSettings:
    """kohya's resolution and bucket arguments (CLI defaults)."""

    resolution: Size = (512, 512)
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    no_upscale: bool = False
    enabled: bool = True             # kohya's enable_bucket; off: one bucket, the resolution itself

    def validated(self) -> "BucketSettings":
        """Round min down / max up to the step, and check the resolution fits, as kohya does."""
        if not self.enabled:
            # kohya: a single bucket (W, H) = resolution; every image resized to cover it and centre-cropped
            width, height = self.resolution
            if width < 64 or height < 64:
                raise ConfigError(f"resolution {width}x{height} is too small; use at least 64 (512 for SD1.x).")
            return BucketSettings(self.resolution, min(self.resolution), max(self.resolution),
                                  self.bucket_reso_steps, False, False)
        step = self.bucket_reso_steps
        if step < 8 or step % 8:
            raise ConfigError(f"bucket_reso_steps is {step}; it must be a positive multiple of 8 "
                              "(kohya requires 64 for SD1.x/SD2 and 32 for SDXL).")
        width, height = self.resolution
        if width < 64 or height < 64:
            raise ConfigError(f"resolution {width}x{height} is too small; use at least 64 (512 for SD1.x).")
        low = self.min_bucket_reso - self.min_bucket_reso % step
        high = self.max_bucket_reso + (-self.max_bucket_reso) % step
        if not self.no_upscale:
            if min(width, height) < low:
                raise ConfigError(f"min_bucket_reso {self.min_bucket_reso} is larger than the resolution's "
                                  f"short side {min(width, height)}; lower min_bucket_reso.")
            if max(width, height) > high:
                raise ConfigError(f"max_bucket_reso {self.max_bucket_reso} is smaller than the resolution's "
                                  f"long side {max(width, height)}; raise max_bucket_reso.")
        return BucketSettings(self.resolution, low, high, step, self.no_upscale)

    @cached_property
    def predefined(self) -> list[Size]:
        if not self.enabled:
            return [tuple(self.resolution)]
        return make_bucket_resolutions(self.resolution, self.min_bucket_reso, self.max_bucket_reso,
                                       self.bucket_reso_steps)

    @property
    def max_area(self) -> int:
        return self.resolution[0] * self.resolution[1]


@dataclass(frozen=True)
class BucketChoice:
    bucket: Size      # the training size, multiple of the step
    resized: Size     # the size the image is resized to before the centre crop
    ar_error: float   # bucket aspect ratio minus image aspect ratio


def _round_to_step(value: float, step: int) -> int:
    rounded = int(value + 0.5)
    return rounded - rounded % step


def select_bucket(settings: BucketSettings, width: int, height: int) -> BucketChoice:
    """kohya's BucketManager.select_bucket for one image of (width, height)."""
    aspect = width / height
    step = settings.bucket_reso_steps
    if not settings.no_upscale:
        bucket = (width, height)
        if bucket not in set(settings.predefined):
            # nearest aspect ratio; ties go to the first bucket in sorted order (numpy argmin)
            bucket = min(settings.predefined, key=lambda b: abs(b[0] / b[1] - aspect))
        if aspect > bucket[0] / bucket[1]:
            scale = bucket[1] / height
        else:
            scale = bucket[0] / width
        resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    else:
        if width * height > settings.max_area:
            resized_w = math.sqrt(settings.max_area * aspect)
            resized_h = settings.max_area / resized_w
            w_rounded = _round_to_step(resized_w, step)
            h_in_w = _round_to_step(w_rounded / aspect, step)
            h_rounded = _round_to_step(resized_h, step)
            w_in_h = _round_to_step(h_rounded * aspect, step)
            if abs(w_rounded / h_in_w - aspect) < abs(w_in_h / h_rounded - aspect):
                resized = (w_rounded, int(w_rounded / aspect + 0.5))
            else:
                resized = (int(h_rounded * aspect + 0.5), h_rounded)
        else:
            resized = (width, height)
        bucket = (resized[0] - resized[0] % step, resized[1] - resized[1] % step)
    ar_error = bucket[0] / bucket[1] - aspect if bucket[1] else math.inf
    return BucketChoice(bucket, resized, ar_error)


def fitted_box(bucket: Size, original_size: Size) -> tuple[float, float, float, float]:
    """kohya's BucketManager.get_crop_ltrb (Stability AI's convention): (left, top, right, bottom) of the image
    fitted inside the bucket, unrounded as kohya keeps them (the npz cache and SDXL's size conditioning round
    where kohya does)."""
    bucket_w, bucket_h = bucket
    image_ar = original_size[0] / original_size[1]
    if bucket_w / bucket_h > image_ar:
        width, height = bucket_h * image_ar, bucket_h
    else:
        width, height = bucket_w, bucket_w / image_ar
    left, top = (bucket_w - width) // 2, (bucket_h - height) // 2
    return left, top, left + width, top + height
