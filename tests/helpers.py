"""Builders for test data: kohya-layout folders of generated images."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def write_image(path: str, size: tuple[int, int], seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_kohya_folder(root: str, subsets: dict[str, list[tuple[int, int]]], captions: dict[str, str] | None = None,
                      extension: str = ".png") -> str:
    """subsets: {'10_sks dog': [(64, 64), (96, 64)]}; captions: {'10_sks dog/0': 'a caption'}."""
    captions = captions or {}
    os.makedirs(root, exist_ok=True)
    seed = 0
    for folder, sizes in subsets.items():
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for index, size in enumerate(sizes):
            write_image(os.path.join(root, folder, f"{index}{extension}"), size, seed)
            seed += 1
            caption = captions.get(f"{folder}/{index}")
            if caption is not None:
                with open(os.path.join(root, folder, f"{index}.txt"), "w", encoding="utf-8") as handle:
                    handle.write(caption + "\n")
    return root
