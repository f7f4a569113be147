"""kohya sd-scripts' own LoRA network code (`networks/lora.py`) as a test oracle; dev only.

The checkout is $SD_SCRIPTS_PATH, default ~/sd-scripts (`git clone https://github.com/kohya-ss/sd-scripts`;
checked at commit 48d368fa). It is imported as it is, with the libraries of the venv running the tests:
kohya pins transformers 4.54 / diffusers 0.32, but its modules also import with transformers 5.x / diffusers
0.42, and need einops, accelerate, opencv and torchvision at import time. Tests skip with
`missing_reason()` where the checkout, or one of those, is absent (CI has no checkout).

What kohya's code is used for:

- `load_and_apply(path, unet, text_encoders)`: kohya's `create_network_from_weights` on the file, then
  `apply_to` and `load_state_dict(weights, strict=False)`, as kohya's `gen_img.py` applies `--network_weights`.
  The result lists every key of the file kohya's network did not consume and every tensor it expects that
  the file lacks. kohya's modules then patch the wrapped layers' `forward` (multiplier 1.0 by default), so
  calling the UNet gives kohya's output; apply to a copy of the model.
- `merged_deltas(path, unet, text_encoders)`: kohya's `LoRAInfModule.merge_to` (its merge math) into zero
  weights, one delta per module, one module at a time. Only the layer being merged is materialised (on the
  CPU, zeros), so this works on a UNet built on the meta device: `sdxl_unet_on_meta()` is kohya's full-size
  `SdxlUNet2DConditionModel` that way (its widths are fixed; there is no tiny instance), which is what
  `create_network_from_weights` needs to treat a file as SDXL (SAI module names, diffusers names converted).
  Forward passes of the full-size SDXL UNet are not run (CPU time and memory); the per-module deltas and the
  consumed keys are compared instead.
- `kohya_training_modules(unet, text_encoders, lora_dim, alpha, conv_dim, conv_alpha)`: the LoRA modules, with
  their rank and alpha, that kohya's `LoRANetwork` creates on a model for training (without `conv_dim`:
  transformer blocks only; with it: ResNet / resampling blocks too).

Quirks handled here:

- transformers 5.x dropped the `text_model` level of `CLIPTextModel`; kohya names modules by their path from
  the text encoder's root and, with its pinned transformers 4.x, writes `lora_te_text_model_encoder_...`.
  `transformers4_path` puts such a text encoder under a holder module as `.text_model` so kohya sees the 4.x
  path (the layers are the same objects).
- `LoRANetwork.__init__` extends the class list `UNET_TARGET_REPLACE_MODULE` in place whenever it creates conv
  modules (always when created from weights), which would leak into every later network of the process; the
  list is restored after each network made here.
- kohya's `library/utils.py:setup_logging` installs a root logging handler at import unless the root logger
  has one; a NullHandler is held on the root logger while importing so the test process's logging is left
  alone.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Collection, Iterator

import torch
from torch import nn

CHECKED_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
# imported by name (importlib) so the packaging test does not take kohya's packages for PyPI ones
KOHYA_MODULES = {"lora": "networks.lora", "model_util": "library.model_util",
                 "sdxl_model_util": "library.sdxl_model_util", "original_unet": "library.original_unet",
                 "sdxl_original_unet": "library.sdxl_original_unet"}
LORA_KEY_SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")

_loaded: dict[str, SimpleNamespace] = {}


def sd_scripts_path() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("SD_SCRIPTS_PATH") or "~/sd-scripts"))


def missing_reason(path: str | None = None) -> str | None:
    """None when kohya's code imports from the checkout; else why not, and how to get it."""
    path = path or sd_scripts_path()
    if not os.path.isfile(os.path.join(path, "networks", "lora.py")):
        return (f"kohya sd-scripts not found at {path} (dev-only oracle): git clone "
                f"https://github.com/kohya-ss/sd-scripts there (checked at {CHECKED_COMMIT[:8]}) or set "
                "SD_SCRIPTS_PATH")
    try:
        modules(path)
    except Exception as error:           # an import error anywhere in kohya's modules or their dependencies
        return f"kohya sd-scripts at {path} does not import here: {type(error).__name__}: {error}"
    return None


