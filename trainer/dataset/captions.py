"""Caption files beside the images, read as kohya reads them, and tolerant of real-world files.

kohya: the caption is the first line of `<image stem><caption extension>`; a stem of 5 or more `_` parts
(face-crop names `name_cx_cy_w_h`) also tries the stem without its last 4 parts; an image without a
caption file is captioned with its folder's class tokens. Beyond kohya: a UTF-8 byte-order mark and CRLF
line ends are fine, a file that is not UTF-8 is read in the likely legacy encoding (with a warning, where
kohya stops), and an empty file gives an empty caption.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# tried in order after UTF-8; latin-1 maps every byte, so reading never fails
LEGACY_ENCODINGS = ("cp1252", "latin-1")


@dataclass(frozen=True)
class CaptionFile:
    path: str
    text: str                 # the first line, stripped; "" for an empty file
    warning: str | None = None


def caption_candidates(image_path: str, caption_extension: str) -> list[str]:
    stem = os.path.splitext(image_path)[0]
    candidates = [stem + caption_extension]
    parts = os.path.basename(stem).split("_")
    if len(parts) >= 5:
        candidates.append(os.path.join(os.path.dirname(stem), "_".join(parts[:-4])) + caption_extension)
    return candidates


def decode_caption(data: bytes) -> tuple[str, str | None]:
    """(text, encoding used when it was not UTF-8)."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    for encoding in LEGACY_ENCODINGS:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte")


def read_caption_file(path: str) -> CaptionFile:
    """The first line of a caption file. OSError when it cannot be read at all."""
    with open(path, "rb") as handle:
        data = handle.read()
    text, legacy = decode_caption(data)
    lines = text.splitlines()                     # \n, \r\n and \r alike
    first = lines[0].strip() if lines else ""
    warning = None
    if legacy:
        warning = (f"{path} is not UTF-8; read it as {legacy}. If the caption looks wrong, re-save the file as "
                   "UTF-8 (captions in GBK or Shift-JIS, say, cannot be guessed).")
    return CaptionFile(path, first, warning)


def find_caption(image_path: str, caption_extension: str) -> CaptionFile | None:
    """The image's caption file, or None when it has none (then the folder's class tokens are used)."""
    for candidate in caption_candidates(image_path, caption_extension):
        if os.path.isfile(candidate):
            return read_caption_file(candidate)
    return None
