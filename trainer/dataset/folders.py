"""Reading a dataset folder in kohya's DreamBooth layout, and saying exactly what was found.

    my_dataset/            <- the folder you name
      10_sks dog/          <- N_name: N repeats per epoch, "sks dog" is the caption when an image has none
        001.png
        001.txt            <- caption: first line of <stem> + caption extension
      5_style/
        ...

Only direct sub-folders whose name starts with an integer and `_` are read (kohya's
`generate_dreambooth_subsets_config_by_subdirs`); images are not searched recursively. Scanning reads
image headers only. One bad file never stops the run: it is skipped and reported (`Dataset.skipped`);
only a folder with nothing trainable left is an error.

Symlinks are followed, as kohya's glob follows them: an image, or an N_name folder, may be a link to another
disk; reading it is what the user who made the link asked for, and the .npz cache goes beside each image
as the dataset folder shows it (through a linked N_name folder, into the folder it links to). Caption and
mask files are the image's path with another suffix, never a path of their own (trainer/paths.py checks
caption_extension).
"""

from __future__ import annotations

import dataclasses
import logging
import os

from ..errors import DatasetError
from ..paths import checked_caption_extension
from .caption_processing import CaptionOptions
from .captions import find_caption
from .images import UnreadableImage, is_mask_file, read_header
from .records import SHOWN_SKIPS, Dataset, ImageEntry, Skipped, Subset, check_unique_names

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

EXPECTED_LAYOUT = (
    "Expected layout (kohya):\n"
    "  <dataset folder>/\n"
    "    10_sks dog/          <- 10 = repeats per epoch, 'sks dog' = caption for images without one\n"
    "      image1.png\n"
    "      image1.txt         <- optional caption file\n"
    "    5_another concept/\n"
    "      ..."
)


def parse_repeat_folder_name(name: str) -> tuple[int, str] | None:
    """'10_sks dog' -> (10, 'sks dog'); None when the name does not start with an integer."""
    head, sep, rest = name.partition("_")
    try:
        repeats = int(head)
    except ValueError:
        return None
    return repeats, rest if sep else ""


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def list_images(folder: str, skipped: list[Skipped] | None = None, masks_beside: bool = False) -> list[str]:
    """Image files directly in `folder`, any extension case, sorted (kohya's glob_images).

    Hidden files are ignored; sub-folders are not searched (as kohya) and, with `skipped`, reported. With
    `masks_beside` (alpha_mask), `<stem>_mask.png` beside an image is its loss mask, not a training image.
    """
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        if skipped is not None:
            skipped.append(Skipped(folder, f"the folder cannot be read ({exc.strerror or exc})"))
        return []
    for entry in entries:
        if is_hidden(entry.name):
            continue
        if entry.is_dir():
            if skipped is not None:
                skipped.append(Skipped(entry.path, "a folder inside a repeat folder; kohya does not search "
                                                   "sub-folders, so move its images up or into their own N_name"))
            continue
        if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            found.append(entry.path)
    if masks_beside:
        stems = {os.path.splitext(path)[0] for path in found}
        found = [path for path in found if not is_mask_file(path, stems)]
    return sorted(found)


def scan_image(path: str) -> tuple[int, int] | Skipped:
    """The image's trained size from its header, or why it cannot be used."""
    if os.path.islink(path) and not os.path.exists(path):
        return Skipped(path, f"a link to {os.readlink(path)}, which is gone")
    try:
        if os.path.getsize(path) == 0:
            return Skipped(path, "empty file (0 bytes)")
    except OSError as exc:
        return Skipped(path, f"cannot be read ({exc.strerror or exc})")
    try:
        return read_header(path).size
    except UnreadableImage as exc:
        return Skipped(path, exc.reason)


def scan_subset(path: str, repeats: int, class_tokens: str, caption_extension: str, skipped: list[Skipped],
                warnings: list[str], is_reg: bool = False, masks_beside: bool = False) -> Subset | None:
    """One N_name folder; None (with the reason in `skipped`) when nothing in it can be trained."""
    entries, empty = [], 0
    for image_path in list_images(path, skipped, masks_beside):
        scanned = scan_image(image_path)
        if isinstance(scanned, Skipped):
            skipped.append(scanned)
            continue
        try:
            caption_file = find_caption(image_path, caption_extension)
        except OSError as exc:
            warnings.append(f"caption of {image_path} cannot be read ({exc.strerror or exc}); captioned "
                            f"'{class_tokens}' instead")
            caption_file = None
        if caption_file is None:
            entries.append(ImageEntry(image_path, class_tokens, False, scanned))
            continue
        if caption_file.warning:
            warnings.append(caption_file.warning)
        empty += caption_file.text == ""
        entries.append(ImageEntry(image_path, caption_file.text, True, scanned))
    if not entries:
        skipped.append(Skipped(path, f"no usable images ({', '.join(IMAGE_EXTENSIONS)}) in this folder"))
        return None
    return Subset(path, repeats, class_tokens, tuple(entries), is_reg, empty, caption_extension)