def modules(path: str | None = None) -> SimpleNamespace:
    """kohya's modules (lora, model_util, sdxl_model_util, original_unet, sdxl_original_unet) from `path`."""
    path = path or sd_scripts_path()
    if path in _loaded:
        return _loaded[path]
    if _loaded:
        raise RuntimeError(f"kohya sd-scripts already imported from {next(iter(_loaded))}, not {path}")
    for top in ("library", "networks"):
        already = sys.modules.get(top)
        if already is not None and not os.path.realpath(getattr(already, "__file__", "") or "").startswith(
                os.path.realpath(path)):
            raise ImportError(f"another package named {top!r} is already imported ({already})")
    if path not in sys.path:
        sys.path.append(path)            # appended: kohya's top-level names must not shadow anything
    holder = logging.NullHandler()
    logging.root.addHandler(holder)
    try:
        loaded = SimpleNamespace(**{key: importlib.import_module(name) for key, name in KOHYA_MODULES.items()})
    finally:
        logging.root.removeHandler(holder)
    where = os.path.realpath(loaded.lora.__file__)
    if not where.startswith(os.path.realpath(path) + os.sep):
        raise ImportError(f"networks.lora came from {where}, not from {path}")
    _loaded[path] = loaded
    return loaded


def transformers4_path(text_encoder: nn.Module) -> nn.Module:
    """A transformers-5 CLIPTextModel under a holder as `.text_model`, the module path kohya names from."""
    if type(text_encoder).__name__ != "CLIPTextModel" or hasattr(text_encoder, "text_model"):
        return text_encoder
    holder = nn.Module()
    holder.text_model = text_encoder
    return holder


def text_encoder_list(text_encoders) -> list[nn.Module]:
    """kohya's text_encoder argument: a list; one encoder gets `lora_te_`, two get `lora_te1_` / `lora_te2_`."""
    if isinstance(text_encoders, nn.Module):
        text_encoders = [text_encoders]
    return [transformers4_path(encoder) for encoder in (text_encoders or [])]


@contextlib.contextmanager
def target_lists_restored(lora):
    """Undo LoRANetwork.__init__'s in-place extension of its class-level target list."""
    saved = list(lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE)
    try:
        yield
    finally:
        lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE[:] = saved


def kohya_training_modules(unet: nn.Module, text_encoders=(), lora_dim: int = 4, alpha: float = 1.0,
                           conv_dim: int | None = None,
                           conv_alpha: float | None = None) -> dict[str, tuple[int, float]]:
    """{name: (rank, alpha)} of the LoRA modules kohya's LoRANetwork creates for training with these
    --network_dim / --network_alpha / conv_dim / conv_alpha, text encoders first, in kohya's order.

    The LoRA modules are small and made on the CPU; the model may be on the meta device.
    """
    lora = modules().lora
    with target_lists_restored(lora):
        network = lora.LoRANetwork(text_encoder_list(text_encoders), unet, lora_dim=lora_dim, alpha=alpha,
                                   conv_lora_dim=conv_dim, conv_alpha=conv_alpha)
    return {module.lora_name: (module.lora_dim, float(module.alpha))
            for module in network.text_encoder_loras + network.unet_loras}


@dataclass
class KohyaLoad:
    network: nn.Module                                   # kohya's LoRANetwork, applied
    unused_keys: list[str] = field(default_factory=list)     # keys of the file kohya's network did not take
    missing_keys: list[str] = field(default_factory=list)    # tensors kohya's network expects, not in the file
    module_names: list[str] = field(default_factory=list)    # the modules kohya created from the file


def _network_from_file(path: str, unet: nn.Module, text_encoders, for_inference: bool):
    from safetensors.torch import load_file

    lora = modules().lora
    with target_lists_restored(lora):
        network, weights = lora.create_network_from_weights(1.0, path, None, text_encoders, unet,
                                                            weights_sd=load_file(path), for_inference=for_inference)
    return network, weights


