"""kohya sd-scripts' own Flux.1 / SD3.5 code as a test oracle (flow-matching sigmas, DiT models); dev only.

The checkout is the one `tests/oracles/kohya_sd_scripts.py` uses ($SD_SCRIPTS_PATH, default ~/sd-scripts; checked
at commit 48d368fa), imported the same way (appended to sys.path, the test process's logging left alone). Tests
skip with `missing_reason()` where there is no checkout or kohya's modules do not import (CI has none).

What kohya's code is used for:

- `flux_noisy_model_input_and_timesteps(latents, noise, seed, **options)`: kohya's
  `library/flux_train_utils.py:get_noisy_model_input_and_timesteps(args, noise_scheduler, latents, noise, device,
  dtype)`, with `noise_scheduler` kohya's `FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
  shift=args.discrete_flow_shift)` as `flux_train_network.py:FluxNetworkTrainer.get_noise_scheduler` makes it,
  and `args` a namespace of kohya's own command-line defaults (`flux_args`) with `options` set on it. Returns
  kohya's (noisy_model_input, timesteps, sigmas): sigmas [B, 1, 1, 1], timesteps = 1000 sigmas.
- `sd3_noisy_model_input_and_timesteps(latents, noise, seed, **options)`: kohya's
  `library/sd3_train_utils.py:get_noisy_model_input_and_timesteps(args, latents, noise, device, dtype)` (it takes
  no scheduler; its shift is `--training_shift`, default 1.0), `args` from `sd3_args`. timesteps are kohya's
  integer t (as `dtype`), sigmas t / 1000.
- `flux_sigmas` / `sd3_sigmas(batch, ..., seed, **options)`: only the sigmas of many draws, float32 [B] (the
  same functions, called in chunks on zero latents whose height and width are `latent_hw`, which Flux's
  flux_shift reads; the latents' channel count is 1 to keep the noisy input small).
- `compute_density_for_timestep_sampling(...)` and `compute_loss_weighting_for_sd3(...)`: kohya's functions of
  those names (`family="flux"`: flux_train_utils', `"sd3"`: sd3_train_utils'; the two copies read the same).
- `flux_sigma_table(shift)`: (timesteps, sigmas) of kohya's FlowMatchEulerDiscreteScheduler, the table
  `timestep_sampling="sigma"` indexes; `flux_shift_mu(tokens)`: kohya's `get_lin_function(y1=0.5, y2=1.15)`
  as flux_shift calls it; `flux_time_shift(mu, p)`: kohya's `time_shift(mu, 1.0, p)`.
- `flux_dev_on_meta()`, `sd35_on_meta("large" | "medium")`: kohya's Flux.1 dev DiT and SD3.5 MMDiT, full size,
  on the meta device (no memory for weights), for `scripts/make_kohya_reference.py`.

Random numbers: kohya draws from torch's global CPU generator (`device` is the CPU here). Each call seeds it
with `seed` inside `torch.random.fork_rng`, so the test process's own global RNG state is left as it was.

Quirks handled here:

- `library/flux_train_utils.py` and `library/sd3_train_utils.py` import `library/train_util.py` at module level,
  and that does not import with transformers 5.x (`CLIPFeatureExtractor` is gone; imagesize is not installed
  either). Their functions used here never touch it (only sampling and saving do), so they are imported with a
  placeholder `library.train_util` whose every attribute access raises; the placeholder is taken out of
  sys.modules again afterwards. kohya's defaults for the options train_util's parsers add are read from its
  source: `add_dit_training_arguments` (weighting_scheme, logit_mean, logit_std, mode_scale) runs unchanged on a
  parser (`kohya_sd_scripts.kohya_functions`); the defaults of `--ip_noise_gamma`,
  `--ip_noise_gamma_random_strength`, `--min_timestep`, `--max_timestep` (in the long
  `add_training_arguments`) are read as literals from their `add_argument` calls.
- kohya builds the SD3 MMDiT only from a checkpoint: `library/sd3_utils.py:load_mmdit(state_dict, ...)` derives
  its `SD3Params` from the shapes of a few keys (`analyze_state_dict_state`). `sd35_on_meta` passes it meta
  tensors for just those keys, shaped as in the released SD3.5 checkpoints (see `SD35_SHAPES`); load_mmdit's
  `load_state_dict(strict=False, assign=True)` shape-checks and assigns them, and the rest stays on meta.
- Flux: `library/flux_utils.py:load_flow_model` builds `flux_models.Flux(flux_models.configs["dev"].params)`
  on the meta device before reading a dev checkpoint (it only replaces the block counts by the checkpoint's,
  19 / 38 for dev); `flux_dev_on_meta` builds exactly that, with no checkpoint.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import logging
import os
import sys
import types
from types import SimpleNamespace
from typing import Iterator

import torch

from tests.oracles import kohya_sd_scripts as kohya

CHECKED_COMMIT = kohya.CHECKED_COMMIT
FLOW_MODULES = {"flux_models": "library.flux_models", "flux_utils": "library.flux_utils",
                "sd3_models": "library.sd3_models", "sd3_utils": "library.sd3_utils",
                "lora_flux": "networks.lora_flux", "lora_sd3": "networks.lora_sd3",
                "flux_train_utils": "library.flux_train_utils", "sd3_train_utils": "library.sd3_train_utils"}
# options of train_util.add_training_arguments that kohya's flow functions read
TRAINING_OPTIONS = ("ip_noise_gamma", "ip_noise_gamma_random_strength", "min_timestep", "max_timestep")
NUM_TRAIN_TIMESTEPS = 1000            # flux_train_network.py / sd3_train_network.py: the scheduler's
CHUNK_ELEMENTS = 1 << 22              # latent elements per kohya call in flux_sigmas (16 MiB of noisy input)

# the released SD3.5 checkpoints' shapes for the keys kohya's analyze_state_dict_state reads: hidden = 64 depth
# (x_embedder.proj.weight rows), heads of 64, pos_embed_max_size 192 / 384, pooled 2048, context 4096; Medium
# has x_block.attn2 (ln_k present) in blocks 0-12
SD35_SHAPES = {"large": dict(depth=38, pos_embed_max_size=192, x_block_self_attn_layers=()),
               "medium": dict(depth=24, pos_embed_max_size=384, x_block_self_attn_layers=tuple(range(13)))}
SD35_MODEL_TYPES = {"large": "5-large", "medium": "5-medium"}

_loaded: dict[str, SimpleNamespace] = {}


def missing_reason(path: str | None = None) -> str | None:
    """None when kohya's Flux / SD3 code imports from the checkout; else why not, and how to get it."""
    path = path or kohya.sd_scripts_path()
    reason = kohya.missing_reason(path)
    if reason:
        return reason
    for name in FLOW_MODULES.values():
        relative = name.replace(".", os.sep) + ".py"
        if not os.path.isfile(os.path.join(path, relative)):
            return (f"kohya sd-scripts at {path} has no {relative} (checked at {CHECKED_COMMIT[:8]}); update the "
                    "checkout")
    try:
        modules(path)
    except Exception as error:           # an import error anywhere in kohya's modules or their dependencies
        return f"kohya sd-scripts' Flux / SD3 code at {path} does not import here: {type(error).__name__}: {error}"
    return None


