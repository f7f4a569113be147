"""Draws the demo's sample dataset (samples/demo_dataset/): simple shapes on gradients in two aspect ratios,
each with a .txt caption, in kohya's layout (`5_demo shapes/`). The committed files are what this makes;
tests/engine/test_cli_demo.py checks that they still match.

    python samples/make_demo_dataset.py [FOLDER]
"""

from __future__ import annotations

import os
import sys

from PIL import Image, ImageDraw

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_dataset")
SUBSET = "5_demo shapes"
SQUARE, WIDE = (128, 128), (192, 64)
# (file stem, size, shape, shape colour, gradient from, gradient to)
IMAGES = [
    ("circle_red", SQUARE, "circle", (220, 40, 40), (20, 30, 90), (70, 120, 200)),
    ("square_yellow", SQUARE, "square", (240, 200, 30), (30, 90, 40), (140, 200, 120)),
    ("triangle_green", SQUARE, "triangle", (40, 180, 70), (90, 20, 60), (230, 130, 160)),
    ("circle_white", WIDE, "circle", (245, 245, 245), (10, 10, 10), (90, 90, 110)),
    ("square_blue", WIDE, "square", (40, 80, 230), (200, 170, 100), (250, 240, 200)),
    ("triangle_orange", WIDE, "triangle", (250, 140, 20), (20, 60, 70), (60, 170, 180)),
]


def gradient(size: tuple[int, int], start: tuple[int, int, int], end: tuple[int, int, int]) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for x in range(width):
        share = x / max(1, width - 1)
        draw.line([(x, 0), (x, height - 1)], fill=tuple(round(a + (b - a) * share) for a, b in zip(start, end)))
    return image


def draw_shape(image: Image.Image, shape: str, colour: tuple[int, int, int]) -> None:
    width, height = image.size
    side = min(width, height) * 5 // 8
    left, top = (width - side) // 2, (height - side) // 2
    box = [left, top, left + side, top + side]
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(left + side // 2, top), (left, top + side), (left + side, top + side)], fill=colour)


def caption(stem: str, size: tuple[int, int]) -> str:
    shape, colour = stem.split("_")
    layout = "a square picture" if size == SQUARE else "a wide picture"
    return f"demo shapes, a {colour} {shape} on a gradient, {layout}"


def make_demo_dataset(folder: str = FOLDER) -> str:
    subset = os.path.join(folder, SUBSET)
    os.makedirs(subset, exist_ok=True)
    for stem, size, shape, colour, start, end in IMAGES:
        image = gradient(size, start, end)
        draw_shape(image, shape, colour)
        image.save(os.path.join(subset, stem + ".png"), optimize=True)
        with open(os.path.join(subset, stem + ".txt"), "w", encoding="utf-8", newline="\n") as handle:
            handle.write(caption(stem, size) + "\n")
    return folder


if __name__ == "__main__":
    print(make_demo_dataset(sys.argv[1] if len(sys.argv) > 1 else FOLDER))
