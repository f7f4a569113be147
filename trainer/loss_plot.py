"""The loss graph drawn with PIL alone (no plotting library in ComfyUI's environment).

With learning rates given, a second panel under the loss shows the scheduled lr and, for optimizers that find
their own step (DAdaptation, Prodigy: d * lr; Adafactor's relative step), the effective lr with its peak
marked, so the kohya_ss guide's advice "read the curve, take a third of the peak" can be followed.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

LOSS_RAW, LOSS_SMOOTH = (150, 190, 235), (20, 60, 160)
LR_SCHEDULED, LR_EFFECTIVE = (230, 140, 30), (30, 150, 60)
VALIDATION = (200, 30, 30)


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _aligned(values, steps: int) -> list[float]:
    """A per-step series as long as the loss's: one recorded for fewer steps (a run resumed from a state that
    did not keep it) covers the last steps, NaN before."""
    values = list(values)[-steps:] if steps else list(values)
    return [math.nan] * (steps - len(values)) + values


def _finite(values) -> list[float]:
    return [v for v in values if math.isfinite(v)]


class _Panel:
    """A plotting rectangle with a value range and a step range."""

    def __init__(self, draw, box: tuple[int, int, int, int], low: float, high: float, steps: int):
        self.draw, (self.left, self.top, self.right, self.bottom) = draw, box
        if high - low < 1e-12 * max(1.0, abs(high)):
            low, high = (low - 0.5, high + 0.5) if abs(high) >= 1e-6 else (0.0, max(2 * high, 1e-12))
        self.low, self.high, self.steps = low, high, steps
        draw.rectangle(box, outline=(160, 160, 160))

    def point(self, i: int, value: float) -> tuple[float, float]:
        x = self.left + (self.right - self.left) * (i / max(1, self.steps - 1))
        y = self.bottom - (self.bottom - self.top) * ((value - self.low) / (self.high - self.low))
        return x, y

    def line(self, values: list[float], fill, width: int = 1) -> None:
        points = [self.point(i, v) for i, v in enumerate(values) if math.isfinite(v)]
        if len(points) > 1:
            self.draw.line(points, fill=fill, width=width)

    def y_labels(self, number_format: str) -> None:
        for fraction in (0.0, 0.5, 1.0):
            value = self.low + (self.high - self.low) * fraction
            y = self.bottom - (self.bottom - self.top) * fraction
            self.draw.text((4, y - 6), format(value, number_format), fill="black")


def draw_loss_plot(losses: list[float], width: int = 768, height: int = 384, title: str = "loss",
                   learning_rates: list[float] | None = None,
                   effective_learning_rates: list[float] | None = None,
                   validation_losses: list[tuple[int, float]] | None = None) -> Image.Image:
    """Raw per-step loss in light blue, its moving average in dark blue, the validation loss at the steps it was
    taken (`validation_losses`: (step, loss)) in red; with `learning_rates` (per step), a learning-rate panel
    below: the scheduled lr in orange and `effective_learning_rates` in green where they differ from the
    scheduled ones. The image grows by the lr panel's height."""
    steps = len(losses)
    lrs = _aligned(learning_rates or [], steps)
    effective = _aligned(effective_learning_rates or [], steps)
    shows_effective = any(math.isfinite(e) and not math.isclose(e, s, rel_tol=1e-9, abs_tol=0.0)
                          for e, s in zip(effective, lrs))
    lr_height = (height * 2) // 3 if learning_rates or effective_learning_rates else 0
    image = Image.new("RGB", (width, height + lr_height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 64, width - 16, 28, height - 36
    finite = _finite(losses)
    if not finite:
        draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
        draw.text((left + 8, top + 8), "no finite loss values", fill="black")
        return image
    validation = [(step, value) for step, value in (validation_losses or []) if math.isfinite(value)]
    values = finite + [value for _, value in validation]
    panel = _Panel(draw, (left, top, right, bottom), min(values), max(values), steps)
    panel.line(losses, LOSS_RAW)
    panel.line(moving_average(finite, max(1, steps // 20)), LOSS_SMOOTH, width=2)
    points = [panel.point(step - 1, value) for step, value in validation]
    if len(points) > 1:
        draw.line(points, fill=VALIDATION, width=2)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=VALIDATION)
    panel.y_labels(".4g")
    draw.text((left, bottom + 8), "1", fill="black")
    draw.text((right - 40, bottom + 8), f"{steps}", fill="black")
    draw.text(((left + right) // 2 - 12, bottom + 8), "step", fill="black")
    caption = f"{title}: last {finite[-1]:.4g}, mean {np.mean(finite):.4g}"
    if validation:
        caption += f"; validation (red) last {validation[-1][1]:.4g}, best {min(v for _, v in validation):.4g}"
    draw.text((left, 8), caption, fill="black")
    if lr_height:
        _draw_lr_panel(draw, (left, height + 28, right, height + lr_height - 36), lrs,
                       effective if shows_effective else [], steps)
    return image


def _draw_lr_panel(draw, box, lrs: list[float], effective: list[float], loss_steps: int) -> None:
    """The y axis is the effective lr's when it is shown (the curve to read); the scheduled lr is then drawn
    scaled to the same height, its own peak named in the caption."""
    steps = max(loss_steps, len(lrs), len(effective))
    scheduled_peak = max(_finite(lrs), default=0.0)
    if not effective:
        panel = _Panel(draw, box, 0.0, scheduled_peak or 1.0, steps)
        panel.line(lrs, LR_SCHEDULED, width=2)
        panel.y_labels(".3g")
        draw.text((box[0], box[1] - 20), f"learning rate (peak {scheduled_peak:.3g})", fill="black")
        draw.text(((box[0] + box[2]) // 2 - 12, box[3] + 8), "step", fill="black")
        return
    finite = [(v, i) for i, v in enumerate(effective) if math.isfinite(v)]
    peak, at = max(finite) if finite else (1.0, 0)
    panel = _Panel(draw, box, 0.0, peak or 1.0, steps)
    if scheduled_peak > 0:
        panel.line([v * (peak or 1.0) / scheduled_peak for v in lrs], LR_SCHEDULED, width=1)
    third = panel.point(0, peak / 3)[1]
    for x in range(box[0], box[2], 8):                    # a dashed line at a third of the peak
        draw.line([(x, third), (min(x + 4, box[2]), third)], fill=LR_EFFECTIVE, width=1)
    panel.line(effective, LR_EFFECTIVE, width=2)
    if finite:
        x, y = panel.point(at, peak)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=LR_EFFECTIVE, width=2)
    panel.y_labels(".3g")
    last = finite[-1][0] if finite else float("nan")
    draw.text((box[0], box[1] - 20), f"effective lr (green): peak {peak:.3g} at step {at + 1}, a third of it "
              f"{peak / 3:.3g} (dashed), last {last:.3g}; scheduled lr (orange, scaled): peak {scheduled_peak:.3g}",
              fill="black")
    draw.text(((box[0] + box[2]) // 2 - 12, box[3] + 8), "step", fill="black")


def image_to_comfy_tensor(image: Image.Image):
    """PIL RGB -> ComfyUI IMAGE tensor [1, H, W, 3] in 0..1."""
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)
