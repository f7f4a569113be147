"""What a run will do and what it needs, said before its first step.

- The plan: the dataset (images and repeats per folder, the regularization balance), buckets and batches per
  epoch, total steps with kohya's formula written out, epochs, the intermediate saves (steps and file names),
  the learning-rate schedule, the trained modules (count, parameters, bytes) and the precision of each part.
- The estimate: seconds per step and the run's time, from warm-up passes on the largest bucket
  (trainer/warmup.py); peak device memory, measured where the device reports it (CUDA), else computed from the
  weights, the LoRA and its gradients, the optimizer's state and the activations the warm-up kept.
- Every warning in one list, each saying what to change.
- A stop before training when the memory estimate exceeds what is free, naming the settings that would help.

Everything here reads the run; nothing changes it (the warm-up puts back what it touches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ConfigError
from .flow_objective import FlowSettings
from .latent_cache import LatentCache
from .loop import ReadyRun
from .memory import LORA_BYTES_PER_PARAMETER
from .plan import TrainPlan, TrainSettings
from .warmup import WarmupMeasure, measure_warmup

GIB = 1024 ** 3
FP8_DTYPES = {getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)}
WARMUP_PASSES = 3                  # the first warms caches (and compiles); the median of the rest is the step time
SAVED_FILE_PRECISION = "fp16"      # the intermediate saves' (trainer/session.py RunRecorder.save_lora)


@dataclass(frozen=True)
class SavePoint:
    step: int
    kind: str                      # "epoch" or "step"
    file_name: str


def save_points(plan: TrainPlan, settings: TrainSettings, run_name: str, after_step: int = 0) -> list[SavePoint]:
    """The intermediate saves the loop makes (trainer/loop.py): every save_every_n_steps steps before the last
    one, and at the end of every save_every_n_epochs-th epoch but the last; the final file is the Save node's."""
    points = []
    per_epoch = plan.steps_per_epoch
    for step in range(after_step + 1, plan.total_steps + 1):
        every = settings.save_every_n_steps
        if every and step % every == 0 and step < plan.total_steps:
            points.append(SavePoint(step, "step", f"{run_name}-step{step:08d}.safetensors"))
        if step % per_epoch == 0 or step == plan.total_steps:
            epoch = -(-step // per_epoch)
            every_epochs = settings.save_every_n_epochs
            if every_epochs and epoch != plan.epochs and epoch % every_epochs == 0:
                points.append(SavePoint(step, "epoch", f"{run_name}-{epoch:06d}.safetensors"))
    return points


def describe_save_points(points: list[SavePoint], keep_last_n: int) -> str:
    if not points:
        return "intermediate saves: none (the final LoRA is the Save node's)"
    shown = points if len(points) <= 6 else points[:3] + points[-2:]
    names = ", ".join(f"step {p.step}: {p.file_name}" for p in shown)
    if len(shown) < len(points):
        names = names.replace(f", step {shown[3].step}", f", ... ({len(points) - 5} more), step {shown[3].step}", 1)
    keep = f"; only the last {keep_last_n} kept" if keep_last_n else ""
    return f"intermediate saves ({len(points)}, LoRA {SAVED_FILE_PRECISION} + resumable state each{keep}): {names}"


def step_formula(cache: LatentCache, plan: TrainPlan, batch_size: int) -> str:
    """kohya's count written out: per bucket ceil(images x repeats / batch), summed; / accumulation; x epochs."""
    counts = sorted(cache.bucket_counts().items())
    terms = [f"{w}x{h}: ceil({count}/{batch_size}) = {math.ceil(count / batch_size)}" for (w, h), count in counts]
    shown = terms if len(terms) <= 6 else terms[:5] + [f"... {len(terms) - 5} more bucket(s)"]
    text = f"batches per epoch = sum over buckets of ceil(images x repeats / batch {batch_size}): " + \
        "; ".join(shown) + f" -> {plan.batches_per_epoch}"
    if plan.accumulation > 1:
        text += (f"; steps per epoch = ceil({plan.batches_per_epoch} / gradient accumulation {plan.accumulation}) = "
                 f"{plan.steps_per_epoch}")
    return text


def format_bytes(count: int) -> str:
    return f"{count / GIB:.2f} GiB" if count >= GIB // 4 else f"{count / 2 ** 20:.1f} MiB"


def parameter_bytes(parameters) -> tuple[int, int]:
    parameters = list(parameters)
    return sum(p.numel() for p in parameters), sum(p.numel() * p.element_size() for p in parameters)


def describe_modules(ready: ReadyRun) -> str:
    network = ready.network
    lora_count, lora_bytes = parameter_bytes(network.trainable_parameters())
    frozen_count, frozen_bytes = parameter_bytes(ready.model.frozen_root.parameters())
    return (f"trained: {len(network.lora_modules)} LoRA modules, {lora_count:,} parameters, "
            f"{format_bytes(lora_bytes)}; frozen model: {frozen_count:,} parameters, {format_bytes(frozen_bytes)}")


def describe_precision(ready: ReadyRun) -> str:
    stored = sorted({str(p.dtype).replace("torch.", "") for p in ready.model.frozen_root.parameters()})
    compute = ready.stepper.precision
    lora = sorted({str(p.dtype).replace("torch.", "") for p in ready.network.trainable_parameters()})
    return (f"precision: base weights stored {'/'.join(stored)}, computed in {compute}; LoRA {'/'.join(lora)} "
            f"(its gradients and optimizer state too); intermediate files {SAVED_FILE_PRECISION}")


# ---- warnings ----------------------------------------------------------------------------------------------------

def run_warnings(ready: ReadyRun, device_type: str) -> list[str]:
    """Every warning of the run in one list: the settings' own (network, optimizer, dataset) and the run's."""
    network_config = ready.network.config
    found = list(network_config.warnings()) + list(ready.optimizer_config.warnings(device_type))
    dataset = ready.cache.dataset
    found.extend(dataset.warnings)
    for subset in dataset.subsets:
        missing = len(subset.images) - subset.captions_from_files
        if missing and not subset.is_reg:
            found.append(f"{missing} image(s) in {subset.name} have no {subset.caption_extension} caption file and "
                         f"train on the folder's class tokens '{subset.class_tokens}'; add caption files if that "
                         "is not what you want.")
    for subset in dataset.subsets:
        options = subset.caption_options
        if options.keep_tokens and not options.processes_tags:
            found.append(f"keep_tokens {options.keep_tokens} in {subset.name} does nothing: it keeps the first tags "
                         "in place when captions are shuffled or tags dropped, and neither is on (shuffle_caption, "
                         "caption_tag_dropout_rate).")
    if ready.model.denoiser.prediction_type != "flow" and ready.settings.flow != FlowSettings():
        found.append("timestep_sampling / discrete_flow_shift / weighting_scheme / guidance_scale are set, but this "
                     "MODEL is not a flow-matching model: they are ignored (its objective is kohya's DDPM one).")
    broken = [sample.image_path for sample in ready.cache.samples
              if torch.is_tensor(sample.latent) and not bool(torch.isfinite(sample.latent).all())]
    if broken:
        found.append(f"{len(broken)} cached latent(s) hold NaN or infinite values ({broken[0]}...): the VAE "
                     "overflowed while encoding, as SDXL's VAE does in fp16. Re-cache with the VAE in fp32 or bf16 "
                     "(ComfyUI's --fp32-vae / --bf16-vae) or the fp16-fix SDXL VAE, else the loss turns NaN.")
    skipped = len(ready.cache.skipped) + len(dataset.skipped)
    if skipped:
        found.append(f"{skipped} file(s) were left out of the dataset (listed with the reason in Load Dataset "
                     "Folder's and Bucket & Cache Latents' summaries).")
    optimizer = ready.optimizer_config
    if network_config.train_on == "unet" and optimizer.text_encoder_lr not in (0, type(optimizer)().text_encoder_lr):
        found.append(f"text_encoder_lr is {optimizer.text_encoder_lr:g}, but the LoRA trains the UNet only "
                     "(Configure LoRA's train_on): it is not used.")
    settings = ready.settings
    frozen_dtypes = {p.dtype for p in ready.model.frozen_root.parameters()}
    if frozen_dtypes & FP8_DTYPES and not settings.gradient_checkpointing:
        found.append("fp8 base weights without gradient checkpointing: each layer's weight is cast for its compute "
                     "and the backward keeps every cast copy, so fp8 saves no memory; switch "
                     "gradient_checkpointing on.")
    if ready.model.denoiser.prediction_type == "flow" and ready.captions.changing:
        found.append("caption shuffle / dropout with a flow-matching model keeps its text encoders (T5, an LLM) on "
                     "the device to encode each step's caption; fixed captions are encoded once and let them go.")
    return found


# ---- the estimate ------------------------------------------------------------------------------------------------

def optimizer_state_bytes(optimizer_type: str) -> int:
    """Bytes of optimizer state per trainable parameter once it has stepped (rough for the factored ones)."""
    name = optimizer_type
    if "8bit" in name:
        return 1 if "Lion" in name else 2
    if name.startswith("Prodigy"):
        return 16                      # exp_avg, exp_avg_sq, s, p0
    if name.startswith("DAdapt"):
        return 8 if "Lion" in name or "SGD" in name else 12
    if "Lion" in name or name.startswith("SGD"):
        return 4
    if name == "Adafactor":
        return 1                       # factored second moments
    return 8                           # Adam's two moments


@dataclass(frozen=True)
class Estimate:
    step_seconds: float | None         # one optimizer step on the largest bucket
    total_seconds: float | None        # the steps left, at that rate
    peak_bytes: int                    # the run's device memory at its largest bucket, weights included
    measured: bool                     # peak measured by the device (CUDA), else computed
    parts: dict[str, int]              # computed: weights, LoRA + gradients, optimizer state, activations
    budget_bytes: int | None           # what the run may use, where known
    out_of_memory: bool = False        # a warm-up pass ran out of memory

    @property
    def fits(self) -> bool:
        return not self.out_of_memory and (self.budget_bytes is None or self.peak_bytes <= self.budget_bytes)


def estimate_run(ready: ReadyRun, measure: WarmupMeasure, budget: Callable[[torch.device, int], int | None]
                 ) -> Estimate:
    network_parameters, _ = parameter_bytes(ready.network.trainable_parameters())
    weights = sum(t.numel() * t.element_size() for t in (*ready.model.frozen_root.parameters(),
                                                          *ready.model.frozen_root.buffers()))
    lora = network_parameters * (LORA_BYTES_PER_PARAMETER // 2)       # fp32 weights and their gradients
    state = network_parameters * optimizer_state_bytes(ready.optimizer_config.optimizer_type)
    activations = measure.saved_bytes
    forward = getattr(ready.model.denoiser, "forward_memory", None)
    if ready.settings.gradient_checkpointing and forward is not None:
        # a block's recomputation and its backward need about one forward's working memory (the host's figure)
        width, height = measure.bucket
        channels = next(iter(ready.cache.samples)).latent.shape[0]
        activations += int(forward((measure.batch_size, channels, height // 8, width // 8)))
    parts = {"weights": weights, "LoRA + gradients": lora, "optimizer state": state, "activations": activations}
    measured = measure.device_peak is not None
    peak = measure.device_peak + state if measured else sum(parts.values())
    step = measure.step_seconds
    step_seconds = None if step is None else step * ready.plan.accumulation
    left = ready.plan.total_steps - ready.first_step
    resident = (measure.device_before if measured else weights + lora // 2)
    return Estimate(step_seconds, None if step_seconds is None else step_seconds * left, peak, measured, parts,
                    budget(ready.stepper.device, resident), measure.out_of_memory)


def free_memory_budget(device: torch.device, resident: int) -> int | None:
    """What a run may hold on `device` in all: what it holds already (`resident`) and what is free. CUDA: the
    driver's free memory and the allocator's cached blocks; a CPU: MemAvailable (Linux); else unknown."""
    if device.type == "cuda":       # the peak is the allocator's own count: all it holds, and what is free
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return resident + int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def describe_estimate(estimate: Estimate, measure: WarmupMeasure, total_steps: int) -> str:
    width, height = measure.bucket
    lines = []
    if estimate.step_seconds is not None:
        lines.append(f"estimate: {estimate.step_seconds:.3g} s/step at the largest bucket {width}x{height}, batch "
                     f"{measure.batch_size} (median of {max(len(measure.seconds) - 1, 1)} warm-up pass(es)), so at "
                     f"most {format_duration(estimate.total_seconds)} for {total_steps} step(s), not counting "
                     "validation, previews and saves")
    how = "measured on the device during the warm-up, plus the optimizer state" if estimate.measured else \
        "computed: " + ", ".join(f"{name} {format_bytes(value)}" for name, value in estimate.parts.items())
    memory = f"memory: peak {format_bytes(estimate.peak_bytes)} ({how})"
    if estimate.budget_bytes is not None:
        memory += f"; {format_bytes(estimate.budget_bytes)} available"
    lines.append(memory)
    return "\n".join(lines)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fit_advice(ready: ReadyRun, measure: WarmupMeasure) -> list[str]:
    """The settings that would lower the run's memory, of those it does not use yet."""
    settings, advice = ready.settings, []
    if settings.batch_size > 1:
        advice.append(f"batch_size {settings.batch_size} -> 1 (gradient_accumulation_steps keeps the batch)")
    width, height = measure.bucket
    if width * height > 512 * 512:
        advice.append(f"a lower resolution (the largest bucket is {width}x{height}: Bucket & Cache Latents' "
                      "resolution / max_bucket_reso)")
    if not settings.gradient_checkpointing:
        advice.append("gradient_checkpointing on")
    if "8bit" not in ready.optimizer_config.optimizer_type and ready.optimizer_config.optimizer_type != "Adafactor":
        advice.append("optimizer AdamW8bit (8-bit state)")
    if ready.stepper.precision == "fp32" and ready.stepper.device.type == "cuda":
        advice.append("precision bf16")
    if not {p.dtype for p in ready.model.frozen_root.parameters()} & FP8_DTYPES:
        advice.append("fp8 base weights (Load Diffusion Model's weight_dtype fp8_e4m3fn)")
    return advice


class WillNotFit(ConfigError):
    """The plan's stop before training: the run's memory estimate exceeds what is available."""


def not_fitting(ready: ReadyRun, estimate: Estimate, measure: WarmupMeasure) -> WillNotFit:
    device = ready.stepper.device
    if estimate.out_of_memory:
        found = f"a warm-up pass at the largest bucket ran out of memory on {device}"
    else:
        found = (f"the estimated peak, {format_bytes(estimate.peak_bytes)}, is more than the "
                 f"{format_bytes(estimate.budget_bytes)} available on {device}")
    advice = fit_advice(ready, measure)
    return WillNotFit(f"This run will not fit: {found}. Nothing was trained or written. To make it fit: "
                       + ("; ".join(advice) if advice else "close other models or use a larger device") + ".")


# ---- the whole of it ---------------------------------------------------------------------------------------------

class PlanOnly(Exception):
    """Raised after the plan when the run was asked for its plan only (TrainSettings.plan_only)."""

    def __init__(self, text: str):
        super().__init__("plan only")
        self.text = text


@dataclass(frozen=True)
class Preflight:
    text: str
    warnings: tuple[str, ...]
    estimate: Estimate
    measure: WarmupMeasure


def preflight(ready: ReadyRun, run_name: str, clock: Callable[[], float],
              budget: Callable[[torch.device, int], int | None] = free_memory_budget,
              passes: int = WARMUP_PASSES) -> Preflight:
    """The plan, the estimate and the warnings of a run ready to start (module docstring)."""
    frozen = [ready.model.frozen_root]
    if ready.model.text_encoder_root is not None:      # a training text encoder's weights are no activations
        frozen.append(ready.model.text_encoder_root)
    measure = measure_warmup(ready.stepper, ready.network.trainable_parameters(), frozen,
                             ready.cache, ready.captions, ready.settings.batch_size, passes, clock)
    estimate = estimate_run(ready, measure, budget)
    warnings = run_warnings(ready, ready.stepper.device.type)
    points = save_points(ready.plan, ready.settings, run_name, ready.first_step)
    lines = [ready.cache.dataset.describe(), step_formula(ready.cache, ready.plan, ready.settings.batch_size),
             describe_save_points(points, ready.settings.keep_last_n),
             describe_modules(ready), describe_precision(ready),
             describe_estimate(estimate, measure, ready.plan.total_steps - ready.first_step)]
    if warnings:
        lines.append(f"{len(warnings)} warning(s) before step one:")
        lines.extend(f"  - {warning}" for warning in warnings)
    else:
        lines.append("no warnings")
    return Preflight("\n".join(lines), tuple(warnings), estimate, measure)
