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


def make_messy_folder(root: str) -> dict[str, list[str]]:
    """A dataset folder with what real folders hold among good images; returns what each part should become.

    Keys: "good" (images that must train), "skipped_at_scan" / "skipped_at_cache" (file names the dataset or
    the cache must skip, naming them), and the caption cases.
    """
    import io

    good = os.path.join(root, "4_sks dog")
    os.makedirs(good, exist_ok=True)
    write_image(os.path.join(good, "a.png"), (64, 64), 1)
    write_image(os.path.join(good, "B.JPG"), (64, 96), 2)
    with open(os.path.join(good, "a.txt"), "wb") as handle:
        handle.write("\ufeffa photo of sks dog\r\nsecond line\r\n".encode("utf-8"))      # BOM and CRLF
    write_image(os.path.join(good, "latin.png"), (64, 64), 3)
    with open(os.path.join(good, "latin.txt"), "wb") as handle:
        handle.write("sks dog in a caf\xe9".encode("latin-1"))                          # not UTF-8
    write_image(os.path.join(good, "empty caption.png"), (64, 64), 4)
    open(os.path.join(good, "empty caption.txt"), "w").close()
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))                                   # fully transparent red
    rgba.save(os.path.join(good, "transparent.png"))
    Image.new("L", (64, 64), 128).save(os.path.join(good, "gray.png"))
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(os.path.join(good, "sixteen.png"))
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(os.path.join(good, "cmyk.jpg"))
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((0, 0, 255), (0, 255, 0))]
    frames[0].save(os.path.join(good, "animated.png"), save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6                                                                      # rotate 90 degrees
    Image.new("RGB", (96, 64), (10, 20, 30)).save(os.path.join(good, "rotated.jpg"), exif=exif)
    os.symlink(os.path.join(good, "a.png"), os.path.join(good, "linked.png"))

    # bad files among the good ones
    open(os.path.join(good, "zero.png"), "w").close()
    with open(os.path.join(good, "fake.jpg"), "w") as handle:
        handle.write("this is not a jpeg")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    with open(os.path.join(good, "truncated.png"), "wb") as handle:
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])                  # header fine, data cut
    os.symlink(os.path.join(good, "gone.png"), os.path.join(good, "broken link.png"))
    with open(os.path.join(good, ".DS_Store"), "wb") as handle:
        handle.write(b"\x00\x01")
    write_image(os.path.join(good, "._a.png"), (8, 8))                                  # macOS resource fork
    os.makedirs(os.path.join(good, "nested"), exist_ok=True)
    write_image(os.path.join(good, "nested", "deep.png"), (64, 64))

    unicode_folder = os.path.join(root, "2_café chien")
    os.makedirs(unicode_folder, exist_ok=True)
    write_image(os.path.join(unicode_folder, "photo 1 é.png"), (64, 64), 6)
    os.makedirs(os.path.join(root, "0_zero repeats"), exist_ok=True)
    write_image(os.path.join(root, "0_zero repeats", "x.png"), (64, 64), 7)
    os.makedirs(os.path.join(root, "notes"), exist_ok=True)
    only_bad = os.path.join(root, "3_only bad")
    os.makedirs(only_bad, exist_ok=True)
    open(os.path.join(only_bad, "zero.png"), "w").close()
    return {
        "good": ["a.png", "B.JPG", "latin.png", "empty caption.png", "transparent.png", "gray.png", "sixteen.png",
                 "cmyk.jpg", "animated.png", "rotated.jpg", "linked.png", "truncated.png", "photo 1 é.png"],
        "skipped_at_scan": ["zero.png", "fake.jpg", "broken link.png", "nested", "0_zero repeats", "3_only bad"],
        "skipped_at_cache": ["truncated.png"],
    }


def run_gpu_script_smoke(out_dir: str, backend: str, env: dict | None = None):
    """`bash benchmarks/gpu.sh --smoke --backend <backend>` with this Python, on the CPU (no GPU visible); the
    finished process and the Markdown table it wrote."""
    import subprocess
    import sys

    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, PYTHON=sys.executable, OUT=out_dir, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                       **(env or {}))
    completed = subprocess.run(["bash", "benchmarks/gpu.sh", "--smoke", "--backend", backend], cwd=repo_root,
                               env=environment, capture_output=True, text=True, timeout=600)
    table = os.path.join(out_dir, "gpu_train_speed.md")
    text = open(table, encoding="utf-8").read() if os.path.isfile(table) else ""
    return completed, text


def markdown_rows(text: str) -> dict[str, list[str]]:
    """A Markdown table's body rows by their first cell (the header row and the separator left out)."""
    rows = [[cell.strip() for cell in line.strip()[1:-1].split(" | ")] for line in text.splitlines()
            if line.startswith("| ")]
    return {cells[0]: cells[1:] for cells in rows[1:]}
