"""What Configure LoRA produces, and the table of algorithms it offers."""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class Algorithm:
    """One row of the algorithm table: what it wraps and how kohya's metadata names it."""

    name: str
    wraps_convolutions: bool           # LoCon: also ResNet / down- / upsampling layers, 3x3 convs at conv rank
    network_module: str                # kohya's ss_network_module
    lycoris_algo: str = ""             # LyCORIS's algo= in ss_network_args ("" for kohya's networks.lora)
    file_kind: str = "lora"            # what its saved keys look like: "lora" (lora_down/up) or "loha" (hada_*)


ALGORITHMS = {
    "LoRA": Algorithm("LoRA", False, "networks.lora"),
    "LoCon": Algorithm("LoCon", True, "networks.lora"),      # kohya: networks.lora with conv_dim / conv_alpha
    "LoHa": Algorithm("LoHa", False, "lycoris.kohya", "loha", "loha"),
}


@dataclass(frozen=True)
class NetworkConfig:
    """What Configure LoRA produces (LORA_NETWORK)."""

    algorithm: str = "LoRA"
    rank: int = 8
    alpha: float = 1.0
    conv_rank: int = 1                 # LoCon: kohya's conv_dim / conv_alpha for 3x3 convolutions (GUI: 1 / 1)
    conv_alpha: float = 1.0
    network_dropout: float = 0.0       # kohya's --network_dropout (units of down(x))
    rank_dropout: float = 0.0          # kohya's network_args rank_dropout / module_dropout
    module_dropout: float = 0.0
    continue_from: str = ""            # a LoRA file (path) whose weights the network starts from; "" = fresh

    def validated(self) -> "NetworkConfig":
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"Algorithm {self.algorithm!r} is not available; choose one of "
                              f"{', '.join(ALGORITHMS)}.")
        if not 1 <= self.rank <= 1024:
            raise ConfigError(f"rank (network_dim) is {self.rank}; use 1..1024 (kohya_ss default 8).")
        if self.alpha < 0:
            raise ConfigError(f"alpha is {self.alpha}; use 0 or more (0 means alpha = rank, scale 1).")
        if self.uses_convolutions and not 1 <= self.conv_rank <= 1024:
            raise ConfigError(f"conv rank (conv_dim) is {self.conv_rank}; use 1..1024 (kohya_ss default 1).")
        if self.uses_convolutions and self.conv_alpha < 0:
            raise ConfigError(f"conv alpha is {self.conv_alpha}; use 0 or more (0 means conv alpha = conv rank).")
        if self.algorithm == "LoHa" and (self.network_dropout or self.rank_dropout):
            raise ConfigError("LoHa takes module dropout only here; set network_dropout and rank_dropout to 0.")
        for name in ("network_dropout", "rank_dropout", "module_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} is {getattr(self, name)}; it is a probability from 0 up to (not "
                                  "including) 1, kohya_ss default 0.")
        return self

    @property
    def uses_convolutions(self) -> bool:
        return ALGORITHMS[self.algorithm].wraps_convolutions

    @property
    def effective_conv_alpha(self) -> float:
        return float(self.conv_alpha) if self.conv_alpha else float(self.conv_rank)

    def rank_and_alpha_for(self, layer: nn.Module) -> tuple[int, float]:
        """kohya: 3x3 (any k>1) convolutions get conv_dim / conv_alpha; Linear and 1x1 layers network_dim / alpha."""
        if self.uses_convolutions and isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1):
            return self.conv_rank, self.effective_conv_alpha
        return self.rank, self.effective_alpha

    def warnings(self) -> list[str]:
        found = []
        if self.effective_alpha > self.rank:
            found.append(f"alpha {self.effective_alpha:g} is greater than rank {self.rank}: the update is scaled up "
                         f"({self.scale:g}x), which often gives surprising LoRAs; alpha <= rank is usual.")
        if self.uses_convolutions and self.effective_conv_alpha > self.conv_rank:
            found.append(f"conv alpha {self.effective_conv_alpha:g} is greater than conv rank {self.conv_rank}.")
        return found

    def network_args(self) -> dict[str, str]:
        """kohya's ss_network_args: the --network_args that would make this network (strings, as kohya)."""
        args = {}
        if ALGORITHMS[self.algorithm].lycoris_algo:
            args["algo"] = ALGORITHMS[self.algorithm].lycoris_algo
        if self.uses_convolutions:
            args.update(conv_dim=str(self.conv_rank), conv_alpha=str(self.effective_conv_alpha))
        for name in ("rank_dropout", "module_dropout"):
            if getattr(self, name):
                args[name] = str(getattr(self, name))
        return args

    @property
    def effective_alpha(self) -> float:
        # kohya: alpha None or 0 means alpha = rank
        return float(self.alpha) if self.alpha else float(self.rank)

    @property
    def scale(self) -> float:
        return self.effective_alpha / self.rank

    def describe(self) -> str:
        text = f"{self.algorithm} rank {self.rank}, alpha {self.effective_alpha:g} (scale {self.scale:g})"
        if self.uses_convolutions:
            text += (f", conv rank {self.conv_rank}, conv alpha {self.effective_conv_alpha:g} "
                     f"(scale {self.effective_conv_alpha / self.conv_rank:g})")
        dropouts = [f"{name.replace('_', ' ')} {getattr(self, name):g}"
                     for name in ("network_dropout", "rank_dropout", "module_dropout") if getattr(self, name)]
        if dropouts:
            text += ", " + ", ".join(dropouts)
        if self.continue_from:
            text += f", continuing from {os.path.basename(self.continue_from)}"
        return "\n".join([text] + [f"warning: {warning}" for warning in self.warnings()])


