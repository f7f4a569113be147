"""Balancing regularization images against the training images, as kohya's DreamBoothDataset does.

kohya registers reg images in order (subset order, then file order), each counting its folder's repeats,
until the reg samples reach the training samples (images x repeats); images past that point are not used.
If one pass over all reg images falls short, further passes add one repeat per image, in the same order,
until they match. So reg samples end up equal to the training samples, overshooting by at most the last
image's repeats minus one, and an epoch holds about twice the training samples.
"""

from __future__ import annotations

from typing import Hashable


def balanced_reg_repeats(train_samples: int, reg_images: list[tuple[Hashable, int]]) -> dict[Hashable, int]:
    """{image key: repeats} for the reg images that are used; `reg_images` is [(key, folder repeats)] in order."""
    used: dict[Hashable, int] = {}
    if not reg_images or train_samples <= 0:
        return used
    total = 0
    for key, repeats in reg_images:                    # first pass: each image with its folder's repeats
        used[key] = repeats
        total += repeats
        if total >= train_samples:
            return used
    while True:                                        # short: one more repeat per image, in order
        for key, _ in reg_images:
            used[key] += 1
            total += 1
            if total >= train_samples:
                return used
