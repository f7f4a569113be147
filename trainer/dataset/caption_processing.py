"""kohya's per-step caption processing (BaseDataset.process_caption), seeded per sample, not by one stream.

In kohya's order: prefix and suffix; whole-caption dropout (a rate, or every N epochs); then, when shuffling
or tag dropout is on, the caption is split into tags (comma-separated pieces, not CLIP tokens): the first
`keep_tokens` tags, or the part before `keep_tokens_separator`, stay fixed in front (and a part after a second
separator stays fixed at the end), the rest are shuffled and each dropped with `caption_tag_dropout_rate`;
the tags are joined with the separator the caption used (kohya joined with ", " whatever the separator,
kohya-ss/sd-scripts#1304); `secondary_separator` groups move and drop as one tag and become the separator.

Every random choice comes from a generator seeded by (seed, epoch, draw index in the epoch), so a run split
over processes, or resumed mid-epoch, processes the same captions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import DatasetError


@dataclass(frozen=True)
class CaptionOptions:
    """One subset's caption settings (kohya's names and defaults)."""

    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    caption_separator: str = ","
    secondary_separator: str = ""
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    caption_prefix: str = ""
    caption_suffix: str = ""

    @property
    def processes_tags(self) -> bool:
        return self.shuffle_caption or self.caption_tag_dropout_rate > 0

    @property
    def is_random(self) -> bool:
        """True when the caption can differ from step to step (so it cannot be encoded once up front)."""
        return (self.processes_tags or self.caption_dropout_rate > 0 or self.caption_dropout_every_n_epochs > 0)

    def checked(self) -> "CaptionOptions":
        """These options, or a DatasetError naming every bad one."""
        found = self.problems()
        if found:
            raise DatasetError("Caption settings: " + "; ".join(found) + ".")
        return self

    def problems(self) -> list[str]:
        found = []
        for name in ("caption_dropout_rate", "caption_tag_dropout_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                found.append(f"{name} is {getattr(self, name)}; it is a share between 0 and 1")
        if self.keep_tokens < 0 or self.caption_dropout_every_n_epochs < 0:
            found.append("keep_tokens and caption_dropout_every_n_epochs must be 0 or more")
        if not self.caption_separator:
            found.append("caption_separator is empty; kohya's is ','")
        return found


def sample_random(seed: int, epoch: int, draw: int) -> random.Random:
    """The generator for one draw of one sample; a str seed is hashed with SHA-512, the same in every process."""
    return random.Random(f"lora-trainer-caption:{seed}:{epoch}:{draw}")


def split_tags(text: str, separator: str) -> list[str]:
    """Tags, stripped; empty ones ("a, , b") are dropped, where kohya keeps and re-joins them."""
    return [tag.strip() for tag in text.split(separator) if tag.strip()]


def process_caption(caption: str, options: CaptionOptions, rng: random.Random, epoch: int) -> str:
    """The caption as this step trains on it; `epoch` is 1-based, as kohya counts it for dropout."""
    if options.caption_prefix:
        caption = f"{options.caption_prefix} {caption}"
    if options.caption_suffix:
        caption = f"{caption} {options.caption_suffix}"
    if options.caption_dropout_rate > 0 and rng.random() < options.caption_dropout_rate:
        return ""
    if options.caption_dropout_every_n_epochs > 0 and epoch % options.caption_dropout_every_n_epochs == 0:
        return ""
    separator = options.caption_separator
    joiner = f"{separator} "
    keep_separator = options.keep_tokens_separator
    if options.processes_tags:
        if keep_separator and keep_separator in caption:
            # kohya splits once, then once more: further separators stay inside the fixed suffix
            front, flexible = caption.split(keep_separator, 1)
            flexible, back = flexible.split(keep_separator, 1) if keep_separator in flexible else (flexible, "")
            fixed, flex, fixed_suffix = (split_tags(front, separator), split_tags(flexible, separator),
                                         split_tags(back, separator))
        else:
            tags = split_tags(caption, separator)
            fixed, flex, fixed_suffix = tags[:options.keep_tokens], tags[options.keep_tokens:], []
        if options.shuffle_caption:
            rng.shuffle(flex)
        if options.caption_tag_dropout_rate > 0:
            flex = [tag for tag in flex if rng.random() >= options.caption_tag_dropout_rate]
        caption = joiner.join(fixed + flex + fixed_suffix)
    elif keep_separator and keep_separator in caption:
        # nothing moves, but the separator itself must not reach the text encoder (kohya leaves it in)
        caption = joiner.join(part.strip() for part in caption.split(keep_separator) if part.strip())
    if options.secondary_separator:
        caption = caption.replace(options.secondary_separator, separator)
    return caption
