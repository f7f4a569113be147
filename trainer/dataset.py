"""Reading a dataset folder in kohya's DreamBooth layout.

    my_dataset/            <- the folder you name
      10_sks dog/          <- N_name: N repeats per epoch, "sks dog" is the caption when an image has none
        001.png
        001.txt            <- caption: first line of <stem> + caption extension
      5_style/
        ...

Only direct sub-folders whose name starts with an integer and `_` are read (kohya's
`generate_dreambooth_subsets_config_by_subdirs`); images are not searched recursively.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import DatasetError

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


@dataclass(frozen=True)
class ImageEntry:
    path: str
    caption: str
    caption_from_file: bool


@dataclass(frozen=True)
class Subset:
    """One `N_name` folder."""

    folder: str
    repeats: int
    class_tokens: str
    images: tuple[ImageEntry, ...]
    is_reg: bool = False

    @property
    def name(self) -> str:
        return os.path.basename(self.folder)


@dataclass(frozen=True)
class Dataset:
    root: str
    caption_extension: str
    subsets: tuple[Subset, ...]
    skipped_folders: tuple[str, ...] = field(default=())

    @property
    def num_images(self) -> int:
        return sum(len(s.images) for s in self.subsets)

    @property
    def num_train_images(self) -> int:
        """kohya's num_train_images: images times repeats over the training subsets."""
        return sum(len(s.images) * s.repeats for s in self.subsets if not s.is_reg)

    def describe(self) -> str:
        lines = [f"{self.root}: {len(self.subsets)} folder(s), {self.num_images} image(s), "
                 f"{self.num_train_images} with repeats"]
        for subset in self.subsets:
            captioned = sum(1 for image in subset.images if image.caption_from_file)
            lines.append(f"  {subset.name}: {len(subset.images)} image(s) x {subset.repeats} repeats, "
                         f"{captioned} with a {self.caption_extension} caption")
        for skipped in self.skipped_folders:
            lines.append(f"  ignored (no N_ prefix): {skipped}")
        return "\n".join(lines)


def parse_repeat_folder_name(name: str) -> tuple[int, str] | None:
    """'10_sks dog' -> (10, 'sks dog'); None when the name does not start with an integer."""
    head, sep, rest = name.partition("_")
    try:
        repeats = int(head)
    except ValueError:
        return None
    return repeats, rest if sep else ""


def list_images(folder: str) -> list[str]:
    """Image files directly in `folder`, any extension case, sorted (kohya's glob_images)."""
    found = []
    for entry in os.scandir(folder):
        if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            found.append(entry.path)
    return sorted(found)


def read_caption(image_path: str, caption_extension: str) -> str | None:
    """First line of the caption file beside the image, or None when there is none.

    Like kohya, a stem with 5 or more `_` parts (face-crop names `name_cx_cy_w_h`) also tries the
    stem without its last 4 parts.
    """
    stem = os.path.splitext(image_path)[0]
    candidates = [stem + caption_extension]
    parts = os.path.basename(stem).split("_")
    if len(parts) >= 5:
        candidates.append(os.path.join(os.path.dirname(stem), "_".join(parts[:-4])) + caption_extension)
    for candidate in candidates:
        if os.path.isfile(candidate):
            try:
                with open(candidate, encoding="utf-8") as handle:
                    lines = handle.read().splitlines()
            except UnicodeDecodeError as exc:
                raise DatasetError(f"Caption file {candidate} is not UTF-8 text ({exc.reason}). "
                                   "Save it as UTF-8.") from None
            first = lines[0].strip() if lines else ""
            if not first:
                raise DatasetError(f"Caption file {candidate} is empty. Write a caption into it, "
                                   "or delete it to use the folder name as the caption.")
            return first
    return None


def load_dataset_folder(root: str, caption_extension: str = ".txt") -> Dataset:
    """Scan `root` for `N_name` sub-folders; raise DatasetError naming the folder when unusable."""
    caption_extension = caption_extension.strip() or ".txt"
    if not caption_extension.startswith("."):
        caption_extension = "." + caption_extension
    if not os.path.exists(root):
        raise DatasetError(f"Dataset folder {root} does not exist.\n{EXPECTED_LAYOUT}")
    if not os.path.isdir(root):
        raise DatasetError(f"Dataset path {root} is a file, not a folder.\n{EXPECTED_LAYOUT}")

    entries = sorted(os.scandir(root), key=lambda e: e.name)
    subfolders = [e for e in entries if e.is_dir()]
    if not entries:
        raise DatasetError(f"Dataset folder {root} is empty.\n{EXPECTED_LAYOUT}")

    subsets, skipped = [], []
    for folder in subfolders:
        parsed = parse_repeat_folder_name(folder.name)
        if parsed is None:
            skipped.append(folder.name)
            continue
        repeats, class_tokens = parsed
        if repeats < 1:
            raise DatasetError(f"Folder {folder.path} asks for {repeats} repeats; the number before '_' "
                               "must be 1 or more.")
        images = list_images(folder.path)
        if not images:
            raise DatasetError(f"Folder {folder.path} has no images (.png, .jpg, .jpeg, .webp, .bmp).\n"
                               f"{EXPECTED_LAYOUT}")
        entries_for_subset = []
        for path in images:
            caption = read_caption(path, caption_extension)
            entries_for_subset.append(ImageEntry(path, caption if caption is not None else class_tokens,
                                                 caption is not None))
        subsets.append(Subset(folder.path, repeats, class_tokens, tuple(entries_for_subset)))

    if not subsets:
        loose = [e.name for e in entries if e.is_file()][:3]
        hint = ""
        if loose:
            hint = (f" It holds files directly ({', '.join(loose)}...): kohya reads only sub-folders, so move "
                    "them into a sub-folder such as '10_mysubject'.")
        elif skipped:
            hint = (f" Its sub-folders ({', '.join(skipped[:3])}) do not start with a repeat count; rename one "
                    f"to e.g. '10_{skipped[0]}'.")
        raise DatasetError(f"Dataset folder {root} has no 'N_name' sub-folder.{hint}\n{EXPECTED_LAYOUT}")
    return Dataset(os.path.abspath(root), caption_extension, tuple(subsets), tuple(skipped))
