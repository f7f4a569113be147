"""The training loop: kohya's train_network step on a TrainableModel, with callbacks for the host.

The loop owns nothing global: the RNGs it uses are its own generators, the base model's
`requires_grad` flags are restored when it ends, and the LoRA hooks are removed on every exit path.
"""

from __future__ import annotations

import itertools
import math
import logging
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from .autograd_weights import replace_inference_tensors
from .checkpointing import checkpointed
from .compiled import compiled_model
from .conditioning import sdxl_size_condition
from .device_copies import to_device
from .distributed import DistributedContext, check_splittable
from .errors import ConfigError, TrainerError
from .interfaces import TrainableModel
from .latent_cache import LatentCache
from .networks import LoRANetwork, NetworkConfig
from .memory import training_memory_estimate
from .memory_format import channels_last
from .networks.continue_from import continue_from_file
from .flow_objective import FlowSettings, build_flow_objective
from .objective import build_objective
from .objective_settings import ObjectiveSettings
from .optim import OptimizerConfig, build_optimizer, effective_learning_rate_reader
from .plan import TrainPlan, TrainSettings, epoch_batches, plan_run
from .resume import TrainState, check_resumable, run_fingerprint
from .text_contexts import CaptionContexts
from .validation import Validator, split_validation, validation_contexts, validation_timesteps

logger = logging.getLogger(__name__)


@dataclass
class TrainProgress:
    """A snapshot of a run, handed to callbacks and returned at the end."""

    step: int = 0
    epoch: int = 0                      # epochs completed
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    effective_learning_rates: list[float] = field(default_factory=list)   # d * lr, Adafactor's step, else lr
    validation_losses: list[tuple[int, float]] = field(default_factory=list)   # (step, loss)
    validation_images: int = 0          # held-out images the validation loss is taken on
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None


@dataclass
class TrainCallbacks:
    """Hooks into the host (ComfyUI node or a test). All optional.

    `check_cancel` may raise to stop the run; `on_abort` then gets the resumable state (LoRA, optimizer,
    schedule, RNG) as of the last completed step before the exception propagates, so Cancel and errors
    keep what was trained. `on_checkpoint` gets the same state at each intermediate save (kohya's
    save_every_n_epochs / save_every_n_steps; not at the end of the run), with "epoch" or "step".
    """

    on_step: Callable[[TrainProgress, int], None] | None = None            # (progress, total_steps)
    check_cancel: Callable[[], None] | None = None
    on_checkpoint: Callable[[TrainProgress, TrainState, str], None] | None = None
    on_validation: Callable[[TrainProgress], None] | None = None        # after an epoch-end validation loss
    # in-training previews: called with the LoRA attached and in eval mode, gradients off, the training
    # random streams left as they were (kohya's sample_every_n_steps / _epochs)
    on_sample: Callable[[TrainProgress], None] | None = None
    on_abort: Callable[[TrainProgress, TrainState, BaseException], None] | None = None
    # once everything is in place (model loaded, LoRA attached, checkpointing, the optimizer built) and before
    # the first step: the plan's warm-up and report (trainer/preflight.py); it may raise to stop the run, which
    # then keeps and writes nothing
    on_ready: Callable[["ReadyRun"], None] | None = None


@dataclass
class ReadyRun:
    """A run just before its first step, as on_ready sees it."""

    model: TrainableModel
    network: LoRANetwork
    stepper: "TrainStep"
    captions: CaptionContexts
    cache: LatentCache
    plan: TrainPlan
    settings: TrainSettings
    optimizer_config: OptimizerConfig
    first_step: int                     # 0, or the step a resumed run continues after


@dataclass
class TrainResult:
    tensors: dict[str, torch.Tensor]    # kohya keys, fp32, CPU
    progress: TrainProgress
    plan: TrainPlan
    settings: TrainSettings
    network: NetworkConfig
    optimizer: OptimizerConfig
    precision: str                      # what the run computed in (fp32, bf16, or fp16 with loss scaling)


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


