"""What a training step conditions the UNet on besides the noisy latents: the text, and for SDXL the pooled
text embedding and the size conditioning of each sample.

SDXL's size conditioning is kohya's (library/train_util.py get_crop_ltrb and the batch assembly): the
original image size (h, w), the crop's top-left in the bucket as Stability AI's preprocessing defines it (the
offset of the image fitted inside the bucket, not the pixels actually cropped; mirrored when the sample is
flipped), and the bucket size (h, w) as the target size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dataset.buckets import Size, fitted_box


@dataclass(frozen=True)
class SizeCondition:
    original_hw: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_hw: tuple[int, int]


def sdxl_size_condition(original_size: Size, bucket: Size, flipped: bool = False) -> SizeCondition:
    """kohya's (original_size_hw, crop_top_left, target_size_hw) for an image of `original_size` (w, h) trained
    in `bucket` (w, h)."""
    bucket_w, bucket_h = bucket
    left, top, right, _ = fitted_box(bucket, original_size)
    if flipped:
        left = bucket_w - right
    return SizeCondition((int(original_size[1]), int(original_size[0])), (int(top), int(left)),
                         (int(bucket_h), int(bucket_w)))


@dataclass
class TextConditioning:
    """A text encoder's output for a batch: the context [B, L, D] and, for SDXL, the pooled embedding [B, P]."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None