class _NotImported(types.ModuleType):
    """Stands in for kohya's library.train_util while its flow modules import; any use of it is an error."""

    def __getattr__(self, name: str):
        raise AttributeError(f"kohya's library.train_util was not imported (tests/oracles/kohya_flow.py): "
                             f"train_util.{name} is not available to the oracle")


@contextlib.contextmanager
def _train_util_placeholder() -> Iterator[None]:
    key = "library.train_util"
    if key in sys.modules:               # really imported (a transformers 4.x venv): use it
        yield
        return
    library = importlib.import_module("library")
    placeholder = _NotImported(key)
    sys.modules[key] = placeholder
    setattr(library, "train_util", placeholder)
    try:
        yield
    finally:
        if sys.modules.get(key) is placeholder:
            del sys.modules[key]
        if getattr(library, "train_util", None) is placeholder:
            delattr(library, "train_util")


def modules(path: str | None = None) -> SimpleNamespace:
    """kohya's flux_models, flux_utils, sd3_models, sd3_utils, lora_flux, lora_sd3, flux_train_utils and
    sd3_train_utils from `path` (after kohya_sd_scripts.modules, which puts the checkout on sys.path)."""
    path = path or kohya.sd_scripts_path()
    if path in _loaded:
        return _loaded[path]
    kohya.modules(path)
    holder = logging.NullHandler()
    logging.root.addHandler(holder)
    try:
        with _train_util_placeholder():
            loaded = SimpleNamespace(**{key: importlib.import_module(name) for key, name in FLOW_MODULES.items()})
    finally:
        logging.root.removeHandler(holder)
    for module in vars(loaded).values():
        where = os.path.realpath(module.__file__)
        if not where.startswith(os.path.realpath(path) + os.sep):
            raise ImportError(f"{module.__name__} came from {where}, not from {path}")
    _loaded[path] = loaded
    return loaded


# --- kohya's command-line defaults ------------------------------------------------------------------------