def has_native_bf16(device: torch.device) -> bool:
    """bf16 that is fast, not emulated: CUDA GPUs from Ampere on (and ROCm cards that report it).

    CPUs and Apple GPUs can run bf16 autocast, but mostly slower than fp32, so `auto` does not pick it there.
    """
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def training_precision(requested: str, device: torch.device, compute_dtype: torch.dtype) -> str:
    """What the run really computes in, from the Train node's choice, the device and the MODEL's weights.

    auto: bf16 where the device has it, else fp16 with loss scaling on CUDA, else fp32. A MODEL whose weights
    are fp16 never computes in fp32: where the choice (by hand or auto's) is fp32, it computes in fp16 with
    loss scaling.
    """
    if requested == "bf16" and device.type == "cuda" and not has_native_bf16(device):
        raise ConfigError(f"This GPU ({torch.cuda.get_device_name(device)}) has no bf16. Set Train's precision "
                          "to auto (fp16 with loss scaling here) or fp32.")
    precision = requested
    if requested == "auto":
        precision = "bf16" if has_native_bf16(device) else "fp16" if device.type == "cuda" else "fp32"
    if compute_dtype == torch.float16 and precision == "fp32":
        return "fp16"
    return precision


def describe_precision(requested: str, chosen: str, compute_dtype: torch.dtype) -> str:
    """The summary's words for the precision: what was chosen, and why when the user did not choose it."""
    if chosen == "fp16" and compute_dtype == torch.float16 and requested != "fp16":
        return "fp16 (the MODEL's weights are fp16; loss scaling on)"
    if requested != "auto":
        return chosen + (" with loss scaling" if chosen == "fp16" else "")
    reason = {"bf16": "the GPU has bf16", "fp16": "loss scaling on; the GPU has no bf16",
              "fp32": "no CUDA GPU"}[chosen]
    return f"precision auto: {chosen} ({reason})"


