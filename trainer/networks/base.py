"""A network of update modules, one per wrapped layer, attached with forward hooks.

Forward hooks leave the base weights untouched (no copy, nothing to restore) and work on any nn.Linear /
nn.Conv2d subclass, ComfyUI's cast layers included.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..errors import ConfigError
from .config import ALGORITHMS, NetworkConfig
from .dora import DoRAModule
from .lora import Dropouts, LoRAModule

TEXT_ENCODER_PREFIX = "lora_te"


def module_for(layer: nn.Module, config: NetworkConfig, dropouts: Dropouts) -> nn.Module:
    """The update module `config` puts on `layer` (its algorithm's row of ALGORITHMS, DoRA for LoRA / LoCon with
    dora on), with that algorithm's own settings."""
    rank, alpha = config.rank_and_alpha_for(layer)
    if config.dora:
        return DoRAModule(layer, rank, alpha, dropouts)
    spec = ALGORITHMS[config.algorithm]
    return spec.module(layer, rank, alpha, dropouts, **{keyword: getattr(config, field)
                                                        for keyword, field in spec.options})


def is_up_parameter(suffix: str) -> bool:
    """LoRA+'s "B" matrices, which get lr x ratio: kohya's lora_up (DyLoRA's lora_B slices)."""
    return suffix.startswith(("up.", "lora_B."))


class LoRANetwork(nn.Module):
    """All LoRA modules of one run, keyed by kohya name."""

    def __init__(self, targets: dict[str, nn.Module], config: NetworkConfig):
        super().__init__()
        config = config.validated()
        if not targets:
            raise ConfigError("The model has no layers LoRA can wrap (no attention / projection layers found).")
        self.config = config
        self.dropouts = Dropouts(config.network_dropout, config.rank_dropout, config.module_dropout)
        self.lora_modules = nn.ModuleDict({name: module_for(layer, config, self.dropouts)
                                           for name, layer in targets.items()})

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self, unet_lr: float, text_encoder_lr: float,
                         loraplus_ratio: float = 0.0) -> list[dict]:
        """Optimizer groups as kohya's prepare_optimizer_params: text encoder and UNet each at their own lr,
        LoRA+ putting the up matrices in a group of their own at lr x ratio; a group whose lr is 0 is left
        out (that part stays as it is), unless every lr is 0. Each group carries a `name` as kohya logs it."""
        groups: dict[str, dict] = {}
        for module_name, module in self.lora_modules.items():
            part, lr = (("textencoder", text_encoder_lr) if module_name.startswith(TEXT_ENCODER_PREFIX)
                        else ("unet", unet_lr))
            for suffix, parameter in module.named_parameters():
                if not parameter.requires_grad:
                    continue
                name, group_lr = part, lr
                if loraplus_ratio and is_up_parameter(suffix):
                    name, group_lr = f"{part} plus", lr * loraplus_ratio
                group = groups.setdefault(name, {"name": name, "lr": group_lr, "params": []})
                group["params"].append(parameter)
        kept = [group for group in groups.values() if group["lr"] > 0]
        # every lr 0: nothing trains, but the run goes on (a baseline: its losses and validation are the model's
        # own); the loop says so
        return kept or list(groups.values())

    @contextmanager
    def attached(self, targets: dict[str, nn.Module]) -> Iterator["LoRANetwork"]:
        """Add each module's output to its layer's output for the duration of the block."""
        handles = []
        try:
            for name, layer in targets.items():
                handles.append(layer.register_forward_hook(_AddLoRAOutput(self.lora_modules[name])))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def start_from_loaded_weights(self) -> None:
        """Modules whose start depends on the wrapped weights (DoRA's magnitude, ||W0||) take them as they are
        now: after the host loaded the model and applied its own weight patches."""
        for module in self.lora_modules.values():
            if hasattr(module, "start_from_base"):
                module.start_from_base()

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """kohya's scale_weight_norms, after an optimizer step: a module whose update up @ down * scale has a norm
        above `max_norm` gets up and down each scaled by sqrt(max_norm / norm) (norms below max_norm / 2 count as
        max_norm / 2, as kohya clamps them). Returns (modules scaled, mean and max norm after scaling)."""
        scaled, norms = 0, []
        for module in self.lora_modules.values():
            norm = LoRAModule.delta_weight(module).norm()
            ratio = float(norm.clamp(min=max_norm / 2).clamp(max=max_norm) / norm.clamp(min=max_norm / 2))
            if ratio != 1.0:
                scaled += 1
                module.up.weight.mul_(ratio ** 0.5)
                module.down.weight.mul_(ratio ** 0.5)
            norms.append(float(norm) * ratio)
        return scaled, sum(norms) / max(1, len(norms)), max(norms, default=0.0)

    def load_kohya_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take the weights saved by kohya_state_dict (same modules, same rank)."""
        with torch.no_grad():
            for name, module in self.lora_modules.items():
                mine = module.saved_parameters()
                for suffix, parameter in mine.items():
                    saved = tensors.get(f"{name}.{suffix}")
                    if saved is None or saved.shape != parameter.shape:
                        raise ConfigError(f"The saved LoRA does not fit this network at {name}.{suffix} "
                                          f"(saved {None if saved is None else tuple(saved.shape)}, "
                                          f"expected {tuple(parameter.shape)}).")
                saved = {suffix: tensors[f"{name}.{suffix}"] for suffix in mine}
                if hasattr(module, "load_saved_parameters"):     # tensors built from several parameters
                    module.load_saved_parameters(saved)
                else:
                    for suffix, parameter in mine.items():
                        parameter.copy_(saved[suffix])

    def kohya_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Tensors under kohya's key names, on CPU, contiguous, in `dtype` (alpha included)."""
        tensors = {}
        for name, module in self.lora_modules.items():
            for suffix, parameter in module.saved_parameters().items():
                tensors[f"{name}.{suffix}"] = parameter.detach().to("cpu", dtype).contiguous()
            tensors[f"{name}.alpha"] = module.alpha.detach().to("cpu", dtype).clone()
        return tensors


class _AddLoRAOutput:
    """Forward hook: layer output + LoRA output, cast back to the layer's output dtype."""

    def __init__(self, lora: nn.Module):
        self.lora = lora

    def __call__(self, layer: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.lora.skips_this_call():
            return output
        return output + self.lora(inputs[0]).to(output.dtype)
