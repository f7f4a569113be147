"""Continuing from a LoRA file (ours or kohya's): its weights go into the same modules, or a clear error.

The network is built from the settings as usual, then each module takes the file's `lora_down` / `lora_up`
weights. What does not fit is named: a file for another algorithm (LoCon's convolution modules, LoHa's
`hada_*`, LoKr's `lokr_*`, DoRA's `dora_scale`), another model family (names this model does not have),
another rank or alpha.
"""

from __future__ import annotations

import os

import safetensors.torch
import torch

from ..errors import ConfigError
from .config import ALGORITHMS

# a key suffix that tells a file's algorithm, and the algorithm's name (as the node offers it where it does)
FILE_KINDS = {"hada_w1_a": ("loha", "LoHa"), "lokr_w1": ("lokr", "LoKr"), "lokr_w1_a": ("lokr", "LoKr"),
              "dora_scale": ("dora", "DoRA")}


def file_kind(tensors: dict[str, torch.Tensor]) -> tuple[str, str]:
    for suffix, kind in FILE_KINDS.items():
        if any(key.endswith("." + suffix) for key in tensors):
            return kind
    return "lora", "LoRA"


def read_lora_tensors(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise ConfigError(f"The LoRA to continue from, {path}, does not exist.")
    try:
        return safetensors.torch.load_file(path)
    except Exception as exc:  # a truncated or foreign file: say which, not where in safetensors it broke
        raise ConfigError(f"{path} cannot be read as a .safetensors LoRA ({exc}).") from None


def check_fits(tensors: dict[str, torch.Tensor], network, conv_names: set[str], source: str) -> None:
    """Raise ConfigError saying why `tensors` cannot continue `network`; `conv_names`: LoCon's extra modules."""
    kind, algorithm = file_kind(tensors)
    config = network.config
    if kind != config.file_kind:
        offered = [name for name, spec in ALGORITHMS.items() if spec.file_kind == kind]
        if kind == "dora":
            advice = "switch Configure LoRA's dora on (algorithm LoRA or LoCon) to continue it"
        elif offered:
            advice = f"set Configure LoRA's algorithm to {offered[0]}" + (" with dora off" if config.dora else "") + \
                " to continue it"
        else:
            advice = f"this version does not train {algorithm} yet"
        current = f"{config.algorithm} with DoRA" if config.dora else config.algorithm
        raise ConfigError(f"{source} is a {algorithm} file and this network is {current}; {advice}.")
    in_file = {key.split(".", 1)[0] for key in tensors}
    ours = set(network.lora_modules)
    extra, missing = sorted(in_file - ours), sorted(ours - in_file)
    if extra and set(extra) <= conv_names:
        raise ConfigError(f"{source} is a LoCon file (it has convolution modules such as {extra[0]}); set "
                          "Configure LoRA's algorithm to LoCon to continue it.")
    if missing and set(missing) <= conv_names:
        raise ConfigError(f"{source} is a plain LoRA file (no convolution modules such as {missing[0]}); set "
                          "Configure LoRA's algorithm to LoRA to continue it.")
    file_parts = {"text_encoder" if name.startswith("lora_te") else "unet" for name in in_file}
    file_train_on = "both" if len(file_parts) == 2 else next(iter(file_parts), config.train_on)
    if (extra or missing) and file_train_on != config.train_on:
        raise ConfigError(f"{source} has LoRA modules on the {file_train_on.replace('_', ' ')} and this network "
                          f"trains the {config.train_on.replace('_', ' ')}; set Configure LoRA's train to "
                          f"{file_train_on} to continue it.")
    if extra or missing:
        example = (extra or missing)[0]
        raise ConfigError(f"{source} was made for another model or part of it: {len(extra)} of its modules are not "
                          f"in this model and {len(missing)} of this model's are not in the file (e.g. {example}). "
                          "Continue it on the model family it was trained for.")
    for name, module in network.lora_modules.items():
        rank_key = module.rank_key
        ranked = tensors.get(f"{name}.{rank_key}") if rank_key else None
        if rank_key and ranked is None:
            raise ConfigError(f"{source} has no {name}.{rank_key}; it is not a kohya/LyCORIS file of this kind.")
        if ranked is None:                 # LoKr with full factors: shapes are checked when the weights load
            continue
        if ranked.shape[0] != module.rank:
            raise ConfigError(f"{source} has rank {ranked.shape[0]} at {name}, this network {module.rank}; set "
                              f"Configure LoRA's {'conv rank' if module.rank != network.config.rank else 'rank'} "
                              f"to {ranked.shape[0]} to continue it.")
        alpha = tensors.get(f"{name}.alpha")
        if alpha is not None and abs(float(alpha) - float(module.alpha)) > 1e-4 * max(1.0, float(module.alpha)):
            raise ConfigError(f"{source} has alpha {float(alpha):g} at {name}, this network {float(module.alpha):g}; "
                              "set Configure LoRA's alpha to the file's to continue it.")


def continue_from_file(network, path: str, conv_names: set[str]) -> None:
    """Load the file's weights into `network` (same modules, rank and alpha), or raise ConfigError."""
    source = os.path.basename(path)
    tensors = read_lora_tensors(path)
    check_fits(tensors, network, conv_names, source)
    network.load_kohya_state_dict(tensors)
