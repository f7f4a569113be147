"""A dataset subset from images already in memory (ComfyUI's IMAGE outputs), with captions given as text.

Each image becomes an ImageEntry that carries its pixels; its `path` is a stable name with a digest of the
pixels (`<name>/0003-1a2b3c4d5e6f`), so records and resume fingerprints follow the content. That path names
no file: nothing is read from or written to it (the disk latent cache keeps these images in memory only).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ..errors import DatasetError
from .caption_processing import CaptionOptions
from .records import Dataset, ImageEntry, Subset

GRAPH_ROOT = "images from the graph"


def split_captions(captions: list[str], count: int) -> list[str]:
    """One caption per image: a STRING per image, or one multi-line STRING with a line per image.

    A single one-line caption (or none) captions every image alike; an empty line falls back to the name; one
    newline at the very end is ignored (editors leave it), so "a red car\n" captions every image alike.
    """
    if len(captions) == count:
        return [caption.strip() for caption in captions]
    if len(captions) == 1:
        text = captions[0].replace("\r\n", "\n")
        if text.endswith("\n"):
            text = text[:-1]                  # the newline an editor leaves after the last caption
        lines = [line.strip() for line in text.split("\n")]
        if len(lines) == count:
            return lines
        if len(lines) == 1:
            return lines * count
    if not captions:
        return [""] * count
    raise DatasetError(f"Dataset from Images got {count} image(s) but {len(captions)} caption STRING(s) "
                       f"({sum(len(c.splitlines()) for c in captions)} line(s) in all). Give one caption per image, "
                       "one multi-line STRING with a line per image, or one caption for all.")


def dataset_from_pixels(images: list[np.ndarray], captions: list[str], name: str, repeats: int,
                        caption_options: CaptionOptions | None = None, flip_aug: bool = False) -> Dataset:
    """`images`: [H, W, 3] uint8 arrays, in order; `name` is the class tokens (caption of uncaptioned images)."""
    name = name.strip()
    if not images:
        raise DatasetError("Dataset from Images got no images; connect an IMAGE output (Load Image, a batch or "
                           "a list).")
    if repeats < 1:
        raise DatasetError(f"repeats is {repeats}; it must be 1 or more.")
    if not name or os.sep in name or "/" in name:
        raise DatasetError(f"Give the images a name without slashes (it is the caption of images without one, "
                           f"like a folder's 'sks dog'); got {name!r}.")
    folder = os.path.join(GRAPH_ROOT, f"{repeats}_{name}")
    entries = []
    for index, (pixels, caption) in enumerate(zip(images, split_captions(captions, len(images)))):
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise DatasetError(f"Image {index} has shape {pixels.shape} ({pixels.dtype}); expected [H, W, 3] uint8.")
        digest = hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:12]
        entries.append(ImageEntry(os.path.join(folder, f"{index:04d}-{digest}"), caption or name, bool(caption),
                                  (pixels.shape[1], pixels.shape[0]), pixels))
    options = (caption_options or CaptionOptions()).checked()
    subset = Subset(folder, repeats, name, tuple(entries), caption_extension="(captions from the graph)",
                    caption_options=options, flip_aug=flip_aug)
    return Dataset(GRAPH_ROOT, subset.caption_extension, (subset,))
