"""The loss graph: loss alone, or with the scheduled and the effective learning rate under it."""

from __future__ import annotations

import numpy as np

from trainer.loss_plot import LR_EFFECTIVE, LR_SCHEDULED, draw_loss_plot, image_to_comfy_tensor

LOSSES = [1.0 / (1 + 0.05 * i) for i in range(100)]
SCHEDULED = [min(1.0, i / 10) for i in range(100)]
EFFECTIVE = [lr * 1e-4 * (1 + np.tanh((i - 40) / 10)) for i, lr in enumerate(SCHEDULED)]


def colour_count(image, colour) -> int:
    pixels = np.asarray(image)
    return int(np.all(pixels == np.array(colour, dtype=np.uint8), axis=-1).sum())


def test_loss_alone_keeps_the_size_asked_for():
    image = draw_loss_plot(LOSSES)
    assert image.size == (768, 384) and colour_count(image, LR_SCHEDULED) == 0
    assert image_to_comfy_tensor(image).shape == (1, 384, 768, 3)


def test_learning_rates_get_a_panel_and_the_effective_lr_shows_only_where_it_differs():
    plain = draw_loss_plot(LOSSES, learning_rates=[1e-4] * 100, effective_learning_rates=[1e-4] * 100)
    assert plain.size == (768, 384 + 256)
    assert colour_count(plain, LR_SCHEDULED) > 100 and colour_count(plain, LR_EFFECTIVE) == 0
    adaptive = draw_loss_plot(LOSSES, learning_rates=SCHEDULED, effective_learning_rates=EFFECTIVE)
    assert colour_count(adaptive, LR_EFFECTIVE) > 100          # d * lr drawn on its own scale, with its peak


def test_series_shorter_than_the_loss_cover_the_last_steps():
    image = draw_loss_plot(LOSSES, learning_rates=SCHEDULED, effective_learning_rates=EFFECTIVE[60:])
    assert colour_count(image, LR_EFFECTIVE) > 50
    assert draw_loss_plot([float("nan")] * 3, learning_rates=[1.0] * 3).size == (768, 640)
