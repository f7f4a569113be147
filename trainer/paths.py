"""Names and folders that come from a user's settings, checked before anything opens or writes them.

Every setting that becomes a path (a dataset folder, a caption extension, a run or LoRA file name) goes
through one of these first, so a typo or a crafted value gets an error that says what, where and how to fix
it, never a file outside the folder it belongs in, and never an OS or torch stack trace.

Symlinks are followed where the user made them: a dataset folder, or an image inside one, may be a link to
another disk (kohya follows them too, and a local user may read any file they can anyway). What is refused
is a *name* that climbs out of the folder it is meant to stay in (`..`, an absolute path, a separator).
"""

from __future__ import annotations

import os
import re

from .errors import ConfigError, DatasetError, SaveError

MAX_PATH_BYTES = 4096          # Linux's PATH_MAX; longer paths fail in the OS with an unhelpful message
MAX_NAME_BYTES = 200           # one file name: 255 on common file systems, less room for kohya's
                               # "-step00000100", a "_12" numbering and ".safetensors"
MAX_EXTENSION_LENGTH = 32
UNSAFE_CHARACTERS = re.compile(r'[<>:"|?*\\/\x00-\x1f\x7f]')   # refused by Windows, or separators
# Windows refuses these as file names with any extension; refused everywhere so a workflow travels
WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                    *(f"lpt{i}" for i in range(1, 10))}
LATENT_CACHE_FOLDER = "cache"   # output/lora-trainer/cache/: the disk latent cache of read-only image folders
RESERVED_RUN_NAMES = {LATENT_CACHE_FOLDER}


def encoded_length(text: str) -> int:
    """Bytes the OS sees; a string that cannot be encoded at all counts as too long."""
    try:
        return len(os.fsencode(text))
    except UnicodeError:
        return MAX_PATH_BYTES + 1


def name_problem(part: str) -> str | None:
    """Why `part` cannot be one file or folder name on every system we run on, or None when it can."""
    if part in (".", ".."):
        return f"{part!r} is not a name but a step {'up' if part == '..' else 'in place'} in a path"
    bad = sorted(set(UNSAFE_CHARACTERS.findall(part)))
    if bad:
        shown = " ".join("NUL" if c == "\x00" else repr(c) for c in bad)
        return f"it contains {shown}, which file names cannot hold (or which separate folders)"
    if part.split(".")[0].strip().lower() in WINDOWS_RESERVED:
        return f"{part.split('.')[0]!r} is a device name on Windows, which no file can be called"
    if part != part.rstrip(". "):
        return "it ends in a dot or a space, which Windows drops (two names would be one file)"
    if part.startswith("."):
        return "it starts with '.', which hides the file (and .partial- names are files still being written)"
    if encoded_length(part) > MAX_NAME_BYTES:
        return f"it is {encoded_length(part)} bytes long; file names here can have at most {MAX_NAME_BYTES}"
    return None


def without_safetensors_suffix(name: str) -> str:
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name


def checked_lora_name(name: str) -> str:
    """A LoRA file name relative to the loras folder, for Save Safetensors: sub-folders allowed.

    Sub-folders are allowed because ComfyUI's LoraLoader lists `people/anna.safetensors` and ComfyUI's own
    savers take `folder/name` prefixes, so users expect it; every part is one plain name, so the result stays
    under the loras folder (unused_path checks it again after resolving symlinks). `\\` counts as `/`, so a
    name typed on Windows means the same everywhere.
    """
    cleaned = without_safetensors_suffix(name.strip().replace("\\", "/"))
    if os.path.isabs(name.strip()) or cleaned.startswith("/") or re.match(r"^[A-Za-z]:", cleaned):
        raise SaveError(f"The file name {name!r} is an absolute path; the LoRA is saved inside ComfyUI's loras "
                        "folder, so type a name such as 'my_character' or 'characters/my_character'.")
    parts = [part for part in cleaned.split("/") if part not in ("", ".")]
    if not parts:
        raise SaveError("The LoRA file name is empty; type a name such as 'my_character'.")
    if ".." in parts:
        raise SaveError(f"The file name {name!r} climbs out of the loras folder with '..'; use a plain name such "
                        "as 'my_character' or a sub-folder such as 'characters/my_character'.")
    for part in parts:
        problem = name_problem(part)
        if problem:
            raise SaveError(f"The file name {name!r} cannot be used: {part!r}: {problem}. Use letters, digits, "
                            "spaces, '-' and '_', e.g. 'my_character'.")
    return "/".join(parts)


