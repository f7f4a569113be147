"""Reading images the way training needs them, and resizing them exactly as kohya does.

- `read_header` looks at a file's header only (size, EXIF orientation), so scanning a folder of thousands
  of images decodes none of them.
- `open_rgb` decodes one image: EXIF orientation applied, the first frame of an animation, 16-bit,
  grayscale, CMYK and palette images converted, transparency composited on white (or, on request, dropped
  as kohya does, keeping whatever colour sits under transparent pixels).
- `resize` shrinks with an exact area average (OpenCV's INTER_AREA, which kohya uses, without OpenCV)
  and enlarges with PIL's LANCZOS, as kohya does; kohya's `resize_interpolation` names pick one method for
  both directions.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .buckets import BucketChoice, Size

# kohya's --resize_interpolation values; "auto" is kohya's default (area to shrink, lanczos to enlarge)
RESIZE_INTERPOLATIONS = ("auto", "area", "lanczos", "bicubic", "bilinear", "nearest", "box")
PIL_FILTERS = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
               "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
               "box": Image.Resampling.BOX}
ORIENTATION_TAG = 0x0112


class UnreadableImage(Exception):
    """A file that cannot be used as a training image; `reason` says why in a few words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class ImageHeader:
    size: Size             # (width, height) as trained, i.e. after the EXIF rotation
    has_alpha: bool


