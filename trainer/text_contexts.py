"""The text-encoder contexts a training step conditions on, one per sample in the batch.

Captions that cannot change between steps are encoded once, before training, and the text encoder can
leave the device. Captions that change (shuffled, dropped, tag dropout: caption_processing.py) are encoded
when a step draws them, with the most recent ones kept, as kohya does without cached text-encoder outputs.
When the text encoder trains (its LoRA modules are attached), every caption is encoded at every step, with
gradients, and nothing is kept.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from .conditioning import TextConditioning
from .dataset.caption_processing import process_caption, sample_random
from .interfaces import CaptionEncoder

RECENT_CONTEXTS = 256          # changing captions kept on the device (a few MB each at most)


def as_conditioning(encoded, device: torch.device, keep_graph: bool = False) -> TextConditioning:
    """An encoder's answer (a context, or a TextConditioning with SDXL's pooled embedding) on `device`, float32;
    detached unless the text encoder trains."""
    encoded = encoded if isinstance(encoded, TextConditioning) else TextConditioning(encoded)

    def moved(tensor):
        if tensor is None:
            return None
        tensor = tensor.to(device, torch.float32)
        return tensor if keep_graph else tensor.detach().clone()

    return TextConditioning(moved(encoded.context), moved(encoded.pooled))


def batch_context(contexts: list[torch.Tensor]) -> torch.Tensor:
    """Stack [1, L_i, D] contexts; different lengths (long captions) are tiled to a common length, which
    cross-attention reads exactly as the untiled context (the repeated keys and values weigh the same)."""
    lengths = {c.shape[1] for c in contexts}
    if len(lengths) > 1:
        common = math.lcm(*lengths)
        contexts = [c.repeat(1, common // c.shape[1], 1) for c in contexts]
    return torch.cat(contexts, dim=0)


def fixed_caption(sample) -> str | None:
    """The caption a sample always trains on, or None when its options make it change from step to step."""
    options = sample.caption_options
    if options.is_random:
        return None
    return process_caption(sample.caption, options, sample_random(0, 0, 0), epoch=1)


class CaptionContexts:
    def __init__(self, encoder: CaptionEncoder, samples, device: torch.device, seed: int,
                 encoder_trains: bool = False):
        self.encoder, self.device, self.seed = encoder, device, seed
        self.encoder_trains = encoder_trains
        # each distinct (caption, options) once, up front: the training step only looks its answer up
        self.fixed_text = {(s.caption, s.caption_options): fixed_caption(s) for s in samples}
        self.changing = any(text is None for text in self.fixed_text.values())
        self.fixed: dict[str, TextConditioning] = {}
        self.recent: OrderedDict[str, TextConditioning] = OrderedDict()
        if encoder_trains:
            return
        with torch.no_grad():
            for caption in dict.fromkeys(c for c in self.fixed_text.values() if c is not None):
                self.fixed[caption] = self._encode(caption)

    def _encode(self, caption: str) -> TextConditioning:
        return as_conditioning(self.encoder.encode(caption), self.device)

    def caption_for(self, sample, epoch: int, draw: int) -> str:
        """What `sample` trains on as draw number `draw` of `epoch` (0-based, as the loop counts)."""
        fixed = self.fixed_text.get((sample.caption, sample.caption_options))
        if fixed is not None:
            return fixed
        return process_caption(sample.caption, sample.caption_options, sample_random(self.seed, epoch, draw),
                               epoch + 1)

    @property
    def needs_encoder(self) -> bool:
        """Whether the text encoder is still used once training starts."""
        return self.changing or self.encoder_trains

    def context(self, caption: str) -> TextConditioning:
        if self.encoder_trains:
            return as_conditioning(self.encoder.encode(caption), self.device, keep_graph=True)
        if caption in self.fixed:
            return self.fixed[caption]
        if caption in self.recent:
            self.recent.move_to_end(caption)
            return self.recent[caption]
        with torch.no_grad():
            hidden = self._encode(caption)
        self.recent[caption] = hidden
        if len(self.recent) > RECENT_CONTEXTS:
            self.recent.popitem(last=False)
        return hidden

    def batch(self, captions: list[str]) -> TextConditioning:
        return joined([self.context(caption) for caption in captions])

    def groups(self, captions: list[str], tile: bool = True) -> list[tuple[list[int], TextConditioning]]:
        """The batch's text as (sample indices, conditioning) groups, one forward each: a single group with
        `tile` (contexts of other lengths tiled, see batch_context), else one group per context length, for
        models whose text tokens join the image tokens in attention (Flux, SD3, Qwen-Image, Wan), where a
        repeated caption is another caption."""
        encoded = [self.context(caption) for caption in captions]
        if tile:
            return [(list(range(len(encoded))), joined(encoded))]
        by_length: dict[int, list[int]] = {}
        for index, item in enumerate(encoded):
            by_length.setdefault(item.context.shape[1], []).append(index)
        return [(indices, joined([encoded[i] for i in indices])) for indices in by_length.values()]


def joined(encoded: list[TextConditioning]) -> TextConditioning:
    pooled = [item.pooled for item in encoded]
    return TextConditioning(batch_context([item.context for item in encoded]),
                            None if pooled[0] is None else torch.cat(pooled, dim=0))