def load_and_apply(path: str, unet: nn.Module, text_encoders=(), multiplier: float = 1.0) -> KohyaLoad:
    """kohya's loader on a LoRA file, applied to `unet` (and text encoders) in place: see the module docstring."""
    lora = modules().lora
    encoders = text_encoder_list(text_encoders)
    network, weights = _network_from_file(path, unet, encoders, for_inference=False)
    network.set_multiplier(multiplier)
    apply_text_encoder = any(key.startswith(lora.LoRANetwork.LORA_PREFIX_TEXT_ENCODER) for key in weights)
    apply_unet = any(key.startswith(lora.LoRANetwork.LORA_PREFIX_UNET) for key in weights)
    network.apply_to(encoders, unet, apply_text_encoder, apply_unet)
    info = network.load_state_dict(weights, strict=False)
    names = [module.lora_name for module in network.text_encoder_loras + network.unet_loras]
    return KohyaLoad(network, sorted(info.unexpected_keys), sorted(info.missing_keys), names)


def merged_deltas(path: str, unet: nn.Module, text_encoders=(),
                  only: Collection[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (kohya module name, the weight kohya's merge adds at multiplier 1.0), one module at a time, for
    every module kohya creates from the file (or those of them named in `only`).

    kohya's own `LoRAInfModule.merge_to` merges the file's tensors for the module into its layer, whose
    parameters are first made zeros on the CPU (float32): what the layer holds afterwards is kohya's delta.
    A layer that was on the meta device goes back to it after its module, so a full-size model on the meta
    device needs one layer's memory at a time. Layers elsewhere keep the delta: use a model built for this.
    The tensors for a module are selected as `LoRANetwork.merge_to` does (keys starting with its name), with
    the "." after the name required.
    """
    encoders = text_encoder_list(text_encoders)
    network, weights = _network_from_file(path, unet, encoders, for_inference=True)
    for module in network.text_encoder_loras + network.unet_loras:
        if only is not None and module.lora_name not in only:
            continue
        layer = module.org_module
        device = layer.weight.device
        with torch.no_grad():
            layer.to_empty(device="cpu", recurse=False)
            for tensor in list(layer.parameters(recurse=False)) + list(layer.buffers(recurse=False)):
                tensor.zero_()
        prefix = module.lora_name + "."
        module.merge_to({key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)},
                        torch.float32, "cpu")
        delta = layer.weight.detach().clone()
        if device.type == "meta":
            layer.to_empty(device="meta", recurse=False)       # free the layer again
        yield module.lora_name, delta


def sdxl_unet_on_meta() -> nn.Module:
    """kohya's own SDXL UNet (SAI module names), full size, on the meta device (no memory for weights)."""
    with torch.device("meta"):
        return modules().sdxl_original_unet.SdxlUNet2DConditionModel()


def kohya_functions(relative_path: str, names: tuple[str, ...], namespace: dict) -> dict:
    """kohya's own top-level functions `names` from one of its files, run in `namespace`, without importing the
    file (library/train_util.py imports much that a test machine needs not have: accelerate, imagesize...)."""
    import ast

    with open(os.path.join(sd_scripts_path(), relative_path), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {node.name for node in found}
    if missing:
        raise LookupError(f"{relative_path} has no {', '.join(sorted(missing))} at this sd-scripts commit")
    namespace = dict(namespace)
    exec(compile(ast.Module(body=found, type_ignores=[]), relative_path, "exec"), namespace)
    return {name: namespace[name] for name in names}


def training_metadata_keys() -> set[str]:
    """Every ss_* key kohya's train_network.py writes (read from its source)."""
    import re

    with open(os.path.join(sd_scripts_path(), "train_network.py"), encoding="utf-8") as handle:
        return set(re.findall(r'"(ss_[a-z0-9_]+)"', handle.read()))