def _open(path: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # a very large photo (say 12000x12000) is a real dataset image, not a decompression bomb
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError:
        raise UnreadableImage(path, "larger than the 178-megapixel safety limit; downscale it first") from None
    except FileNotFoundError:
        raise UnreadableImage(path, "the file is gone (a broken link?)") from None
    except PermissionError:
        raise UnreadableImage(path, "no permission to read it") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnreadableImage(path, f"not an image PIL can read ({exc.__class__.__name__})") from None


# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose does)
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def header_orientation(image: Image.Image) -> int:
    """The EXIF orientation found without decoding pixels (1 = upright).

    JPEG and WebP carry EXIF in their header. PIL finds a PNG's EXIF only by decoding the whole image when
    the chunk comes after the pixels, so for PNG only an EXIF chunk already read with the header counts;
    decoding (open_rgb) uses this same answer, so the size scanned is the size trained.
    """
    try:
        if image.format == "PNG":
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            return int(exif.get(ORIENTATION_TAG, 1))
        return int(image.getexif().get(ORIENTATION_TAG, 1))
    except (OSError, ValueError, SyntaxError, TypeError, struct.error):
        return 1


def read_header(path: str) -> ImageHeader:
    """Size and transparency from the header alone (no pixel is decoded)."""
    with _open(path) as image:
        width, height = image.size
        orientation = header_orientation(image)
        has_alpha = has_transparency(image)
    if width < 1 or height < 1:
        raise UnreadableImage(path, f"its header says {width}x{height}")
    # EXIF orientations 5..8 turn the picture by 90 degrees: the trained image is the transposed one
    return ImageHeader((height, width) if orientation in (5, 6, 7, 8) else (width, height), has_alpha)


def has_transparency(image: Image.Image) -> bool:
    """An alpha channel, or a transparent colour (PNG tRNS in palette, gray or RGB images)."""
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def is_mask_file(path: str, image_stems: set[str]) -> bool:
    """`<stem>_mask.png` beside an image `<stem>.*`: that image's loss mask (mask_file), any letter case."""
    base, extension = os.path.splitext(path)
    return extension.lower() == ".png" and base.lower().endswith("_mask") and base[:-len("_mask")] in image_stems


def to_rgb(image: Image.Image, transparent_on_white: bool = True) -> Image.Image:
    """Any PIL mode as 8-bit RGB; transparency composited on white unless `transparent_on_white` is off."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale PNGs: scale to 8 bits instead of clipping at 255
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        transparency = image.info.get("transparency")
        image = Image.fromarray(np.clip(array * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
        if transparency is not None:                  # a tRNS gray level, scaled the same way
            image.info["transparency"] = int(min(255, transparency * 255.0 / peak + 0.5))
    if has_transparency(image) and transparent_on_white:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[-1])
        return background
    return image.convert("RGB")


def _decode(path: str) -> Image.Image:
    """The first frame, fully decoded, EXIF orientation applied; UnreadableImage when it can't be."""
    with _open(path) as image:
        try:
            orientation = header_orientation(image)
            image.seek(0)
            image.load()
            return image.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else image.copy()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise UnreadableImage(path, f"cannot be decoded, probably truncated or corrupt ({exc})") from None


def open_rgb(path: str, transparent_on_white: bool = True) -> Image.Image:
    """Decode `path` as RGB (first frame, EXIF orientation applied); UnreadableImage when it can't be."""
    return to_rgb(_decode(path), transparent_on_white)


def mask_file(image_path: str) -> str:
    """Where a loss mask for an image without transparency may sit: `<stem>_mask.png` beside it."""
    return os.path.splitext(image_path)[0] + "_mask.png"


def open_rgb_and_mask(path: str, transparent_on_white: bool = True) -> tuple[Image.Image, Image.Image | None]:
    """The RGB image and its loss mask (mode L, 255 = train): its alpha channel, else `<stem>_mask.png`, else None.

    kohya's alpha_mask reads only the alpha channel; the mask file is for formats without one (JPEG).
    """
    image = _decode(path)
    mask = None
    if has_transparency(image):
        mask = image.convert("RGBA").split()[-1]
    elif os.path.isfile(mask_file(path)):
        mask = _decode(mask_file(path)).convert("L")
        if mask.size != image.size:
            raise UnreadableImage(path, f"its mask {os.path.basename(mask_file(path))} is {mask.size[0]}x"
                                        f"{mask.size[1]}, the image {image.size[0]}x{image.size[1]}")
    return to_rgb(image, transparent_on_white), mask


def _area_along(array: np.ndarray, target: int, axis: int) -> np.ndarray:
    """Area-average `array` down to `target` samples along `axis`, in float64.

    Output sample i covers the source interval [i*s, (i+1)*s) with s = source/target; a source pixel
    partly inside counts by the covered fraction (OpenCV's INTER_AREA when shrinking). Each output reads
    only the ~s+1 source rows it covers, so the work is one pass over the image whatever its size.
    """
    source = array.shape[axis]
    scale = source / target
    moved = np.moveaxis(array, axis, 0)
    out = np.empty((target, *moved.shape[1:]), dtype=np.float64)
    for index in range(target):
        start, end = index * scale, min((index + 1) * scale, source)
        first, last = int(math.floor(start)), min(int(math.ceil(end)), source)
        pixels = np.arange(first, last, dtype=np.float64)
        weights = np.minimum(end, pixels + 1) - np.maximum(start, pixels)
        out[index] = np.tensordot(weights, moved[first:last], axes=(0, 0)) / (end - start)
    return np.moveaxis(out, 0, axis)


def area_resize(pixels: np.ndarray, size: Size) -> np.ndarray:
    """Exact area-average shrink of an [H, W, C] uint8 array to (width, height)."""
    target_w, target_h = size
    rows = _area_along(pixels, target_h, axis=0)              # [th, W, C]: the larger pass runs on uint8 input
    out = _area_along(rows, target_w, axis=1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize(image: Image.Image, size: Size, interpolation: str = "auto") -> Image.Image:
    """kohya's resize_image: `auto` shrinks by area average and enlarges with LANCZOS."""
    if image.size == tuple(size):
        return image
    if interpolation not in RESIZE_INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    shrinking = size[0] * size[1] < image.size[0] * image.size[1]
    method = ("area" if shrinking else "lanczos") if interpolation == "auto" else interpolation
    if method == "area":
        if not shrinking:
            return image.resize(size, Image.Resampling.BILINEAR)   # OpenCV's INTER_AREA enlarges bilinearly
        mode = "L" if image.mode == "L" else "RGB"                # RGB images, and masks
        pixels = np.asarray(image.convert(mode))
        shrunk = area_resize(pixels[..., None] if mode == "L" else pixels, size)
        return Image.fromarray(shrunk[..., 0] if mode == "L" else shrunk, mode)
    return image.resize(size, PIL_FILTERS[method])


def resize_and_crop(image: Image.Image, choice: BucketChoice, interpolation: str = "auto") -> Image.Image:
    """Resize to cover the bucket, then centre-crop the excess (kohya's trim_and_resize_if_required)."""
    image = resize(image, choice.resized, interpolation)
    bucket_w, bucket_h = choice.bucket
    left = (image.size[0] - bucket_w) // 2
    top = (image.size[1] - bucket_h) // 2
    if left or top or image.size != choice.bucket:
        image = image.crop((left, top, left + bucket_w, top + bucket_h))
    return image


def latent_mask(mask: Image.Image | None, factor: int = 8) -> torch.Tensor | None:
    """A bucket-sized mask (mode L) as loss weights at latent resolution [h, w] in 0..1: the area mean of each
    factor x factor block, as kohya interpolates it (mode "area")."""
    if mask is None:
        return None
    weights = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    return torch.nn.functional.avg_pool2d(weights, factor)[0, 0]


def to_pixels(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images of one size -> [B, H, W, 3] float32 in 0..1 (ComfyUI's IMAGE layout)."""
    arrays = np.stack([np.asarray(img, dtype=np.float32) for img in images]) / 255.0
    return torch.from_numpy(arrays)
