"""What a dataset is: its images, subsets (one per N_name folder or image source) and what was left out.

Built by folders.py (folders on disk) and from_images.py (images from the graph); read by the latent cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import DatasetError
from .buckets import Size
from .caption_processing import CaptionOptions
from .regularization import balanced_reg_repeats

SHOWN_SKIPS = 20          # the node lists this many skipped files, then a count


@dataclass(frozen=True)
class ImageEntry:
    path: str
    caption: str
    caption_from_file: bool
    size: Size = (0, 0)            # (width, height) from the header, after EXIF rotation
    pixels: object = field(default=None, repr=False, compare=False)   # [H, W, 3] uint8 for images from the graph


@dataclass(frozen=True)
class Skipped:
    """A file or folder left out of training, and why."""

    path: str
    reason: str

    def describe(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Subset:
    """One `N_name` folder."""

    folder: str
    repeats: int
    class_tokens: str
    images: tuple[ImageEntry, ...]
    is_reg: bool = False
    empty_captions: int = 0
    caption_extension: str = ".txt"
    caption_options: CaptionOptions = field(default_factory=CaptionOptions)
    flip_aug: bool = False         # kohya's flip_aug: each image cached mirrored too, one of the two per draw
    alpha_mask: bool = False       # kohya's alpha_mask: transparency (or <stem>_mask.png) weights the loss
    random_crop: bool = False      # kohya's random_crop / color_aug: asked for, but refused with cached latents
    color_aug: bool = False

    @property
    def name(self) -> str:
        return os.path.basename(self.folder)

    @property
    def captions_from_files(self) -> int:
        return sum(1 for image in self.images if image.caption_from_file)


@dataclass(frozen=True)
class Dataset:
    """Subsets from one or more folders (kohya's dataset_config subsets); `root` is the first folder."""

    root: str
    caption_extension: str
    subsets: tuple[Subset, ...]
    skipped_folders: tuple[str, ...] = field(default=())       # sub-folders without an N_ prefix
    skipped: tuple[Skipped, ...] = field(default=())           # files and folders left out, with the reason
    warnings: tuple[str, ...] = field(default=())              # used, but worth a look (legacy-encoded captions)

    @property
    def num_images(self) -> int:
        return sum(len(s.images) for s in self.subsets)

    @property
    def num_train_images(self) -> int:
        """kohya's num_train_images: images times repeats over the training subsets."""
        return sum(len(s.images) * s.repeats for s in self.subsets if not s.is_reg)

    @property
    def num_reg_images(self) -> int:
        """kohya's num_reg_images: images times repeats over the regularization subsets, before balancing."""
        return sum(len(s.images) * s.repeats for s in self.subsets if s.is_reg)

    def reg_balance(self) -> dict[str, int]:
        """{reg image path: repeats} after kohya's balancing against the training samples."""
        reg = [(image.path, subset.repeats) for subset in self.subsets if subset.is_reg for image in subset.images]
        return balanced_reg_repeats(self.num_train_images, reg)

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(os.path.dirname(subset.folder) for subset in self.subsets))

    def combined_with(self, other: "Dataset") -> "Dataset":
        """Both datasets' subsets in one run, each keeping its own repeats and caption settings."""
        subsets = self.subsets + other.subsets
        check_unique_names(subsets)
        return Dataset(self.root, self.caption_extension, subsets, self.skipped_folders + other.skipped_folders,
                       self.skipped + other.skipped, self.warnings + other.warnings)

    def describe(self) -> str:
        lines = [f"{', '.join(self.roots)}: {len(self.subsets)} folder(s), {self.num_images} image(s), "
                 f"{self.num_train_images} with repeats"]
        if self.num_reg_images:
            balance = self.reg_balance()
            lines.append(f"regularization: {sum(1 for s in self.subsets if s.is_reg for _ in s.images)} image(s), "
                         f"{self.num_reg_images} with repeats, balanced to {sum(balance.values())} sample(s) from "
                         f"{len(balance)} image(s) against {self.num_train_images} training sample(s)")
        for subset in self.subsets:
            missing = len(subset.images) - subset.captions_from_files
            options = describe_caption_options(subset.caption_options)
            line = (f"  {'reg ' if subset.is_reg else ''}{subset.name}: {len(subset.images)} image(s) x "
                    f"{subset.repeats} repeats, "
                    f"{subset.captions_from_files} {subset.caption_extension} caption(s)")
            if missing:
                line += f", {missing} captioned '{subset.class_tokens}' (no caption file)"
            if subset.empty_captions:
                line += f", {subset.empty_captions} empty caption file(s)"
            augment = [name for name in ("flip_aug", "alpha_mask") if getattr(subset, name)]
            lines.append(line + (f"; captions: {options}" if options else "")
                         + (f"; {', '.join(augment)}" if augment else ""))
        for name in self.skipped_folders:
            lines.append(f"  ignored folder (no N_ repeat prefix, e.g. '10_{name}'): {name}")
        lines.extend(describe_skips(self.skipped))
        lines.extend(f"  warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


def describe_caption_options(options: CaptionOptions) -> str:
    """The caption settings that differ from kohya's defaults, in kohya's names."""
    default = CaptionOptions()
    return ", ".join(f"{name}={getattr(options, name)!r}" for name in options.__dataclass_fields__
                     if getattr(options, name) != getattr(default, name))


def describe_skips(skipped: tuple[Skipped, ...] | list[Skipped]) -> list[str]:
    if not skipped:
        return []
    lines = [f"  skipped {len(skipped)}:"]
    lines.extend(f"    {item.describe()}" for item in skipped[:SHOWN_SKIPS])
    if len(skipped) > SHOWN_SKIPS:
        lines.append(f"    ... and {len(skipped) - SHOWN_SKIPS} more (all in the log)")
    return lines


def check_unique_names(subsets) -> None:
    names = [subset.name for subset in subsets]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DatasetError(f"Two dataset folders have a sub-folder named {', '.join(twice)}; kohya keys a run's "
                           "records (ss_dataset_dirs, tag counts) by sub-folder name, so rename one of them.")
