"""Scanning a dataset folder (headers only) against decoding the same files, in one process.

Builds a folder of N images (JPEG and PNG, 768x512, noisy), then times, interleaved over several rounds,
`load_dataset_folder` (headers, EXIF, caption lookups) plus kohya's bucket choice for every image, and a
plain full decode of every file with PIL.
The ratio says how much of a decode the scan costs. Run from the repository root:
    .venv/bin/python -m benchmarks.dataset_scan [--images 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from trainer.dataset import load_dataset_folder
from trainer.dataset.buckets import BucketSettings, select_bucket


def build_folder(root: str, count: int) -> list[str]:
    folder = os.path.join(root, "10_sks dog")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    tiles = [Image.fromarray(rng.integers(0, 256, (512, 768, 3), dtype=np.uint8)) for _ in range(4)]
    paths = []
    for index in range(count):
        if index % 2:
            path = os.path.join(folder, f"{index:05d}.jpg")
            tiles[index % 4].save(path, quality=90)
        else:
            path = os.path.join(folder, f"{index:05d}.png")
            tiles[index % 4].save(path, compress_level=1)
        if index % 3 == 0:
            with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as handle:
                handle.write(f"sks dog, photo {index}\n")
        paths.append(path)
    return paths


def decode_all(paths: list[str]) -> None:
    for path in paths:
        with Image.open(path) as image:
            image.load()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        paths = build_folder(root, args.images)
        print(f"built {len(paths)} images in {time.perf_counter() - started:.1f} s")
        scans, decodes = [], []
        settings = BucketSettings().validated()
        for _ in range(args.rounds):
            started = time.perf_counter()
            dataset = load_dataset_folder(root)
            buckets = {select_bucket(settings, *entry.size).bucket for s in dataset.subsets for entry in s.images}
            scans.append(time.perf_counter() - started)
            started = time.perf_counter()
            decode_all(paths)
            decodes.append(time.perf_counter() - started)
        assert dataset.num_images == args.images and buckets
        scan, decode = statistics.median(scans), statistics.median(decodes)
        print(f"scan {scan * 1000:.0f} ms, full decode {decode * 1000:.0f} ms (medians of {args.rounds}); "
              f"ratio scan / decode = {scan / decode:.4f}")


if __name__ == "__main__":
    main()