def load_dataset_folder(root: str, caption_extension: str = ".txt", regularization_folder: str = "",
                        repeats: str = "", caption_options: CaptionOptions | None = None, flip_aug: bool = False,
                        alpha_mask: bool = False, random_crop: bool = False, color_aug: bool = False) -> Dataset:
    """Scan `root` (and a regularization folder in the same layout) for `N_name` sub-folders.

    `repeats` overrides folders' repeat counts ('10_sks dog=5, style=2', see parse_repeats_override); it also
    admits a folder without an N_ prefix. `caption_options`, `flip_aug` and `alpha_mask` apply to every subset
    found here (kohya's subset options). DatasetError, naming the folder, when nothing in it is trainable.
    """
    caption_options = (caption_options or CaptionOptions()).checked()
    caption_extension = checked_caption_extension(caption_extension)    # a suffix, never a path
    overrides = parse_repeats_override(repeats)
    used: set[str] = set()
    subsets, unprefixed, skipped, warnings = scan_root(root, caption_extension, False, overrides, used, alpha_mask)
    if regularization_folder:
        reg_subsets, reg_unprefixed, reg_skipped, reg_warnings = scan_root(regularization_folder, caption_extension,
                                                                           True, overrides, used, alpha_mask)
        subsets += reg_subsets
        unprefixed += [os.path.join(regularization_folder, name) for name in reg_unprefixed]
        skipped += reg_skipped
        warnings += reg_warnings
    unknown = sorted(set(overrides) - used)
    if unknown:
        names = ", ".join(sorted({subset.name for subset in subsets} | set(unprefixed)))
        raise DatasetError(f"repeats names {', '.join(unknown)}, which is no sub-folder here; the sub-folders are: "
                           f"{names}.")
    check_unique_names(subsets)
    subsets = [dataclasses.replace(subset, caption_options=caption_options, flip_aug=flip_aug, alpha_mask=alpha_mask,
                                   random_crop=random_crop, color_aug=color_aug) for subset in subsets]
    for item in skipped:
        logger.warning("lora-trainer dataset: skipped %s", item.describe())
    for warning in warnings:
        logger.warning("lora-trainer dataset: %s", warning)
    return Dataset(os.path.abspath(root), caption_extension, tuple(subsets), tuple(unprefixed), tuple(skipped),
                   tuple(warnings))


def folder_repeats(name: str, overrides: dict[str, int], used: set[str]) -> tuple[int, str] | None:
    """(repeats, class tokens) of a sub-folder, with an override by full name or class tokens first."""
    parsed = parse_repeat_folder_name(name)
    class_tokens = parsed[1] if parsed else name
    for key in (name, class_tokens):
        if key in overrides:
            used.add(key)
            return overrides[key], class_tokens
    return parsed


def scan_root(root: str, caption_extension: str, is_reg: bool, overrides: dict[str, int] | None = None,
              used: set[str] | None = None, masks_beside: bool = False):
    """(subsets, unprefixed folder names, skipped, warnings) of one folder; DatasetError if none is usable."""
    overrides, used = overrides or {}, used if used is not None else set()
    kind = "Regularization folder" if is_reg else "Dataset folder"
    if not os.path.exists(root):
        raise DatasetError(f"{kind} {root} does not exist.\n{EXPECTED_LAYOUT}")
    if not os.path.isdir(root):
        raise DatasetError(f"{kind} path {root} is a file, not a folder.\n{EXPECTED_LAYOUT}")
    try:
        entries = sorted((e for e in os.scandir(root) if not is_hidden(e.name)), key=lambda e: e.name)
    except PermissionError:
        raise DatasetError(f"{kind} {root} cannot be read (no permission).") from None
    if not entries:
        raise DatasetError(f"{kind} {root} is empty.\n{EXPECTED_LAYOUT}")

    subsets, unprefixed, skipped, warnings = [], [], [], []
    for folder in (e for e in entries if e.is_dir()):
        parsed = folder_repeats(folder.name, overrides, used)
        if parsed is None:
            unprefixed.append(folder.name)
            continue
        repeats, class_tokens = parsed
        if repeats < 1:
            skipped.append(Skipped(folder.path, f"{repeats} repeats: the number before '_' must be 1 or more"))
            continue
        subset = scan_subset(folder.path, repeats, class_tokens, caption_extension, skipped, warnings, is_reg,
                             masks_beside)
        if subset is not None:
            subsets.append(subset)
    if not subsets:
        raise DatasetError(no_subset_message(root, entries, unprefixed, skipped, kind))
    return subsets, unprefixed, skipped, warnings


def parse_repeats_override(text: str) -> dict[str, int]:
    """'sks dog=5, style = 2' (commas or new lines) -> {'sks dog': 5, 'style': 2}; ConfigError-free: DatasetError."""
    overrides = {}
    for part in text.replace("\n", ",").split(","):
        if not part.strip():
            continue
        name, sep, value = part.rpartition("=")
        try:
            repeats = int(value)
        except ValueError:
            repeats = 0
        if not sep or not name.strip() or repeats < 1:
            raise DatasetError(f"Cannot read {part.strip()!r} in repeats: write 'folder=N' with N of 1 or more, "
                               "e.g. '10_sks dog=5, style=2' (a folder by its full name or the part after N_).")
        overrides[name.strip()] = repeats
    return overrides


def no_subset_message(root: str, entries, unprefixed: list[str], skipped: list[Skipped],
                      kind: str = "Dataset folder") -> str:
    loose = [e.name for e in entries if e.is_file()][:3]
    if skipped and not loose:
        reasons = "\n".join(f"  {item.describe()}" for item in skipped[:SHOWN_SKIPS])
        return f"{kind} {root} has nothing to train on:\n{reasons}\n{EXPECTED_LAYOUT}"
    hint = ""
    if loose:
        hint = (f" It holds files directly ({', '.join(loose)}...): kohya reads only sub-folders, so move "
                "them into a sub-folder such as '10_mysubject'.")
    elif unprefixed:
        hint = (f" Its sub-folders ({', '.join(unprefixed[:3])}) do not start with a repeat count; rename one "
                f"to e.g. '10_{unprefixed[0]}'.")
    return f"{kind} {root} has no 'N_name' sub-folder.{hint}\n{EXPECTED_LAYOUT}"
