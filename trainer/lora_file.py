"""The saved LoRA file: kohya keys, kohya's ss_* / modelspec metadata, hashes, atomic writes, safe names."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
from dataclasses import dataclass

import safetensors.torch
import torch

from . import __version__
from .atomic_files import write_atomic
from .errors import SaveError
from .families import family_by_key
from .paths import checked_lora_name as checked_file_name, is_inside

SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainedLora:
    """What Train hands to Save Safetensors (TRAINED_LORA): fp32 tensors under kohya keys plus metadata."""

    run_name: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    steps: int
    epoch: int

    @property
    def module_names(self) -> list[str]:
        return sorted({key.split(".", 1)[0] for key in self.tensors})


def new_session_id() -> str:
    return str(uuid.uuid4().int % 2**31)


def model_spec(base_model_version: str, title: str, resolution: tuple[int, int], prediction_type: str,
               date: datetime.datetime) -> dict[str, str]:
    """kohya's modelspec keys for a LoRA (sai_model_spec 1.0.1). Flow-matching models have no prediction type
    (kohya writes none for Flux; for SD3 it writes "epsilon", which an SD3 LoRA is not)."""
    family = family_by_key(base_model_version)
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": family.architecture(prediction_type),
        "modelspec.implementation": family.implementation,
        "modelspec.implementation_version": f"comfyui-lora-trainer/{__version__}",
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.date": date.isoformat(timespec="seconds"),
    }
    if prediction_type != "flow":
        spec["modelspec.prediction_type"] = "v" if prediction_type == "v_prediction" else "epsilon"
    return spec


def with_save_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """Add kohya's sshs_model_hash / sshs_legacy_hash (sd-webui-additional-networks' hashes).

    Both are taken over an in-memory serialisation whose header holds only the ss_* keys; the model
    hash covers the tensor bytes after the header, so it does not change with the metadata.
    """
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    blob = safetensors.torch.save(tensors, ss_only)
    header_length = int.from_bytes(blob[:8], "little")
    model_hash = hashlib.sha256(blob[8 + header_length:]).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return {**metadata, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash}


def unused_path(folder: str, name: str, suffix: str = ".safetensors") -> str:
    """`folder/name+suffix`, or `name_2`, `name_3`, ... when taken: never silently overwrite."""
    base = os.path.join(folder, checked_file_name(name))
    if not is_inside(os.path.dirname(base), folder):      # a sub-folder that is a link to elsewhere
        raise SaveError(f"The file name {name!r} resolves outside {folder} (a sub-folder there is a link to "
                        f"{os.path.realpath(os.path.dirname(base))}); choose another name.")
    candidate, counter = base + suffix, 1
    while os.path.lexists(candidate):       # a dangling link is taken too: never replace what is there
        counter += 1
        candidate = f"{base}_{counter}{suffix}"
    return candidate


def save_lora(lora: TrainedLora, folder: str, name: str, precision: str = "fp16",
              extra_metadata: dict[str, str] | None = None) -> str:
    """Save under `folder` (numbering the name if taken) in `precision`; returns the written path.

    `extra_metadata` (what only the saving node knows: the base model's name and hashes, a comment, the
    workflow) joins the run's metadata before the sshs_* hashes are taken, as kohya orders it.
    """
    if precision not in SAVE_DTYPES:
        raise SaveError(f"Save precision {precision!r} is unknown; choose one of {', '.join(SAVE_DTYPES)}.")
    dtype = SAVE_DTYPES[precision]
    tensors = {key: value.to(dtype).contiguous() for key, value in lora.tensors.items()}
    metadata = {**lora.metadata, **(extra_metadata or {})}
    metadata = with_save_hashes(tensors, metadata)
    path = unused_path(folder, name)
    try:
        write_atomic(path, safetensors.torch.save(tensors, metadata))
    except OSError as exc:
        raise SaveError(f"Could not write {path}: {exc.strerror or exc}. Check that the folder is writable "
                        "and the disk has room.") from None
    return path


def checkpoint_hashes(path: str) -> dict[str, str]:
    """kohya's base-model keys for a checkpoint file: its name, the old A1111 hash (sha256 of 64 KiB at 1 MiB,
    8 hex digits) and the full-file sha256 (A1111's new hash)."""
    full = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(0x100000)
        legacy = hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]
        handle.seek(0)
        for block in iter(lambda: handle.read(1 << 24), b""):
            full.update(block)
    return {"ss_sd_model_name": os.path.basename(path), "ss_sd_model_hash": legacy,
            "ss_new_sd_model_hash": full.hexdigest()}


def read_metadata(path: str) -> dict[str, str]:
    with safetensors.safe_open(path, "pt") as handle:
        return dict(handle.metadata() or {})


def json_text(value) -> str:
    return json.dumps(value, ensure_ascii=False)
