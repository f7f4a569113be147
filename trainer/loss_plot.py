"""A loss-curve picture drawn with PIL alone (no plotting library in ComfyUI's environment)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def draw_loss_plot(losses: list[float], width: int = 768, height: int = 384, title: str = "loss") -> Image.Image:
    """Raw per-step loss in light blue, its moving average in dark blue, with step and loss axes."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 64, width - 16, 28, height - 36
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    finite = [v for v in losses if math.isfinite(v)]
    if not finite:
        draw.text((left + 8, top + 8), "no finite loss values", fill="black")
        return image
    low, high = min(finite), max(finite)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    steps = len(losses)

    def point(i: int, value: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(1, steps - 1))
        y = bottom - (bottom - top) * ((value - low) / (high - low))
        return x, y

    raw = [point(i, v) for i, v in enumerate(losses) if math.isfinite(v)]
    if len(raw) > 1:
        draw.line(raw, fill=(150, 190, 235), width=1)
    smooth = moving_average(finite, max(1, steps // 20))
    if len(smooth) > 1:
        draw.line([point(i, v) for i, v in enumerate(smooth)], fill=(20, 60, 160), width=2)
    for fraction in (0.0, 0.5, 1.0):
        value = low + (high - low) * fraction
        y = bottom - (bottom - top) * fraction
        draw.text((4, y - 6), f"{value:.4g}", fill="black")
    draw.text((left, bottom + 8), "1", fill="black")
    draw.text((right - 40, bottom + 8), f"{steps}", fill="black")
    draw.text(((left + right) // 2 - 12, bottom + 8), "step", fill="black")
    draw.text((left, 8), f"{title}: last {finite[-1]:.4g}, mean {np.mean(finite):.4g}", fill="black")
    return image


def image_to_comfy_tensor(image: Image.Image):
    """PIL RGB -> ComfyUI IMAGE tensor [1, H, W, 3] in 0..1."""
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)
