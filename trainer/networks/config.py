"""What Configure LoRA produces, and the table of algorithms it offers."""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from .dylora import DyLoRAModule
from .loha import LoHaModule
from .lokr import LoKrModule
from .lora import LoRAModule


@dataclass(frozen=True)
class Algorithm:
    """One row of the algorithm table: its module, what it wraps, its file keys and how kohya's metadata names it."""

    name: str
    module: type                       # the nn.Module put on each wrapped layer
    wraps_convolutions: bool           # LoCon: also ResNet / down- / upsampling layers, 3x3 convs at conv rank
    network_module: str                # kohya's ss_network_module
    lycoris_algo: str = ""             # LyCORIS's algo= in ss_network_args ("" for kohya's networks.lora)
    file_kind: str = "lora"            # its saved keys: "lora" (lora_down/up), "loha" (hada_*), "lokr" (lokr_*)
    dropouts: tuple[str, ...] = ("network_dropout", "rank_dropout", "module_dropout")   # the ones it has
    takes_dora: bool = False           # DoRA (weight decomposition) may be switched on for it
    options: tuple[tuple[str, str], ...] = ()   # (module keyword, NetworkConfig field) of its own settings


ALGORITHMS = {
    "LoRA": Algorithm("LoRA", LoRAModule, False, "networks.lora", takes_dora=True),
    # kohya: networks.lora with conv_dim / conv_alpha
    "LoCon": Algorithm("LoCon", LoRAModule, True, "networks.lora", takes_dora=True),
    "LoHa": Algorithm("LoHa", LoHaModule, False, "lycoris.kohya", "loha", "loha", dropouts=("module_dropout",)),
    "LoKr": Algorithm("LoKr", LoKrModule, False, "lycoris.kohya", "lokr", "lokr",
                      dropouts=("rank_dropout", "module_dropout"),
                      options=(("factor", "lokr_factor"), ("decompose_both", "decompose_both"))),
    # kohya's networks.dylora: trained in rank units, saved as a plain LoRA file
    "DyLoRA": Algorithm("DyLoRA", DyLoRAModule, False, "networks.dylora", dropouts=(),
                        options=(("unit", "dylora_unit"),)),
}
TRAIN_ON = ("unet", "text_encoder", "both")
DROPOUTS = ("network_dropout", "rank_dropout", "module_dropout")


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
    train_on: str = "unet"             # which parts get LoRA modules: unet, text_encoder or both
    dora: bool = False                 # DoRA: LoRA with weight decomposition (LyCORIS's dora_wd), LoRA/LoCon
    lokr_factor: int = -1              # LoKr: LyCORIS's factor (-1: as balanced as the shape allows)
    decompose_both: bool = False       # LoKr: also write the smaller Kronecker factor as a low-rank product
    dylora_unit: int = 1               # DyLoRA: kohya's unit, the rank step trained at a time

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
        for name in DROPOUTS:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} is {getattr(self, name)}; it is a probability from 0 up to (not "
                                  "including) 1, kohya_ss default 0.")
        spec = ALGORITHMS[self.algorithm]
        offered = ("module_dropout",) if self.dora else spec.dropouts
        refused = [name for name in DROPOUTS if getattr(self, name) and name not in offered]
        if refused:
            what = f"{self.algorithm} with DoRA" if self.dora else self.algorithm
            takes = " and ".join(offered) if offered else "no dropout"
            raise ConfigError(f"{what} takes {takes} here (as kohya / LyCORIS); set {' and '.join(refused)} to 0.")
        if self.train_on not in TRAIN_ON:
            raise ConfigError(f"train is {self.train_on!r}; choose one of {', '.join(TRAIN_ON)}.")
        if self.dora and not spec.takes_dora:
            raise ConfigError(f"DoRA is offered with LoRA and LoCon; switch dora off for {self.algorithm}.")
        if self.algorithm == "LoKr" and (self.lokr_factor == 0 or self.lokr_factor < -1):
            raise ConfigError(f"LoKr factor is {self.lokr_factor}; use -1 (balanced) or a positive factor.")
        if self.algorithm == "DyLoRA" and (self.dylora_unit < 1 or self.rank % self.dylora_unit):
            raise ConfigError(f"DyLoRA unit {self.dylora_unit} does not divide rank {self.rank}; kohya trains the "
                              "rank in steps of unit, so choose a unit that divides it (kohya default 1).")
        return self

    @property
    def train_unet(self) -> bool:
        return self.train_on in ("unet", "both")

    @property
    def train_text_encoder(self) -> bool:
        return self.train_on in ("text_encoder", "both")

    @property
    def file_kind(self) -> str:
        """What the saved keys look like (continue_from reads a file's kind the same way)."""
        return "dora" if self.dora else ALGORITHMS[self.algorithm].file_kind

    @property
    def network_module(self) -> str:
        """kohya's ss_network_module: DoRA files are LyCORIS's (kohya's networks.lora has no DoRA)."""
        return "lycoris.kohya" if self.dora else ALGORITHMS[self.algorithm].network_module

    @property
    def draws_in_forward(self) -> bool:
        """Whether the modules' forward draws random numbers: dropout masks, DyLoRA's rank."""
        return self.algorithm == "DyLoRA" or any(getattr(self, name) > 0 for name in DROPOUTS)

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
        if self.dora:
            # LyCORIS's DoRA with the magnitude per input column (the DoRA paper's), which ComfyUI reads exactly
            args.update(algo=self.algorithm.lower(), dora_wd="True", wd_on_output="False")
        if self.uses_convolutions:
            args.update(conv_dim=str(self.conv_rank), conv_alpha=str(self.effective_conv_alpha))
        if self.algorithm == "LoKr":
            args["factor"] = str(self.lokr_factor)
            if self.decompose_both:
                args["decompose_both"] = "True"
        if self.algorithm == "DyLoRA":
            args["unit"] = str(self.dylora_unit)
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
        name = f"{self.algorithm} (DoRA)" if self.dora else self.algorithm
        text = f"{name} rank {self.rank}, alpha {self.effective_alpha:g} (scale {self.scale:g})"
        if self.uses_convolutions:
            text += (f", conv rank {self.conv_rank}, conv alpha {self.effective_conv_alpha:g} "
                     f"(scale {self.effective_conv_alpha / self.conv_rank:g})")
        dropouts = [f"{name.replace('_', ' ')} {getattr(self, name):g}"
                     for name in ("network_dropout", "rank_dropout", "module_dropout") if getattr(self, name)]
        if dropouts:
            text += ", " + ", ".join(dropouts)
        if self.algorithm == "LoKr":
            text += f", factor {self.lokr_factor}" + (", both factors decomposed" if self.decompose_both else "")
        if self.algorithm == "DyLoRA":
            text += f", unit {self.dylora_unit}"
        text += {"unet": ", on the UNet", "text_encoder": ", on the text encoder(s)",
                 "both": ", on the UNet and text encoder(s)"}[self.train_on]
        if self.continue_from:
            text += f", continuing from {os.path.basename(self.continue_from)}"
        return "\n".join([text] + [f"warning: {warning}" for warning in self.warnings()])


