"""The training loop: kohya's train_network step on a TrainableModel, with callbacks for the host.

The loop owns nothing global: the RNGs it uses are its own generators, the base model's
`requires_grad` flags are restored when it ends, and the LoRA hooks are removed on every exit path.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from .autograd_weights import replace_inference_tensors
from .errors import TrainerError
from .interfaces import TrainableModel, unique_in_order
from .latent_cache import LatentCache
from .network import LoRANetwork, NetworkConfig
from .objective import noisy_latents_and_target, per_sample_mse
from .optim import OptimizerConfig, build_optimizer
from .plan import TrainPlan, TrainSettings, epoch_batches, plan_run


@dataclass
class TrainProgress:
    """A snapshot of a run, handed to callbacks and returned at the end."""

    step: int = 0
    epoch: int = 0                      # epochs completed
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None


@dataclass
class TrainCallbacks:
    """Hooks into the host (ComfyUI node or a test). All optional.

    `check_cancel` may raise to stop the run; `on_abort` then gets the partial network state before the
    exception propagates, so Cancel and errors keep what was trained.
    """

    on_step: Callable[[TrainProgress, int], None] | None = None            # (progress, total_steps)
    check_cancel: Callable[[], None] | None = None
    on_epoch_checkpoint: Callable[[TrainProgress, dict[str, torch.Tensor]], None] | None = None
    on_abort: Callable[[TrainProgress, dict[str, torch.Tensor], BaseException], None] | None = None


@dataclass
class TrainResult:
    tensors: dict[str, torch.Tensor]    # kohya keys, fp32, CPU
    progress: TrainProgress
    plan: TrainPlan
    settings: TrainSettings
    network: NetworkConfig
    optimizer: OptimizerConfig


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Freeze a shared model for the run and give back its requires_grad flags afterwards."""
    previous = [(p, p.requires_grad) for p in module.parameters()]
    try:
        module.requires_grad_(False)
        yield
    finally:
        for param, flag in previous:
            if param.requires_grad != flag:
                param.requires_grad_(flag)


def batch_context(contexts: list[torch.Tensor]) -> torch.Tensor:
    """Stack [1, L_i, D] contexts; different lengths (long captions) are tiled to a common length."""
    lengths = {c.shape[1] for c in contexts}
    if len(lengths) > 1:
        common = math.lcm(*lengths)
        contexts = [c.repeat(1, common // c.shape[1], 1) for c in contexts]
    return torch.cat(contexts, dim=0)


def encode_captions(model: TrainableModel, captions: list[str]) -> dict[str, torch.Tensor]:
    """Encode each distinct caption once (the text encoder is not trained here)."""
    encoded = {}
    with torch.no_grad():
        for caption in unique_in_order(captions):
            hidden = model.caption_encoder.encode(caption)
            encoded[caption] = hidden.detach().to("cpu", torch.float32).clone()
    return encoded


def train_lora(model: TrainableModel, cache: LatentCache, network_config: NetworkConfig,
               optimizer_config: OptimizerConfig, settings: TrainSettings,
               callbacks: TrainCallbacks | None = None) -> TrainResult:
    callbacks = callbacks or TrainCallbacks()
    settings = settings.validated()
    optimizer_config = optimizer_config.validated()
    plan = plan_run(cache, settings)
    denoiser = model.denoiser
    device = denoiser.device

    contexts = encode_captions(model, [s.caption for s in cache.samples])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)         # LoRA init draws from the global RNG; fork keeps it ours
        network = LoRANetwork(model.lora_targets, network_config)
    network.to(device)
    optimizer, scheduler = build_optimizer(optimizer_config, network.trainable_parameters(), plan.total_steps)
    generator = torch.Generator().manual_seed(settings.seed)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if settings.precision == "bf16"
                else nullcontext())
    progress = TrainProgress()

    replace_inference_tensors(model.frozen_root)
    with frozen(model.frozen_root), network.attached(model.lora_targets):
        try:
            for epoch in range(plan.epochs):
                for batch in epoch_batches(cache, settings.batch_size, settings.seed, epoch):
                    if progress.step >= plan.total_steps:
                        break
                    if callbacks.check_cancel:
                        callbacks.check_cancel()
                    loss = _train_step(denoiser, network, optimizer, optimizer_config, batch, contexts,
                                       generator, autocast, device, progress.step + 1)
                    progress.learning_rates.append(scheduler.get_last_lr()[0])
                    scheduler.step()
                    progress.step += 1
                    progress.losses.append(loss)
                    if callbacks.on_step:
                        callbacks.on_step(progress, plan.total_steps)
                progress.epoch = epoch + 1
                last_epoch = progress.epoch == plan.epochs
                if (settings.save_every_n_epochs and not last_epoch and callbacks.on_epoch_checkpoint
                        and progress.epoch % settings.save_every_n_epochs == 0):
                    callbacks.on_epoch_checkpoint(progress, network.kohya_state_dict())
        except BaseException as exc:
            if callbacks.on_abort and progress.step > 0:
                callbacks.on_abort(progress, network.kohya_state_dict(), exc)
            raise
    progress.finished_at = time.time()
    return TrainResult(network.kohya_state_dict(), progress, plan, settings, network.config, optimizer_config)


def _train_step(denoiser, network: LoRANetwork, optimizer: torch.optim.Optimizer, optimizer_config: OptimizerConfig,
                batch, contexts: dict[str, torch.Tensor], generator: torch.Generator, autocast,
                device: torch.device, step: int) -> float:
    raw = torch.stack([sample.latent for sample in batch]).to(device)
    latents = denoiser.scale_latents(raw)
    noisy, timesteps, target = noisy_latents_and_target(latents, denoiser.alphas_cumprod,
                                                        denoiser.prediction_type, generator)
    context = batch_context([contexts[sample.caption] for sample in batch]).to(device)
    weights = torch.tensor([sample.loss_weight for sample in batch], device=device)
    with autocast:
        prediction = denoiser(noisy, timesteps, context)
    loss = (per_sample_mse(prediction, target) * weights).mean()
    if not torch.isfinite(loss):
        # checked before backward so the LoRA handed to on_abort is the last finite one
        raise TrainerError(f"The loss became {loss.item()} at step {step}. Lower the learning rate, or train "
                           "in fp32; the LoRA up to the previous step was kept.")
    loss.backward()
    if optimizer_config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(network.trainable_parameters(), optimizer_config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()
