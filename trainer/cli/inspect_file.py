"""`python -m trainer inspect FILE.safetensors`: what a LoRA file holds (modules, algorithm, ranks, alphas, the
metadata that matters) and whether every module is a kohya name of the model family it names: against kohya's
own names (tests/reference/, generated from sd-scripts), and, where ComfyUI is found, against the key map of
ComfyUI's LoraLoader for that family."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import safetensors

from ..errors import ConfigError
from ..families import FAMILIES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE_FILES = {"sd_v1": "sd15", "sd_v2": "sd2", "sdxl_base_v1-0": "sdxl"}
SHOWN_METADATA = ("ss_output_name", "ss_base_model_version", "modelspec.architecture", "ss_network_module",
                  "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_steps", "ss_epoch",
                  "ss_learning_rate", "ss_text_encoder_lr", "ss_optimizer", "ss_lr_scheduler", "ss_resolution",
                  "ss_sd_model_name", "ss_training_comment", "modelspec.implementation_version")
# key suffix -> the file kind it marks (kohya / LyCORIS key layouts)
KIND_MARKERS = {"lora_down.weight": "lora", "hada_w1_a": "loha", "lokr_w1": "lokr", "lokr_w1_a": "lokr",
                "dora_scale": "dora", "lora_A.weight": "peft"}
SHOWN_UNKNOWN = 10


@dataclass
class Inspection:
    path: str
    modules: dict[str, dict[str, tuple]] = field(default_factory=dict)     # module -> {suffix: shape}
    alphas: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    all_kohya: bool | None = None          # None: not checked
    comfy_takes_all: bool | None = None


def read_file(path: str) -> Inspection:
    if not os.path.isfile(path):
        raise ConfigError(f"{path} is not a file.")
    result = Inspection(path)
    try:
        with safetensors.safe_open(path, "pt") as handle:
            result.metadata = dict(handle.metadata() or {})
            for key in handle.keys():
                module, _, suffix = key.partition(".")
                result.modules.setdefault(module, {})[suffix] = tuple(handle.get_slice(key).get_shape())
                if suffix == "alpha":
                    result.alphas[module] = float(handle.get_tensor(key).float())
    except (OSError, ValueError, safetensors.SafetensorError) as exc:
        raise ConfigError(f"{path} is not a readable safetensors file ({exc}).") from None
    return result


def module_kind(suffixes: dict) -> str:
    kinds = {kind for marker, kind in KIND_MARKERS.items() if marker in suffixes}
    return "+".join(sorted(kinds)) or "unknown"


def module_rank(suffixes: dict) -> int | None:
    for key, axis in (("lora_down.weight", 0), ("hada_w1_b", 0), ("lokr_w2_a", 1), ("lokr_w1_a", 1)):
        if key in suffixes:
            return suffixes[key][axis]
    return None


def family_of(inspection: Inspection) -> str | None:
    version = inspection.metadata.get("ss_base_model_version", "")
    if version in FAMILIES:
        return version
    names = inspection.modules
    if any(name.startswith(("lora_te1_", "lora_te2_")) or "_input_blocks_" in name for name in names):
        return "sdxl_base_v1-0"
    return "sd_v1" if any(name.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_te_"))
                          for name in names) else None


def kohya_reference(family: str) -> set[str] | None:
    """kohya's module names for a family (UNet with LoCon's, and text encoders), or None without the files."""
    stem = REFERENCE_FILES[family]
    names = set()
    for folder in (os.environ.get("REFERENCE_DIR", ""), os.path.join(REPO_ROOT, "tests", "reference")):
        files = [os.path.join(folder, f"{stem}_unet_lora_keys.txt"), os.path.join(folder, f"{stem}_te_lora_keys.txt")]
        if folder and all(os.path.isfile(name) for name in files):
            for name in files:
                with open(name, encoding="ascii") as handle:
                    names.update(line.split("\t", 1)[0] for line in handle if line.strip())
            return names
    return None


def check_names(result: Inspection, family: str | None, comfy_key_map) -> None:
    names = set(result.modules)
    if family is None:
        result.lines.append("names: the file names no model family (no ss_base_model_version) and its keys match "
                            "none; not checked")
        return
    title = FAMILIES[family].title
    reference = kohya_reference(family)
    if reference is None:
        result.lines.append("kohya names: reference lists not found (tests/reference or $REFERENCE_DIR); not checked")
    else:
        unknown = sorted(names - reference)
        result.all_kohya = not unknown
        result.lines.append(f"kohya names: {len(names) - len(unknown)} of {len(names)} modules are kohya's names for "
                            f"{title}" + ("" if unknown else " (all)"))
        result.lines += [f"  not kohya's: {name}" for name in unknown[:SHOWN_UNKNOWN]]
        if len(unknown) > SHOWN_UNKNOWN:
            result.lines.append(f"  ... and {len(unknown) - SHOWN_UNKNOWN} more")
    if comfy_key_map is None:
        return
    try:
        key_map = comfy_key_map(family)
    except Exception as exc:  # a check that could not run is said, never a reason to fail inspect
        result.lines.append(f"ComfyUI key map: not checked ({exc})")
        return
    left = sorted(names - key_map)
    result.comfy_takes_all = not left
    result.lines.append(f"ComfyUI LoraLoader ({title} key map): takes {len(names) - len(left)} of {len(names)} "
                        "modules" + ("" if left else " (all)"))
    result.lines += [f"  not loaded: {name}" for name in left[:SHOWN_UNKNOWN]]


def inspect_lora(path: str, comfy_key_map=None) -> Inspection:
    """`comfy_key_map(family)` -> module names ComfyUI maps, or None to skip that check."""
    result = read_file(path)
    modules = result.modules
    kinds = Counter(module_kind(suffixes) for suffixes in modules.values())
    parts = Counter(name.split("_")[1] if name.count("_") > 1 else name for name in modules)
    ranks = Counter(module_rank(suffixes) for suffixes in modules.values())
    alphas = Counter(result.alphas.values())
    size = os.path.getsize(path)
    result.lines += [
        f"{path}: {sum(len(s) for s in modules.values())} tensors, {len(modules)} modules, {size / 1024:.1f} KiB",
        "kinds: " + ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common()),
        "parts: " + ", ".join(f"{part} x{count}" for part, count in sorted(parts.items())),
        "ranks: " + ", ".join(f"{rank} x{count}" for rank, count in sorted(ranks.items(), key=lambda i: str(i[0]))),
        "alphas: " + (", ".join(f"{alpha:g} x{count}" for alpha, count in sorted(alphas.items())) or "none"),
    ]
    network = result.metadata.get("ss_network_module")
    if network:
        result.lines.append(f"algorithm: {network}" + (f" {result.metadata.get('ss_network_args')}"
                                                        if result.metadata.get("ss_network_args") else ""))
    missing_alpha = [name for name, suffixes in modules.items() if "alpha" not in suffixes]
    if missing_alpha:
        result.lines.append(f"warning: {len(missing_alpha)} module(s) without .alpha (loaders then take alpha = rank)")
    shown = [f"  {key}: {result.metadata[key]}" for key in SHOWN_METADATA if key in result.metadata]
    result.lines += ([f"metadata ({len(result.metadata)} keys):"] + shown) if result.metadata else ["metadata: none"]
    check_names(result, family_of(result), comfy_key_map)
    return result