def train_lora(model: TrainableModel, cache: LatentCache, network_config: NetworkConfig,
               optimizer_config: OptimizerConfig, settings: TrainSettings,
               callbacks: TrainCallbacks | None = None, resume: TrainState | None = None,
               validation_cache: LatentCache | None = None,
               distributed: DistributedContext | None = None) -> TrainResult:
    """Train a LoRA; with `resume`, continue a stopped run exactly where its state was taken.

    The validation loss is taken on `validation_cache`, or on the share of `cache` that settings.validation
    holds out (kohya's validation_split), at the steps and epochs it names. With `distributed`, this process
    trains its share of every batch and the gradients are summed over the processes (trainer/distributed.py);
    every process runs every step and ends with the same LoRA."""
    callbacks = callbacks or TrainCallbacks()
    settings = settings.validated()
    optimizer_config = optimizer_config.validated()
    network_config = network_config.validated()
    if settings.scale_weight_norms and (network_config.algorithm not in ("LoRA", "LoCon") or network_config.dora):
        raise ConfigError("scale_weight_norms (kohya's max-norm regularization) is defined for LoRA and LoCon "
                          f"modules; set it to 0 for {network_config.algorithm}"
                          + (" with DoRA." if network_config.dora else "."))
    if settings.validation.split:
        if validation_cache is not None:
            raise ConfigError("Train has both a validation dataset and a validation_split; use one of them (set "
                              "validation_split to 0 to validate on the dataset).")
        cache, validation_cache = split_validation(cache, settings.validation.split,
                                                   settings.validation.seed_for(settings.seed))
    plan = plan_run(cache, settings)
    denoiser = model.denoiser
    if distributed is not None:
        check_splittable(network_config, denoiser.device, distributed)

    network_config = network_config.validated()
    targets = model.targets_for(network_config.uses_convolutions, network_config.train_unet,
                                network_config.train_text_encoder)
    if network_config.uses_convolutions and network_config.train_unet and not model.conv_targets:
        raise ConfigError(f"{network_config.algorithm} also trains convolution layers, and this model offers none; "
                          "choose LoRA.")
    captions = CaptionContexts(model.caption_encoder, cache.samples, denoiser.device, settings.seed,
                               encoder_trains=network_config.train_text_encoder)
    held_out_seed = settings.validation.seed_for(settings.seed)
    validation_captions = None
    if validation_cache is not None:     # encoded now, before the UNet is placed (or, when the text encoder
        validation_captions = validation_contexts(    # trains, at each evaluation, with its LoRA)
            model.caption_encoder, validation_cache, denoiser.device, held_out_seed,
            network_config.train_text_encoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)         # LoRA init draws from the global RNG; fork keeps it ours
        network = LoRANetwork(targets, network_config)
    if network_config.continue_from:
        continue_from_file(network, network_config.continue_from, set(model.conv_targets))
    if model.prepare is not None:
        # e.g. load the UNet onto the GPU once the fixed captions are encoded, keeping room for what training
        # adds (trainer/memory.py); changing captions and a training text encoder keep it loaded beside it
        model.prepare(captions.needs_encoder or validation_captions is not None,
                      training_memory_estimate(model, cache, network, settings))
    if not network_config.continue_from:
        network.start_from_loaded_weights()     # DoRA's magnitude from the weights as the host patched them
    network.to(denoiser.device)
    groups = network.parameter_groups(optimizer_config.learning_rate, optimizer_config.text_encoder_lr,
                                      optimizer_config.loraplus_lr_ratio)
    if all(group["lr"] == 0 for group in groups):
        logger.warning("every learning rate of this run is 0: the LoRA will not change (a baseline run)")
    optimizer, scheduler = build_optimizer(optimizer_config, groups, plan.total_steps)
    logged_group = next((i for i, g in enumerate(groups) if g["name"] == "unet"), 0)   # the lr the chart shows
    read_effective_lr = effective_learning_rate_reader(optimizer)
    stepper = TrainStep(denoiser, network, optimizer, optimizer_config, captions,
                        training_precision(settings.precision, denoiser.device, denoiser.compute_dtype), settings.seed,
                        settings.prior_loss_weight, settings.objective, distributed, settings.flow)
    network.dropouts.generator = stepper.generator      # dropout coins follow the step's saved random stream
    validator = None
    if validation_cache is not None:
        objective = settings.objective
        validator = Validator(validation_cache, stepper, held_out_seed,
                              validation_timesteps(objective.min_timestep, objective.max_timestep),
                              validation_captions)

    def sample(progress: TrainProgress) -> None:
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                callbacks.on_sample(progress)
        finally:
            network.train(was_training)

    def validate(progress: TrainProgress, epoch_end: bool = False) -> None:
        progress.validation_losses.append((progress.step, validator.loss(network)))
        if epoch_end and callbacks.on_validation:       # a step's validation goes out with its on_step
            callbacks.on_validation(progress)
    progress = TrainProgress(validation_images=validator.count if validator else 0)
    # with the precision that runs (what auto became here): a state resumes only on it
    fingerprint = run_fingerprint(cache, network_config, optimizer_config, settings, plan, stepper.precision)
    if resume is not None:
        check_resumable(resume.fingerprint, fingerprint)
        network.load_kohya_state_dict(resume.network)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        stepper.scaler.load_state_dict(resume.scaler)
        stepper.generator.set_state(resume.generator)
        progress.step, progress.epoch = resume.step, resume.step // plan.steps_per_epoch
        progress.losses, progress.learning_rates = list(resume.losses), list(resume.learning_rates)
        progress.effective_learning_rates = list(resume.effective_learning_rates)
        progress.validation_losses = [tuple(pair) for pair in resume.validation_losses]
    rng_state = stepper.generator.get_state()         # matches progress.step: taken after each completed step

    def snapshot() -> TrainState:
        return TrainState(fingerprint, progress.step, list(progress.losses), list(progress.learning_rates),
                          network.kohya_state_dict(), optimizer.state_dict(), scheduler.state_dict(),
                          stepper.scaler.state_dict(), rng_state.clone(), list(progress.effective_learning_rates),
                          list(progress.validation_losses))

    frozen_roots = [model.frozen_root]
    if network_config.train_text_encoder and model.text_encoder_root is not None:
        frozen_roots.append(model.text_encoder_root)     # gradients flow through it to its LoRA modules
    for root in frozen_roots:
        replace_inference_tensors(root)
    first_epoch, done_in_epoch = divmod(progress.step, plan.steps_per_epoch)
    accumulation = plan.accumulation
    with ExitStack() as run_context, network.attached(targets):
        for root in frozen_roots:
            run_context.enter_context(frozen(root))
        if model.training_mode is not None:
            run_context.enter_context(model.training_mode())
        if settings.channels_last:
            run_context.enter_context(channels_last(model.frozen_root))
            stepper.memory_format = torch.channels_last
        if settings.gradient_checkpointing:
            if not model.checkpoint_blocks:
                raise ConfigError("This model offers no blocks to checkpoint; switch gradient_checkpointing off.")
            drawing = network_config.draws_in_forward
            if drawing and settings.torch_compile:
                raise ConfigError("torch_compile cannot trace gradient checkpointing around LoRA modules that draw "
                                  "random numbers (dropouts, DyLoRA): switch one of the three off.")
            run_context.enter_context(checkpointed(model.checkpoint_blocks, stepper.generator if drawing else None,
                                                   model.blocks_update_inputs))
        if settings.torch_compile:             # after the LoRA hooks and checkpointing: both are traced in
            run_context.enter_context(compiled_model(denoiser, settings.dynamo_backend))
        if callbacks.on_ready:
            callbacks.on_ready(ReadyRun(model, network, stepper, captions, cache, plan, settings, optimizer_config,
                                        progress.step))
        try:
            for epoch in range(first_epoch, plan.epochs):
                batches = epoch_batches(cache, settings.batch_size, settings.seed, epoch)
                draws = list(itertools.accumulate((len(b) for b in batches), initial=0))   # first draw of each
                start = done_in_epoch if epoch == first_epoch else 0
                for step_in_epoch in range(start, plan.steps_per_epoch):
                    if progress.step >= plan.total_steps:
                        break
                    if callbacks.check_cancel:
                        callbacks.check_cancel()
                    # kohya / accelerate: each batch's loss divided by the accumulation steps, one optimizer
                    # step per group (an epoch's last group may be shorter)
                    group = range(step_in_epoch * accumulation, min((step_in_epoch + 1) * accumulation,
                                                                    len(batches)))
                    losses = []
                    for batch_index in group:
                        batch = batches[batch_index]
                        batch_captions = [captions.caption_for(sample, epoch, draws[batch_index] + position)
                                          for position, sample in enumerate(batch)]
                        losses.append(stepper.accumulate(batch, progress.step + 1, batch_captions, accumulation))
                    if distributed is not None:     # each process's shares become the batches' losses
                        losses = stepper.sum_shares(losses, progress.step + 1)
                    loss, skipped = stepper.apply(progress.step + 1, sum(losses) / len(losses))
                    if settings.scale_weight_norms:
                        network.apply_max_norm(settings.scale_weight_norms)
                    progress.learning_rates.append(scheduler.get_last_lr()[logged_group])
                    progress.effective_learning_rates.append(read_effective_lr(logged_group))
                    if not skipped:           # accelerate: the schedule does not advance on a skipped fp16 step
                        scheduler.step()
                    progress.step += 1
                    progress.losses.append(loss)
                    rng_state = stepper.generator.get_state()
                    if validator and settings.validation.every_n_steps and \
                            progress.step % settings.validation.every_n_steps == 0:
                        validate(progress)
                    if callbacks.on_step:
                        callbacks.on_step(progress, plan.total_steps)
                    if callbacks.on_sample and settings.sample_every_n_steps and \
                            progress.step % settings.sample_every_n_steps == 0:
                        sample(progress)
                    every = settings.save_every_n_steps
                    if (every and callbacks.on_checkpoint and progress.step % every == 0
                            and progress.step < plan.total_steps):
                        callbacks.on_checkpoint(progress, snapshot(), "step")
                progress.epoch = epoch + 1
                last_epoch = progress.epoch == plan.epochs
                every_epochs = settings.validation.every_n_epochs
                if validator and every_epochs and (progress.epoch % every_epochs == 0 or last_epoch) and \
                        not (progress.validation_losses and progress.validation_losses[-1][0] == progress.step):
                    validate(progress, epoch_end=True)
                if callbacks.on_sample and settings.sample_every_n_epochs and \
                        progress.epoch % settings.sample_every_n_epochs == 0 and \
                        not (settings.sample_every_n_steps and progress.step % settings.sample_every_n_steps == 0):
                    sample(progress)
                if (settings.save_every_n_epochs and not last_epoch and callbacks.on_checkpoint
                        and progress.epoch % settings.save_every_n_epochs == 0):
                    callbacks.on_checkpoint(progress, snapshot(), "epoch")
        except OUT_OF_MEMORY:                  # the optimizer's first step, validation, previews: as in a step
            error = out_of_memory(progress.step + 1)
            if callbacks.on_abort and progress.step > 0:
                try:
                    callbacks.on_abort(progress, snapshot(), error)
                except Exception:
                    logger.exception("could not keep the partially trained LoRA after: %s", error)
            raise error from None
        except BaseException as exc:
            if callbacks.on_abort and progress.step > 0:
                try:
                    callbacks.on_abort(progress, snapshot(), exc)
                except Exception:  # keeping the partial LoRA failed too: report it, but raise the first error
                    logger.exception("could not keep the partially trained LoRA after: %s", exc)
            raise
    progress.finished_at = time.time()
    return TrainResult(network.kohya_state_dict(), progress, plan, settings, network.config, optimizer_config,
                       stepper.precision)


OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
KEPT = (" The LoRA up to the previous step was kept (the -interrupted file); to go on with other settings, start a "
        "new run with Configure LoRA's continue_from set to that file (resume_from continues only with the same "
        "settings).")


def run_objective(denoiser, objective: ObjectiveSettings, flow: FlowSettings):
    """The objective the denoiser's model trains with: kohya's DDPM one (epsilon, v-prediction) or flow matching
    (trainer/flow_objective.py), with the family's timestep sampling and the shift its sampling declares."""
    if denoiser.prediction_type == "flow":
        return build_flow_objective(objective, flow, denoiser.flow_sampling, denoiser.flow_shift)
    return build_objective(objective, denoiser.alphas_cumprod, denoiser.prediction_type, denoiser.device)


def out_of_memory(step: int) -> TrainerError:
    return TrainerError(f"Out of memory at step {step}. Lower batch_size or the bucket resolution, train in bf16, "
                        f"switch gradient_checkpointing on, or close other models.{KEPT}")


class TrainStep:
    """One optimisation step: noise, forward, kohya's loss, backward, clip, step.

    Non-finite losses and gradients stop the run before the optimizer touches the LoRA, so what on_abort
    keeps is the last good LoRA. fp16 compute uses dynamic loss scaling (kohya: Accelerate's GradScaler).
    """

    def __init__(self, denoiser, network: LoRANetwork, optimizer: torch.optim.Optimizer,
                 optimizer_config: OptimizerConfig, captions: CaptionContexts, precision: str, seed: int,
                 prior_loss_weight: float = 1.0, objective: ObjectiveSettings = ObjectiveSettings(),
                 distributed: DistributedContext | None = None, flow: FlowSettings = FlowSettings()):
        self.denoiser, self.network, self.optimizer = denoiser, network, optimizer
        self.objective = run_objective(denoiser, objective, flow)
        # what a flow model's call takes besides the latents and text: Flux dev's guidance input
        self.model_inputs = {"guidance": self.objective.flow.guidance_scale} if denoiser.prediction_type == "flow" \
            else {}
        self.max_grad_norm = optimizer_config.max_grad_norm or float("inf")
        self.captions = captions
        self.precision = precision
        self.prior_loss_weight = prior_loss_weight
        self.generator = torch.Generator().manual_seed(seed)
        self.device = denoiser.device
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.parameters = network.trainable_parameters()
        self.distributed = distributed      # None: the whole batch is this process's
        self.memory_format = torch.contiguous_format    # of the latents given to the model (channels_last)

    def __call__(self, batch, step: int, captions: list[str]) -> float:
        """One batch, one optimizer step; the batch's loss."""
        return self.apply(step, self.accumulate(batch, step, captions))[0]

    def accumulate(self, batch, step: int, captions: list[str], divisor: int = 1) -> torch.Tensor | float:
        """Forward and backward of one batch, its loss divided by `divisor` (gradients add up); the loss, still
        on the device: `apply` reads it back, with the gradient norm, in the step's one host synchronisation."""
        try:
            return self._run(batch, step, captions, divisor)
        except OUT_OF_MEMORY:
            self.optimizer.zero_grad(set_to_none=True)
            raise out_of_memory(step) from None

    def forward_backward(self, batch, step: int, captions: list[str]) -> torch.Tensor | float:
        """accumulate's forward and backward with torch's out-of-memory error left as it is (the plan's warm-up
        passes, trainer/warmup.py, turn it into "will not fit")."""
        return self._run(batch, step, captions)

    def evaluate(self, sample, text, timestep: int, generator: torch.Generator) -> float:
        """The loss of one sample at a fixed timestep, with noise from `generator` (not the step's): no
        gradients, nothing of the training stream touched."""
        denoiser, device = self.denoiser, self.device
        latents = denoiser.scale_latents(sample.latent[None].to(device))
        noisy, timesteps, target = self.objective.noisy_latents_and_target(
            latents, generator, timesteps=torch.tensor([timestep]))
        sizes = [sdxl_size_condition(sample.original_size, sample.bucket)] if text.pooled is not None else None
        autocast = (torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else nullcontext())
        with autocast:
            prediction = denoiser(noisy, timesteps, text.context, pooled=text.pooled, sizes=sizes, **self.model_inputs)
        masks = None if sample.alpha_mask is None else sample.alpha_mask.to(device)[None, None]
        loss = self.objective.per_sample_loss(prediction, target, timesteps, masks)
        return float(self.objective.post_process_loss(loss, timesteps).mean())

    def batch_latents(self, batch) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[bool]]:
        """Each sample's latent, loss mask and whether it is mirrored; with flip augmentation, the mirrored pair
        for a fair coin per sample (kohya).

        The coins come from the step's generator only when the cache has mirrors, so runs without flip draw
        exactly the noise they drew before, and a resumed run draws the same coins.
        """
        if all(sample.latent_flipped is None for sample in batch):
            return [sample.latent for sample in batch], [sample.alpha_mask for sample in batch], [False] * len(batch)
        coins = torch.rand(len(batch), generator=self.generator) < 0.5
        latents, masks, flips = [], [], []
        for sample, flip in zip(batch, coins.tolist()):
            flip = flip and sample.latent_flipped is not None
            latents.append(sample.latent_flipped if flip else sample.latent)
            mask = sample.alpha_mask
            masks.append(mask.flip(-1) if flip and mask is not None else mask)
            flips.append(flip)
        return latents, masks, flips

    def _run(self, batch, step: int, captions: list[str], divisor: int = 1) -> float:
        device, denoiser = self.device, self.denoiser
        sample_latents, sample_masks, flips = self.batch_latents(batch)
        raw = to_device(torch.stack(sample_latents), device, pin=True)
        latents = denoiser.scale_latents(raw)
        noisy, timesteps, target = self.objective.noisy_latents_and_target(latents, self.generator)
        batch_size = len(batch)
        if self.distributed is not None:      # the whole batch's draws above; from here on, this process's share
            share = self.distributed.share(batch_size)
            if share.start == share.stop:     # a batch smaller than the world: the other processes train it
                return 0.0
            batch, captions, flips, sample_masks = batch[share], captions[share], flips[share], sample_masks[share]
            noisy, timesteps, target = noisy[share], timesteps[share], target[share]
        text_groups = self.captions.groups(captions, tile=getattr(denoiser, "tiles_contexts", True))
        sizes = None
        if text_groups[0][1].pooled is not None:     # SDXL: each sample's size conditioning, as kohya's
            sizes = [sdxl_size_condition(sample.original_size, sample.bucket, flip)
                     for sample, flip in zip(batch, flips)]
        weights = to_device(torch.tensor([self.prior_loss_weight if sample.is_reg else 1.0 for sample in batch]),
                            device)
        autocast = (torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else nullcontext())
        with autocast:
            prediction = self.predict(noisy.contiguous(memory_format=self.memory_format), timesteps, text_groups,
                                      sizes)
        masks = None
        if any(mask is not None for mask in sample_masks):      # kohya's alpha_mask: per-pixel loss weights
            masks = torch.stack([mask if mask is not None else torch.ones(raw.shape[-2:]) for mask in sample_masks])
            masks = to_device(masks, device, pin=True)[:, None]
        per_sample = self.objective.per_sample_loss(prediction, target, timesteps, masks) * weights
        per_sample = self.objective.post_process_loss(per_sample, timesteps)
        if self.distributed is not None:
            # this share of the batch's mean: the shares' losses and gradients add up to the whole batch's.
            # Whether it is finite is asked of the sum (sum_shares), which every process sees alike
            loss = per_sample.sum() / batch_size
            self.scaler.scale(loss / divisor).backward()
            return loss.item()
        loss = per_sample.mean()
        # not read back here: a non-finite loss only gives non-finite gradients, and apply() stops the run on
        # it before the optimizer steps
        self.scaler.scale(loss / divisor).backward()
        return loss.detach()

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, text_groups, sizes) -> torch.Tensor:
        """The model's output for the batch: one call, or one per text group (CaptionContexts.groups), put back
        in the batch's order."""
        if len(text_groups) == 1:
            text = text_groups[0][1]
            return self.denoiser(noisy, timesteps, text.context, pooled=text.pooled, sizes=sizes, **self.model_inputs)
        parts, order = [], []
        for indices, text in text_groups:
            rows = torch.tensor(indices, device=noisy.device)
            parts.append(self.denoiser(noisy[rows], timesteps[rows], text.context, pooled=text.pooled,
                                       sizes=None if sizes is None else [sizes[i] for i in indices],
                                       **self.model_inputs))
            order += indices
        return torch.cat(parts)[torch.tensor(order, device=noisy.device).argsort()]

    def diverged(self, value: float, step: int) -> TrainerError:
        return TrainerError(f"The loss became {value} at step {step}. {self.divergence_advice()}{KEPT}")

    def sum_shares(self, losses: list[float], step: int) -> list[float]:
        """The LoRA's gradients and each batch's loss summed over the processes (one all_reduce): every process
        then holds the whole batches' gradients and losses, so all take the same optimizer step, or all stop."""
        totals = self.distributed.sum_gradients(self.parameters, losses)
        for value in totals:
            if not math.isfinite(value):
                self.optimizer.zero_grad(set_to_none=True)
                raise self.diverged(value, step)
        return totals

    def divergence_advice(self) -> str:
        """The likely causes of a loss or gradient that is no longer finite, and what to change."""
        causes = ["the learning rate is too high for this optimizer (lower it; adaptive optimizers want about 1.0, "
                  "the others 1e-4 or less)"]
        if self.precision == "fp16":
            causes.insert(0, "fp16 overflowed (set Train's precision to bf16 on a GPU that has it, or fp32)")
        if not self.max_grad_norm < float("inf"):
            causes.append("gradient clipping is off (set the Optimizer's max_grad_norm to 1.0)")
        return "Likely: " + "; or ".join(causes) + "."

    def apply(self, step: int, loss: torch.Tensor | float) -> tuple[float, bool]:
        """Clip and take the optimizer step on the gradients gathered since the last one, whose mean batch loss
        is `loss`; returns that loss as a number, and True when fp16 loss scaling skipped the step (the
        gradients overflowed).

        The loss and the gradient norm come back to the host together, after the backward pass and before the
        optimizer step: the one synchronisation of a step, the price of stopping on a non-finite loss or
        gradient before it reaches the LoRA (a lagging check would keep a LoRA already spoilt).
        """
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        loss_value, norm_value = torch.stack([torch.as_tensor(loss, dtype=torch.float32, device=norm.device),
                                              norm.float()]).tolist()
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise self.diverged(loss_value, step)
        skipped = False
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)          # skips the step when fp16 gradients overflowed
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale
        elif not math.isfinite(norm_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainerError(f"The gradients became {norm_value} at step {step}. {self.divergence_advice()}{KEPT}")
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, skipped
