"""A run's resumable state: everything needed to continue exactly where a cancelled or failed run stopped.

A state folder holds `network.safetensors` (the LoRA in kohya keys, fp32), `trainer_state.pt` (optimizer,
LR schedule, loss scaler and noise-generator states, the loss history) and `state.json` (step and the
run's fingerprint), written last so a folder without it is known to be incomplete. A run resumes only
with the settings it started with: the fingerprint says which ones differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass, field

import safetensors.torch
import torch

from .atomic_files import write_atomic, write_json_atomic
from .errors import ConfigError
from .flow_objective import FlowSettings
from .latent_cache import LatentCache
from .networks import NetworkConfig
from .optim import OptimizerConfig
from .plan import TrainPlan, TrainSettings

STATE_PREFIX = "state-"


@dataclass
class TrainState:
    fingerprint: dict
    step: int
    losses: list[float]
    learning_rates: list[float]
    network: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    scaler: dict
    generator: torch.Tensor
    effective_learning_rates: list[float] = field(default_factory=list)
    validation_losses: list = field(default_factory=list)        # [step, loss] pairs


def run_fingerprint(cache: LatentCache, network: NetworkConfig, optimizer: OptimizerConfig,
                    settings: TrainSettings, plan: TrainPlan, precision: str) -> dict:
    """The settings a resumed run must share with the run it continues (names and save cadence may change)."""
    data = hashlib.sha256()
    for size, samples in sorted(cache.buckets.items()):
        for sample in samples:
            flipped = sample.latent_flipped is not None
            data.update(f"{size}|{sample.image_path}|{sample.caption}|{sample.repeats}|{sample.is_reg}|{flipped}|"
                        f"{sample.caption_options}\n".encode())
    return {
        "steps": [plan.batches_per_epoch, plan.epochs, plan.total_steps],
        "batch_size": settings.batch_size, "seed": settings.seed, "precision": precision,   # what ran (auto resolved)
        "prior_loss_weight": settings.prior_loss_weight,
        "accumulation": settings.gradient_accumulation_steps, "max_token_length": settings.max_token_length,
        "scale_weight_norms": settings.scale_weight_norms,
        "objective": dataclasses.asdict(settings.objective),
        "validation": dataclasses.asdict(settings.validation),
        "network": dataclasses.asdict(network),
        "optimizer": json.loads(json.dumps(dataclasses.asdict(optimizer))),
        "dataset": data.hexdigest(),
    } | ({} if settings.flow == FlowSettings() else {"flow": dataclasses.asdict(settings.flow)})


def check_resumable(saved: dict, current: dict) -> None:
    differing = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    if differing:
        details = "; ".join(f"{key}: was {saved.get(key)}, now {current.get(key)}" for key in differing)
        raise ConfigError(f"This run cannot resume the saved state because its settings differ ({details}). "
                          "Resume with the settings the run started with, or start a new run.")


def save_state(folder: str, state: TrainState) -> str:
    os.makedirs(folder, exist_ok=True)
    write_atomic(os.path.join(folder, "network.safetensors"), safetensors.torch.save(state.network))
    buffer = io.BytesIO()
    torch.save({"losses": state.losses, "learning_rates": state.learning_rates, "optimizer": state.optimizer,
                "scheduler": state.scheduler, "scaler": state.scaler, "generator": state.generator,
                "effective_learning_rates": state.effective_learning_rates,
                "validation_losses": [list(pair) for pair in state.validation_losses]}, buffer)
    write_atomic(os.path.join(folder, "trainer_state.pt"), buffer.getvalue())
    write_json_atomic(os.path.join(folder, "state.json"), {"step": state.step, "fingerprint": state.fingerprint})
    return folder


def load_state(folder: str) -> TrainState:
    marker = os.path.join(folder, "state.json")
    if not os.path.isfile(marker):
        raise ConfigError(f"{folder} holds no complete training state (state.json is missing).")
    with open(marker, encoding="utf-8") as handle:
        header = json.load(handle)
    # ordinary tensors even when called under inference_mode (as ComfyUI runs nodes): the optimizer updates
    # its state in place
    with torch.inference_mode(False):
        rest = torch.load(os.path.join(folder, "trainer_state.pt"), map_location="cpu", weights_only=True)
        network = safetensors.torch.load_file(os.path.join(folder, "network.safetensors"))
    return TrainState(header["fingerprint"], header["step"], rest["losses"], rest["learning_rates"], network,
                      rest["optimizer"], rest["scheduler"], rest["scaler"], rest["generator"],
                      rest.get("effective_learning_rates", []),
                      [tuple(pair) for pair in rest.get("validation_losses", [])])


def latest_state_folder(run_folder: str) -> str | None:
    """The complete state folder with the highest step under a run's folder, if any."""
    if not os.path.isdir(run_folder):
        return None
    candidates = []
    for name in os.listdir(run_folder):
        path = os.path.join(run_folder, name)
        if name.startswith(STATE_PREFIX) and name[len(STATE_PREFIX):].isdigit() and \
                os.path.isfile(os.path.join(path, "state.json")):
            candidates.append((int(name[len(STATE_PREFIX):]), path))
    return max(candidates)[1] if candidates else None


def state_folder_name(step: int) -> str:
    return f"{STATE_PREFIX}{step:08d}"
