"""Reading kohya's reference data (its own module names and bucket numbers): ../shared/reference or tests/reference."""

from __future__ import annotations

import ast
import json
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_DIRS_TEXT = "$REFERENCE_DIR, ../shared/reference or tests/reference"


def reference_folder(file_name: str = "buckets.json") -> str:
    """The first folder that has `file_name`: $REFERENCE_DIR, then ../shared/reference beside the checkout (CI
    lays shared/ next to the clone), then tests/reference (the committed copies and the files made by
    scripts/make_kohya_reference.py)."""
    candidates = [os.environ.get("REFERENCE_DIR", ""), os.path.join(REPO_ROOT, "..", "shared", "reference"),
                  os.path.join(REPO_ROOT, "tests", "reference")]
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, file_name)):
            return os.path.abspath(candidate)
    raise FileNotFoundError(f"kohya reference file {file_name} not found in {REFERENCE_DIRS_TEXT}")


def kohya_modules(model: str, with_conv: bool = False) -> dict[str, tuple[str, tuple]]:
    """{lora name: (layer type, constructor shape)} in kohya's module order (tests/reference/README.md).

    `model`: "sd15", "sd2" or "sdxl" for the UNet (`<model>_unet_lora_keys.txt`; `with_conv` adds the
    LoCon-only rows), or "sd15_te", "sd2_te", "sdxl_te" for the text encoders (`<model>_lora_keys.txt`; SDXL's
    file holds both, `lora_te1_` then `lora_te2_`).
    """
    file_name = f"{model}_lora_keys.txt" if model.endswith("_te") else f"{model}_unet_lora_keys.txt"
    modules = {}
    with open(os.path.join(reference_folder(file_name), file_name), encoding="ascii") as handle:
        for line in handle:
            name, layer_type, shape, when = line.rstrip("\n").split("\t")
            if with_conv or when == "default":
                modules[name] = (layer_type, ast.literal_eval(shape))
    return modules


def lora_shapes(layer_type: str, shape: tuple, rank: int) -> tuple[tuple, tuple]:
    """(lora_down shape, lora_up shape) for a reference row, per reference/README.md."""
    if layer_type == "Linear":
        fan_in, fan_out = shape
        return (rank, fan_in), (fan_out, rank)
    fan_in, fan_out, kernel = shape
    return (rank, fan_in, *kernel), (fan_out, rank, 1, 1)


def bucket_cases() -> list[dict]:
    with open(os.path.join(reference_folder(), "buckets.json"), encoding="utf-8") as handle:
        return json.load(handle)["cases"]