def checked_run_name(name: str, setting: str = "output_name") -> str:
    """A run's name (Train's output_name, resume_from): one plain name, no sub-folder.

    The name is the folder output/lora-trainer/<name>/ (states, run log) and the stem of every file the run
    writes into the loras folder, and resume_from finds a run by it: one name keeps all of that in one place,
    as kohya's output_name is a bare name (its folder is output_dir). Save Safetensors can still put the
    final file in a sub-folder.
    """
    cleaned = without_safetensors_suffix(name.strip())
    if not cleaned:
        raise ConfigError(f"{setting} is empty; type a name such as 'my_character'.")
    if "/" in cleaned or "\\" in cleaned or cleaned == "..":
        raise ConfigError(f"{setting} {name!r} is a path; it must be a plain name such as 'my_character' "
                          "(the run's files go into ComfyUI's loras folder and output/lora-trainer/<name>/; to "
                          "save the final LoRA into a sub-folder, set Save Safetensors' file_name).")
    problem = name_problem(cleaned)
    if problem:
        raise ConfigError(f"{setting} {name!r} cannot be used: {problem}. Use letters, digits, spaces, '-' and "
                          "'_', e.g. 'my_character'.")
    if cleaned.lower() in RESERVED_RUN_NAMES:
        raise ConfigError(f"{setting} {name!r} is taken by the trainer itself (output/lora-trainer/{cleaned}/ "
                          "holds cached latents); choose another name.")
    return cleaned


def checked_caption_extension(extension: str) -> str:
    """The caption file's suffix, '.txt' when empty and with its leading dot added ('caption' -> '.caption').

    It is appended to each image's name, so a separator or '..' in it could name a file in another folder
    (on Windows, where `a.png./../x` is read as `x`, in any folder); a suffix is all kohya means by it.
    """
    cleaned = extension.strip() or ".txt"
    cleaned = cleaned if cleaned.startswith(".") else "." + cleaned
    problem = None
    if "/" in cleaned or "\\" in cleaned or ".." in cleaned:
        problem = "holds a path ('/', '\\' or '..'), so captions could be read from outside the image's folder"
    elif UNSAFE_CHARACTERS.search(cleaned):
        problem = "holds a character that file names cannot have"
    elif len(cleaned) > MAX_EXTENSION_LENGTH or cleaned.rstrip(". ") != cleaned:
        problem = f"is not a plain suffix of at most {MAX_EXTENSION_LENGTH} characters"
    if problem:
        raise DatasetError(f"caption_extension {extension!r} {problem}. Give the suffix of the caption files "
                           "beside the images, such as .txt or .caption.")
    return cleaned


def path_text_problem(text: str) -> str | None:
    """Why a typed path cannot reach the file system at all (a NUL byte, too long), or None."""
    if "\x00" in text:
        return "it contains a NUL character (\\x00), which no path can hold; retype it"
    if encoded_length(text) > MAX_PATH_BYTES:
        return f"it is longer than {MAX_PATH_BYTES} bytes"
    long_part = next((part for part in re.split(r"[\\/]", text) if encoded_length(part) > 255), None)
    if long_part is not None:
        return f"its part {long_part[:40]!r}... is longer than the 255 bytes a file or folder name can have"
    return None


def is_inside(path: str, folder: str, follow_links: bool = True) -> bool:
    """Whether `path` is `folder` or lies under it: with symlinks resolved, or (`follow_links` off) by the path
    as written, `..` resolved."""
    where = os.path.realpath if follow_links else os.path.abspath
    real_folder = where(folder)
    try:
        return os.path.commonpath([real_folder, where(path)]) == real_folder
    except ValueError:                 # Windows: another drive
        return False


def resolve_folder(text: str, base: str, kind: str = "Dataset folder",
                   base_name: str = "the input folder") -> str:
    """A folder the user typed: absolute, or relative to `base` (`base_name` says what base is), with `~`
    expanded and symlinks resolved. DatasetError, naming the resolved path and `base`, when it cannot be used.

    A relative path must stay inside `base` as written: `..` that climbs out of it is refused, because a
    relative name reads as "in the input folder"; a folder elsewhere is given by its absolute path. A symlink
    inside `base` that points elsewhere is followed: the user made it.
    """
    cleaned = text.strip().strip('"').strip("'").strip()
    base = os.path.abspath(base)
    if not cleaned:
        raise DatasetError(f"No {kind.lower()} given. Type a folder path: absolute, or relative to {base_name} "
                           f"({base}).")
    problem = path_text_problem(cleaned)
    if problem:
        raise DatasetError(f"{kind} {cleaned[:80]!r} cannot be used: {problem}.")
    expanded = os.path.expanduser(cleaned)
    if not os.path.isabs(expanded):
        joined = os.path.normpath(os.path.join(base, expanded))
        if not is_inside(joined, base, follow_links=False):
            raise DatasetError(f"{kind} {cleaned!r} climbs out of {base_name} ({base}) with '..'. A relative path "
                               f"is read inside {base_name}; to use a folder elsewhere, type its absolute path "
                               f"({os.path.realpath(joined)}).")
        expanded = joined
    resolved = os.path.realpath(expanded)
    typed = "" if resolved == cleaned else f" (typed as {cleaned!r}; a relative path is read from {base_name}, {base})"
    if not os.path.exists(resolved):
        raise DatasetError(f"{kind} {resolved} does not exist{typed}. Create it, or type the path of the folder "
                           "that holds your N_name sub-folders.")
    if not os.path.isdir(resolved):
        raise DatasetError(f"{kind} {resolved} is a file, not a folder{typed}. Type the folder that holds your "
                           "N_name sub-folders.")
    return resolved
