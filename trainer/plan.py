"""Step counts and batch order, as kohya computes them."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import ConfigError
from .flow_objective import FlowSettings
from .latent_cache import CachedSample, LatentCache, batches_per_epoch
from .objective_settings import ObjectiveSettings
from .validation import ValidationSettings

# auto: bf16 where the device has it natively, else fp16 with loss scaling on CUDA, else fp32 (see
# loop.training_precision). fp16 and bf16 are autocast with fp32 LoRA weights.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_TOKEN_LENGTHS = (75, 150, 225)


@dataclass(frozen=True)
class TrainSettings:
    """The Train node's run settings."""

    output_name: str = "my_lora"
    epochs: int = 10                 # kohya's max_train_epochs: when above 0 it decides the run's length
    max_steps: int = 0               # kohya's max_train_steps: the run's length when epochs is 0
    batch_size: int = 1
    seed: int = 42
    precision: str = "auto"          # one of PRECISIONS; what it becomes on the device: loop.training_precision
    save_every_n_epochs: int = 0     # 0: only the final LoRA
    save_every_n_steps: int = 0      # kohya's save_every_n_steps; 0: off
    keep_last_n: int = 0             # intermediate saves kept (each with its resumable state); 0: all
    prior_loss_weight: float = 1.0   # kohya's --prior_loss_weight: the loss weight of regularization images
    gradient_accumulation_steps: int = 1   # batches whose gradients add up to one optimizer step (kohya's)
    gradient_checkpointing: bool = False   # recompute the model's blocks in the backward pass (less memory)
    torch_compile: bool = False      # kohya's --torch_compile: the model through torch.compile, the LoRA inside
    dynamo_backend: str = "inductor"   # kohya's --dynamo_backend: the torch.compile backend
    channels_last: bool = False      # the model's convolutions and the latents in NHWC (trainer/memory_format.py)
    max_token_length: int = 75       # kohya's: captions are cut to 75, 150 or 225 tokens (its default 75)
    scale_weight_norms: float = 0.0  # kohya's max-norm regularization of each module's update; 0 = off
    objective: ObjectiveSettings = ObjectiveSettings()   # loss type, min-SNR, noise offset, timesteps...
    validation: ValidationSettings = ValidationSettings()   # held-out share, seed and cadence of validation
    flow: FlowSettings = FlowSettings()   # flow-matching models only: timestep sampling, shift, guidance
    sample_every_n_steps: int = 0    # kohya's sample_every_n_steps / _epochs: in-training previews; 0 = off
    sample_every_n_epochs: int = 0
    plan_only: bool = False          # stop after the plan and its estimate (trainer/preflight.py): nothing trains

    def validated(self) -> "TrainSettings":
        if self.epochs < 0 or self.max_steps < 0:
            raise ConfigError("epochs and max_steps must be 0 or more.")
        if not self.epochs and not self.max_steps:
            raise ConfigError("epochs and max_steps are both 0: set epochs (the run's length in epochs) or, with "
                              "epochs 0, max_steps (its length in steps), as kohya's max_train_epochs / "
                              "max_train_steps.")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size is {self.batch_size}; it must be 1 or more.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not available; choose one of {', '.join(PRECISIONS)}.")
        if self.sample_every_n_steps < 0 or self.sample_every_n_epochs < 0:
            raise ConfigError("sample_every_n_steps and sample_every_n_epochs must be 0 (off) or more.")
        if self.save_every_n_epochs < 0 or self.save_every_n_steps < 0 or self.keep_last_n < 0:
            raise ConfigError("save_every_n_epochs, save_every_n_steps and keep_last_n must be 0 (off) or more.")
        if not self.prior_loss_weight >= 0:
            raise ConfigError(f"prior_loss_weight is {self.prior_loss_weight}; it must be 0 or more (kohya: 1.0).")
        if self.gradient_accumulation_steps < 1:
            raise ConfigError(f"gradient_accumulation_steps is {self.gradient_accumulation_steps}; it must be 1 or "
                              "more (1 = a step per batch).")
        if not self.scale_weight_norms >= 0:
            raise ConfigError(f"scale_weight_norms is {self.scale_weight_norms}; use 0 (off) or a positive norm "
                              "(kohya suggests 1).")
        self.objective.validated()
        self.validation.validated()
        self.flow.validated()
        if self.max_token_length not in MAX_TOKEN_LENGTHS:
            raise ConfigError(f"max_token_length is {self.max_token_length}; kohya offers "
                              f"{', '.join(map(str, MAX_TOKEN_LENGTHS))}.")
        return self


@dataclass(frozen=True)
class TrainPlan:
    batches_per_epoch: int           # kohya's len(train_dataloader): batches, not optimizer steps
    epochs: int
    total_steps: int                 # optimizer steps
    accumulation: int = 1            # batches per optimizer step
    ignored_max_steps: int = 0       # a max_steps that epochs overrode (said in the plan)

    @property
    def steps_per_epoch(self) -> int:
        """kohya: ceil(batches per epoch / gradient accumulation steps); an epoch's last step may take fewer."""
        return -(-self.batches_per_epoch // self.accumulation)

    def describe(self) -> str:
        if self.accumulation == 1:
            text = (f"{self.batches_per_epoch} step(s) per epoch x {self.epochs} epoch(s) = "
                    f"{self.total_steps} step(s)")
        else:
            text = (f"{self.batches_per_epoch} batch(es) per epoch, {self.accumulation} per step: "
                    f"{self.steps_per_epoch} step(s) per epoch x {self.epochs} epoch(s) = {self.total_steps} step(s)")
        if self.ignored_max_steps:
            text += (f" (max_steps {self.ignored_max_steps} not used: epochs decide, as kohya's max_train_epochs "
                     "overrides max_train_steps; set epochs to 0 to train by steps)")
        return text


def plan_run(cache: LatentCache, settings: TrainSettings) -> TrainPlan:
    """kohya: batches per epoch = sum over buckets of ceil(images x repeats / batch); steps per epoch =
    ceil(batches / gradient accumulation steps); epochs (max_train_epochs) decide the length when set, else
    max_steps (max_train_steps), the last epoch then cut short."""
    per_epoch = batches_per_epoch(cache, settings.batch_size)
    if per_epoch == 0:
        raise ConfigError("The latent cache holds no images; check the dataset node.")
    accumulation = settings.gradient_accumulation_steps
    steps_per_epoch = -(-per_epoch // accumulation)
    if settings.epochs:              # kohya: max_train_epochs, when given, overrides max_train_steps
        return TrainPlan(per_epoch, settings.epochs, settings.epochs * steps_per_epoch, accumulation,
                         ignored_max_steps=settings.max_steps)
    total = settings.max_steps
    return TrainPlan(per_epoch, -(-total // steps_per_epoch), total, accumulation)


def epoch_batches(cache: LatentCache, batch_size: int, seed: int, epoch: int) -> list[list[CachedSample]]:
    """One epoch's batches: each image `repeats` times, never mixing buckets, order reshuffled per epoch.

    As kohya's shuffle_buckets: a generator seeded with seed + epoch shuffles each bucket's contents and
    then the list of bucket-batches.
    """
    rng = random.Random(seed + epoch)
    batches = []
    for size in sorted(cache.buckets):
        expanded = [sample for sample in cache.buckets[size] for _ in range(sample.repeats)]
        rng.shuffle(expanded)
        batches.extend(expanded[i:i + batch_size] for i in range(0, len(expanded), batch_size))
    rng.shuffle(batches)
    return batches
