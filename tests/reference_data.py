"""Reading ../shared/reference (kohya's own module names and bucket numbers)."""

from __future__ import annotations

import ast
import json
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_folder() -> str:
    """shared/reference beside the checkout (CI lays shared/ next to the clone), or REFERENCE_DIR."""
    candidates = [os.environ.get("REFERENCE_DIR", ""), os.path.join(REPO_ROOT, "..", "shared", "reference"),
                  os.path.join(REPO_ROOT, "tests", "reference")]
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, "buckets.json")):
            return os.path.abspath(candidate)
    raise FileNotFoundError("kohya reference data not found; set REFERENCE_DIR to the shared/reference folder")


def kohya_modules(model: str, with_conv: bool = False) -> dict[str, tuple[str, tuple]]:
    """{lora name: (layer type, constructor shape)} in kohya's module order."""
    modules = {}
    with open(os.path.join(reference_folder(), f"{model}_unet_lora_keys.txt"), encoding="ascii") as handle:
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
