"""The latent cache on disk: kohya's `.npz` files beside the images, reused only while they still match.

kohya's file: `<image stem>_<WWWW>x<HHHH>_sd.npz` (the original size, 4 digits), keys `latents` (C, h, w)
float32, `original_size` [W, H], `crop_ltrb` [l, t, r, b], `latents_flipped` with flip augmentation and
`alpha_mask` (H, W) in 0..1 with alpha masks;
kohya's own trainer reads our files. kohya reuses a file when the keys are there; we also store what the
latent was made from (`lora_trainer_source`: the image file's bytes hash, bucket, resize, transparency,
flip, the mask file's bytes hash with alpha masks, the VAE's identity) and re-encode when any of it
changed. A folder we cannot write to gets its files under a fallback folder instead, named by the image's
folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import torch
from PIL import Image

from .atomic_files import write_atomic
from .dataset.buckets import BucketChoice, Size, fitted_box
from .dataset.images import mask_file

SOURCE_KEY = "lora_trainer_source"


def npz_name(image_path: str, original_size: Size, suffix: str = "sd") -> str:
    width, height = original_size
    return f"{os.path.splitext(os.path.basename(image_path))[0]}_{width:04d}x{height:04d}_{suffix}.npz"


def crop_ltrb(bucket: Size, original_size: Size) -> tuple[int, int, int, int]:
    """kohya's crop_ltrb as its npz files hold it: the fitted image's box in the bucket, as integers."""
    return tuple(int(value) for value in fitted_box(bucket, original_size))


def file_digest(path: str) -> str:
    """sha256 of the file's bytes: an edited image is a different image, whatever its modification time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def module_identity(module: torch.nn.Module) -> str:
    """A cheap name for a network's weights: its class, tensor names and shapes, and a sample of the values."""
    digest = hashlib.sha256(type(module).__name__.encode())
    tensors = list(module.state_dict().items())
    for name, tensor in tensors:
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
    for name, tensor in tensors[:4] + tensors[-4:]:
        digest.update(tensor.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


class DiskLatentStore:
    """Reads and writes one image's latents; `vae_identity` names the VAE that made them."""

    def __init__(self, vae_identity: str, settings_key: dict, fallback_folder: str | None = None):
        self.vae_identity = vae_identity
        self.settings_key = settings_key          # interpolation, transparency: the same for every image
        self.fallback_folder = fallback_folder
        self.loaded = 0
        self.written = 0

    def source(self, image_path: str, choice: BucketChoice, flip: bool = False, alpha_mask: bool = False) -> dict:
        source = {"image_sha256": file_digest(image_path), "bucket": list(choice.bucket),
                  "resized": list(choice.resized), "vae": self.vae_identity, "flip": flip, "alpha_mask": alpha_mask,
                  **self.settings_key}
        if alpha_mask:                              # an edited, added or removed mask file changes the loss too
            mask = mask_file(image_path)
            source["mask_sha256"] = file_digest(mask) if os.path.isfile(mask) else None
        return source

    def candidates(self, image_path: str, original_size: Size) -> list[str]:
        name = npz_name(image_path, original_size)
        paths = [os.path.join(os.path.dirname(image_path), name)]
        if self.fallback_folder:
            folder_key = hashlib.sha1(os.path.abspath(os.path.dirname(image_path)).encode()).hexdigest()[:16]
            paths.append(os.path.join(self.fallback_folder, folder_key, name))
        return paths

    def load(self, image_path: str, original_size: Size, source: dict):
        """(latent, flipped latent or None, mask image or None) from a file that still matches `source`; None when
        there is none."""
        for path in self.candidates(image_path, original_size):
            try:
                with np.load(path, allow_pickle=False) as stored:
                    if SOURCE_KEY not in stored or json.loads(str(stored[SOURCE_KEY])) != source:
                        continue
                    latent = torch.from_numpy(np.array(stored["latents"], dtype=np.float32))
                    flip = source["flip"]
                    flipped = (torch.from_numpy(np.array(stored["latents_flipped"], dtype=np.float32))
                               if flip and "latents_flipped" in stored else None)
                    mask = None
                    if source.get("alpha_mask") and "alpha_mask" in stored:
                        weights = np.clip(np.array(stored["alpha_mask"], dtype=np.float32), 0, 1)
                        mask = Image.fromarray(np.rint(weights * 255).astype(np.uint8), "L")
            except (OSError, ValueError, KeyError):
                continue                            # missing, unreadable or foreign: encode afresh
            if flip and flipped is None:
                continue
            if not (torch.isfinite(latent).all() and (flipped is None or torch.isfinite(flipped).all())):
                continue
            self.loaded += 1
            return latent, flipped, mask
        return None

    def save(self, image_path: str, original_size: Size, choice: BucketChoice, source: dict,
             latent: torch.Tensor, flipped: torch.Tensor | None, mask=None) -> str | None:
        """Write beside the image, else under the fallback folder; the path written, or None if neither could be."""
        arrays = {"latents": latent.numpy().astype(np.float32), "original_size": np.array(original_size),
                  "crop_ltrb": np.array(crop_ltrb(choice.bucket, original_size)),
                  SOURCE_KEY: np.array(json.dumps(source, sort_keys=True))}
        if flipped is not None:
            arrays["latents_flipped"] = flipped.numpy().astype(np.float32)
        if mask is not None:                      # kohya's alpha_mask: (H, W) at the bucket size, 0..1
            arrays["alpha_mask"] = np.asarray(mask, dtype=np.float32) / 255.0
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        for path in self.candidates(image_path, original_size):
            try:
                write_atomic(path, buffer.getvalue())
            except OSError:
                continue
            self.written += 1
            return path
        return None