def _literal_defaults(relative_path: str, names: tuple[str, ...]) -> dict[str, object]:
    """The defaults of kohya's `parser.add_argument("--<name>", ...)` calls in one file, read from its source:
    the `default=` literal, False for action="store_true", else None (argparse's)."""
    with open(os.path.join(kohya.sd_scripts_path(), relative_path), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument" and node.args and isinstance(node.args[0], ast.Constant)):
            continue
        name = str(node.args[0].value).lstrip("-")
        if name not in names:
            continue
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        if "default" in keywords:
            found[name] = ast.literal_eval(keywords["default"])
        elif "action" in keywords and ast.literal_eval(keywords["action"]) == "store_true":
            found[name] = False
        else:
            found[name] = None
    missing = set(names) - set(found)
    if missing:
        raise LookupError(f"{relative_path} defines no {', '.join(sorted(missing))} at this sd-scripts commit")
    return found


def _kohya_args(add_family_arguments, overrides: dict) -> SimpleNamespace:
    parser = argparse.ArgumentParser()
    add_family_arguments(parser)
    kohya.kohya_functions("library/train_util.py", ("add_dit_training_arguments",),
                          {"argparse": argparse})["add_dit_training_arguments"](parser)
    values = vars(parser.parse_args([]))
    values.update(_literal_defaults("library/train_util.py", TRAINING_OPTIONS))
    unknown = set(overrides) - set(values)
    if unknown:
        raise TypeError(f"not kohya options here: {', '.join(sorted(unknown))}")
    values.update(overrides)
    return SimpleNamespace(**values)


def flux_args(**overrides) -> SimpleNamespace:
    """kohya's flux_train_network.py defaults (add_flux_train_arguments, add_dit_training_arguments and the
    training options above), with `overrides` (timestep_sampling, sigmoid_scale, discrete_flow_shift,
    weighting_scheme, logit_mean, logit_std, mode_scale, ip_noise_gamma, ...)."""
    return _kohya_args(modules().flux_train_utils.add_flux_train_arguments, overrides)


def sd3_args(**overrides) -> SimpleNamespace:
    """kohya's sd3_train_network.py defaults (add_sd3_training_arguments, ...), with `overrides` (weighting_scheme,
    logit_mean, logit_std, mode_scale, training_shift, min_timestep, max_timestep)."""
    return _kohya_args(modules().sd3_train_utils.add_sd3_training_arguments, overrides)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global CPU generator seeded with `seed` (what kohya draws from), restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


# --- kohya's flow-matching functions -----------------------------------------------------------------------

def flux_noise_scheduler(discrete_flow_shift: float = 3.0):
    """kohya's FlowMatchEulerDiscreteScheduler as flux_train_network.py's get_noise_scheduler makes it."""
    return modules().sd3_train_utils.FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS,
                                                                      shift=discrete_flow_shift)


def flux_noisy_model_input_and_timesteps(latents: torch.Tensor, noise: torch.Tensor, seed: int,
                                         dtype: torch.dtype = torch.float32, **options):
    """kohya Flux's (noisy_model_input, timesteps, sigmas) for these latents and noise, `options` on its
    defaults, its random draws from the global generator seeded with `seed`."""
    args = flux_args(**options)
    scheduler = flux_noise_scheduler(args.discrete_flow_shift)
    with seeded(seed):
        return modules().flux_train_utils.get_noisy_model_input_and_timesteps(
            args, scheduler, latents, noise, torch.device("cpu"), dtype)


def sd3_noisy_model_input_and_timesteps(latents: torch.Tensor, noise: torch.Tensor, seed: int,
                                        dtype: torch.dtype = torch.float32, **options):
    """kohya SD3's (noisy_model_input, timesteps, sigmas), as flux_noisy_model_input_and_timesteps."""
    args = sd3_args(**options)
    with seeded(seed):
        return modules().sd3_train_utils.get_noisy_model_input_and_timesteps(
            args, latents, noise, torch.device("cpu"), dtype)


def _zero_latents(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.zeros(1, 1, 1, 1).expand(batch, 1, height, width)


def flux_sigmas(batch: int, latent_hw: tuple[int, int], seed: int, **options) -> torch.Tensor:
    """kohya Flux's sigmas (float32 [batch]) for latents of height, width `latent_hw`: one seeded stream,
    drawn in chunks (kohya's function is called on zero latents of one channel)."""
    args = flux_args(**options)
    scheduler = flux_noise_scheduler(args.discrete_flow_shift)
    height, width = latent_hw
    per_call = max(1, CHUNK_ELEMENTS // (height * width))
    draw = modules().flux_train_utils.get_noisy_model_input_and_timesteps
    sigmas = []
    with seeded(seed):
        for start in range(0, batch, per_call):
            zeros = _zero_latents(min(per_call, batch - start), height, width)
            sigmas.append(draw(args, scheduler, zeros, zeros, torch.device("cpu"), torch.float32)[2].flatten())
    return torch.cat(sigmas).float()


def sd3_sigmas(batch: int, seed: int, **options) -> torch.Tensor:
    """kohya SD3's sigmas (float32 [batch], t / 1000 with kohya's integer t)."""
    zeros = _zero_latents(batch, 1, 1)
    return sd3_noisy_model_input_and_timesteps(zeros, zeros, seed, **options)[2].flatten().float()


def _train_utils(family: str):
    if family not in ("flux", "sd3"):
        raise ValueError(f"family is 'flux' or 'sd3', not {family!r}")
    return getattr(modules(), f"{family}_train_utils")


def compute_density_for_timestep_sampling(weighting_scheme: str, batch_size: int, logit_mean: float = 0.0,
                                          logit_std: float = 1.0, mode_scale: float = 1.29, seed: int | None = None,
                                          family: str = "flux") -> torch.Tensor:
    """kohya's u (float32 [batch_size], CPU); seeded with `seed` when given, else from the global generator."""
    function = _train_utils(family).compute_density_for_timestep_sampling
    arguments = dict(weighting_scheme=weighting_scheme, batch_size=batch_size, logit_mean=logit_mean,
                     logit_std=logit_std, mode_scale=mode_scale)
    if seed is None:
        return function(**arguments)
    with seeded(seed):
        return function(**arguments)


def compute_loss_weighting_for_sd3(weighting_scheme: str, sigmas: torch.Tensor, family: str = "flux") -> torch.Tensor:
    """kohya's loss weight for sigmas (sigma_sqrt: s^-2, cosmap: 2 / (pi (1 - 2s + 2s^2)), else ones)."""
    return _train_utils(family).compute_loss_weighting_for_sd3(weighting_scheme, sigmas)


def flux_sigma_table(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, sigmas) of kohya's scheduler for sigma mode, index 0 first (t = 1000 ... 1, shifted)."""
    scheduler = flux_noise_scheduler(shift)
    return scheduler.timesteps.clone(), scheduler.sigmas.clone()


def flux_shift_mu(tokens: float) -> float:
    """kohya's mu for flux_shift: get_lin_function(y1=0.5, y2=1.15)(tokens), tokens = (h // 2) * (w // 2)."""
    return modules().flux_train_utils.get_lin_function(y1=0.5, y2=1.15)(tokens)


def flux_time_shift(mu: float, p: torch.Tensor) -> torch.Tensor:
    """kohya's time_shift(mu, 1.0, p) = e^mu / (e^mu + (1 / p - 1))."""
    return modules().flux_train_utils.time_shift(mu, 1.0, p)


# --- kohya's DiT models, full size, on the meta device -------------------------------------------------------

def flux_dev_on_meta():
    """kohya's library/flux_models.py Flux with configs["dev"] (19 double, 38 single blocks), on meta."""
    flux_models = modules().flux_models
    with torch.device("meta"):
        return flux_models.Flux(flux_models.configs["dev"].params)


def sd35_on_meta(variant: str):
    """kohya's library/sd3_models.py MMDiT for SD3.5 Large or Medium, built by its own loader on meta."""
    shapes = SD35_SHAPES[variant]
    hidden = 64 * shapes["depth"]
    prefix = "model.diffusion_model."       # load_mmdit takes a full checkpoint's keys

    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device="meta")

    state_dict = {
        f"{prefix}x_embedder.proj.weight": meta(hidden, 16, 2, 2),
        f"{prefix}pos_embed": meta(1, shapes["pos_embed_max_size"] ** 2, hidden),
        f"{prefix}y_embedder.mlp.0.weight": meta(hidden, 2048),
        f"{prefix}context_embedder.weight": meta(hidden, 4096),
        f"{prefix}joint_blocks.0.context_block.attn.ln_k.weight": meta(64),      # qk_norm "rms" (SD3.5)
    }
    for block in shapes["x_block_self_attn_layers"]:
        state_dict[f"{prefix}joint_blocks.{block}.x_block.attn2.ln_k.weight"] = meta(64)
    mmdit = modules().sd3_utils.load_mmdit(state_dict, None, "meta")
    if mmdit.model_type != SD35_MODEL_TYPES[variant]:
        raise RuntimeError(f"kohya took the SD3.5 {variant} shapes for {mmdit.model_type!r}")
    return mmdit
