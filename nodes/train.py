"""Train: runs the engine on the workflow's MODEL and CLIP and hands back the LoRA in every useful form."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..trainer.atomic_files import write_json_atomic
from ..trainer.errors import ConfigError
from ..trainer.families import FAMILIES, Family
from ..trainer.latent_cache import LatentCache
from ..trainer.loop import (TrainCallbacks, TrainProgress, TrainResult, describe_precision, train_lora,
                           training_precision)
from ..trainer.lora_file import TrainedLora, checked_file_name, new_session_id, save_lora
from ..trainer.loss_plot import draw_loss_plot, image_to_comfy_tensor
from ..trainer.metadata import training_metadata
from ..trainer.networks import NetworkConfig
from ..trainer.optim import OptimizerConfig
from ..trainer.plan import MAX_TOKEN_LENGTHS, PRECISIONS, TrainSettings, plan_run
from ..trainer.resume import TrainState, latest_state_folder, load_state, save_state, state_folder_name
from ..trainer.validation import ValidationSettings
from .comfy_host import ProgressReporter, check_cancel, is_cancel, loras_folder, run_data_folder
from .comfy_model import apply_lora_patches, clip_skip_of, trainable_from_comfy
from .objective_inputs import objective_inputs, objective_settings
from .wire_types import CATEGORY, LoraLatents, LoraNetwork, LoraOptimizer, TrainedLora as TrainedLoraType


FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))


def unused_run_name(name: str) -> str:
    """The output name, or name_2, name_3, ... when a LoRA file or run folder already uses it."""
    base = checked_file_name(name)
    folder = loras_folder()
    candidate, counter = base, 1
    while _run_name_taken(folder, candidate):
        counter += 1
        candidate = f"{base}_{counter}"
    return candidate


def _run_name_taken(folder: str, name: str) -> bool:
    if os.path.exists(run_data_folder(name)) or os.path.exists(os.path.join(folder, name + ".safetensors")):
        return True
    directory, stem = os.path.split(os.path.join(folder, name))
    if not os.path.isdir(directory):
        return False
    return any(entry.startswith(stem + "-") and entry.endswith(".safetensors") for entry in os.listdir(directory))


def check_latents_fit(latents: LatentCache, model, family: Family) -> None:
    """The family's bucket step (64 for SD1.x / SD2.x / SDXL: 3 downsamplings of 8x latents) and latent channels."""
    step = family.bucket_step
    odd = sorted(size for size in latents.buckets if size[0] % step or size[1] % step)
    if odd:
        raise ConfigError(f"Buckets {', '.join(f'{w}x{h}' for w, h in odd)} are not multiples of {step}, which "
                          f"{family.title} needs. Set bucket_reso_steps to {step} in Bucket & Cache Latents.")
    channels = {s.latent.shape[0] for s in latents.samples}
    expected = model.model.model_config.unet_config.get("in_channels", 4)
    if channels != {expected}:
        raise ConfigError(f"The cached latents have {sorted(channels)} channels but this MODEL takes {expected}: "
                          "encode the dataset with the VAE that belongs to this checkpoint.")


@dataclass
class TrainOutputs:
    model: object
    clip: object
    lora: TrainedLora
    loss_image: torch.Tensor
    summary: str
    result: TrainResult


class RunRecorder:
    """Writes what a run leaves behind: intermediate and interrupted LoRAs, resumable states, and the run log.

    Each intermediate save (kohya's names: `<name>-000002` for epochs, `<name>-step00000100` for steps) also
    writes the resumable state beside it and the run log, so a crash (the process killed, power lost) loses at
    most the steps since the last save. `keep_last_n` intermediate saves are kept: older ones of this run
    (this session's, and, when resuming, those its run log lists) are deleted with their states.
    """

    def __init__(self, run_name: str, metadata_for, keep_last_n: int = 0, previous_saves: list | None = None):
        self.run_name = run_name
        self.metadata_for = metadata_for          # (progress) -> ss_* metadata
        self.keep_last_n = keep_last_n
        self.files: list[str] = []
        self.saves: list[tuple[str, str]] = [tuple(pair) for pair in previous_saves or []]   # (LoRA, state)

    def save_lora(self, suffix: str, progress: TrainProgress, tensors) -> str:
        lora = TrainedLora(self.run_name, tensors, self.metadata_for(progress), progress.step, progress.epoch)
        path = save_lora(lora, loras_folder(), self.run_name + suffix, precision="fp16")
        self.files.append(path)
        return path

    def save_checkpoint(self, suffix: str, progress: TrainProgress, state: TrainState) -> None:
        path = self.save_lora(suffix, progress, state.network)
        folder = save_state(os.path.join(run_data_folder(self.run_name), state_folder_name(state.step)), state)
        self.saves.append((path, folder))
        while self.keep_last_n and len(self.saves) > self.keep_last_n:
            old_lora, old_state = self.saves.pop(0)
            for stale in (old_lora, old_state):
                if os.path.isdir(stale):
                    shutil.rmtree(stale, ignore_errors=True)
                elif os.path.isfile(stale):
                    os.remove(stale)
            if old_lora in self.files:
                self.files.remove(old_lora)

    def write_log(self, status: str, progress: TrainProgress, plan_text: str, extra: dict | None = None) -> str:
        record = {"run_name": self.run_name, "status": status, "plan": plan_text, "step": progress.step,
                  "epoch": progress.epoch, "losses": progress.losses, "learning_rates": progress.learning_rates,
                  "validation_losses": [list(pair) for pair in progress.validation_losses],
                  "started_at": progress.started_at, "finished_at": progress.finished_at or time.time(),
                  "files": self.files, "saves": [list(pair) for pair in self.saves], **(extra or {})}
        path = os.path.join(run_data_folder(self.run_name), "run.json")
        write_json_atomic(path, record)
        return path


def previous_run_log(run_name: str) -> dict:
    """A run's run.json, or {} (a run killed before its first save has none)."""
    try:
        with open(os.path.join(run_data_folder(checked_file_name(run_name)), "run.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def resumable_state(run_name: str) -> TrainState:
    """The newest saved state of a run, with an actionable error when there is none."""
    name = checked_file_name(run_name)
    folder = latest_state_folder(run_data_folder(name))
    if folder is None:
        raise ConfigError(f"Run {name!r} has no saved state in {run_data_folder(name)}. A state is saved when a run "
                          "is cancelled or stops on an error; clear resume_from to start a new run.")
    return load_state(folder)


def run_training(model, clip, latents: LatentCache, network: NetworkConfig, optimizer: OptimizerConfig,
                 settings: TrainSettings, node_id: str | None = None, resume_from: str = "",
                 validation_latents: LatentCache | None = None) -> TrainOutputs:
    """The Train node's work, callable without the executor (tests, scripts).

    `resume_from` names a stopped run: it continues from that run's newest state and keeps its name.
    """
    settings = settings.validated()
    trainable = trainable_from_comfy(model, clip, settings.max_token_length)
    check_latents_fit(latents, model, FAMILIES[trainable.base_model_version])
    plan = plan_run(latents, settings)
    clip_skip = clip_skip_of(clip)
    denoiser = trainable.denoiser
    precision = training_precision(settings.precision, denoiser.device, denoiser.compute_dtype)
    resume = resumable_state(resume_from) if resume_from.strip() else None
    run_name = checked_file_name(resume_from) if resume else unused_run_name(settings.output_name)
    session_id = new_session_id()
    prediction_type = denoiser.prediction_type
    fp8_base = any(p.dtype in FP8_DTYPES for p in trainable.frozen_root.parameters())

    def metadata_for(progress: TrainProgress) -> dict[str, str]:
        return training_metadata(run_name=run_name, session_id=session_id, cache=latents, network=network,
                                 optimizer=optimizer, settings=settings, plan=plan, progress=progress,
                                 base_model_version=trainable.base_model_version, prediction_type=prediction_type,
                                 precision=precision, clip_skip=clip_skip, fp8_base=fp8_base)

    recorder = RunRecorder(run_name, metadata_for, settings.keep_last_n,
                           previous_run_log(run_name).get("saves") if resume else None)
    plan_text = "\n".join([f"run {run_name}" + (f", resumed at step {resume.step}" if resume else ""),
                           latents.describe(), network.describe(),
                           optimizer.describe(plan.total_steps, denoiser.device.type), plan.describe(),
                           settings.objective.describe(),
                           f"batch {settings.batch_size}, seed {settings.seed}, "
                           + ("gradient checkpointing, " if settings.gradient_checkpointing else "")
                           + f"{describe_precision(settings.precision, precision, denoiser.compute_dtype)}"
                           + (f", clip skip {clip_skip}" if clip_skip else "")])
    reporter = ProgressReporter(node_id, plan.total_steps)

    session = {"first_step": None, "started": None}

    def on_step(progress: TrainProgress, total: int) -> None:
        loss, lr = progress.losses[-1], progress.learning_rates[-1]
        effective = progress.effective_learning_rates[-1] if progress.effective_learning_rates else lr
        recent = progress.losses[-50:]
        average = sum(recent) / len(recent)
        if session["started"] is None:              # speed from this session's steps (a resume starts later)
            session["first_step"], session["started"] = progress.step - 1, time.perf_counter()
        done = progress.step - session["first_step"]
        speed = done / max(time.perf_counter() - session["started"], 1e-9)
        left = (total - progress.step) / max(speed, 1e-9)
        text = (f"step {progress.step}/{total}  loss {loss:.4f} (avg {average:.4f})  lr {lr:.3g}"
                + (f" (effective {effective:.3g})" if effective != lr else "")
                + f"  {speed:.2f} step/s  {left / 60:.1f} min left")
        event = {"step": progress.step, "total": total, "loss": loss, "average_loss": average, "lr": lr,
                 "effective_lr": effective, "steps_per_second": speed, "seconds_left": left}
        if progress.validation_losses and progress.validation_losses[-1][0] == progress.step:
            event["validation_loss"] = progress.validation_losses[-1][1]
        reporter.update(progress.step, text, event)
        if progress.step % plan.steps_per_epoch == 0 or progress.step == total:
            epoch = -(-progress.step // plan.steps_per_epoch)
            recent = progress.losses[-plan.steps_per_epoch:]
            logging.info("lora-trainer %s: epoch %d/%d, step %d/%d, mean loss %.4f", run_name, epoch, plan.epochs,
                         progress.step, total, sum(recent) / len(recent))

    def on_validation(progress: TrainProgress) -> None:
        step, value = progress.validation_losses[-1]
        logging.info("lora-trainer %s: validation loss %.4f at step %d", run_name, value, step)
        reporter.update(progress.step, f"step {step}/{plan.total_steps}  validation loss {value:.4f}",
                        {"step": step, "total": plan.total_steps, "validation_loss": value})

    def on_checkpoint(progress: TrainProgress, state: TrainState, kind: str) -> None:
        suffix = f"-{progress.epoch:06d}" if kind == "epoch" else f"-step{progress.step:08d}"
        recorder.save_checkpoint(suffix, progress, state)
        recorder.write_log("running", progress, plan_text)

    def on_abort(progress: TrainProgress, state: TrainState, exc: BaseException) -> None:
        # keep what was trained: a loadable LoRA, the state to resume from, and the run log
        path = recorder.save_lora("-interrupted", progress, state.network)
        state_folder = save_state(os.path.join(run_data_folder(run_name), state_folder_name(state.step)), state)
        recorder.write_log("cancelled" if is_cancel(exc) else f"error: {exc}", progress, plan_text,
                           {"interrupted_lora": path, "state": state_folder})

    callbacks = TrainCallbacks(on_step=on_step, check_cancel=check_cancel,
                               on_checkpoint=on_checkpoint, on_abort=on_abort, on_validation=on_validation)
    started = time.perf_counter()
    with torch.inference_mode(False):
        result = train_lora(trainable, latents, network, optimizer, settings, callbacks, resume,
                            validation_cache=validation_latents)
    seconds = time.perf_counter() - started

    metadata = metadata_for(result.progress)
    lora = TrainedLora(run_name, result.tensors, metadata, result.progress.step, result.progress.epoch)
    patched_model, patched_clip = apply_lora_patches(model, clip, result.tensors)
    losses = result.progress.losses
    steps_this_run = result.progress.step - (resume.step if resume else 0)
    summary = "\n".join([
        plan_text,
        f"trained {result.progress.step} step(s), {steps_this_run} in this session in {seconds:.1f} s "
        f"({steps_this_run / max(seconds, 1e-9):.2f} step/s); loss first {losses[0]:.4f}, last {losses[-1]:.4f}, "
        f"mean {sum(losses) / len(losses):.4f}",
        f"{len(lora.module_names)} LoRA modules" + (f"; saved {', '.join(recorder.files)}" if recorder.files else ""),
    ])
    recorder.write_log("finished", result.progress, plan_text, {"seconds": seconds})
    image = image_to_comfy_tensor(draw_loss_plot(losses, title=f"{run_name} loss",
                                                 learning_rates=result.progress.learning_rates,
                                                 effective_learning_rates=result.progress.effective_learning_rates,
                                                 validation_losses=result.progress.validation_losses))
    return TrainOutputs(patched_model, patched_clip, lora, image, summary, result)


class LoRATrain(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoRATrain",
            display_name="Train",
            category=CATEGORY,
            description="Trains a LoRA on the loaded MODEL with kohya's objective. The MODEL and CLIP outputs "
                        "carry the LoRA, so a KSampler after this node previews it; the MODEL that came in "
                        "is left as it was.",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                LoraLatents.Input("latents"),
                LoraNetwork.Input("network"),
                LoraOptimizer.Input("optimizer"),
                io.String.Input("output_name", default="my_lora",
                                tooltip="Name of the run and its files in models/loras; a taken name gets _2, _3..."),
                io.Int.Input("epochs", default=10, min=1, max=10000),
                io.Int.Input("max_steps", default=0, min=0, max=10_000_000,
                             tooltip="Stop after this many steps; 0 = run all epochs."),
                io.Int.Input("batch_size", default=1, min=1, max=256),
                # not named "seed": the frontend would attach randomize-after-generate and retrain every queue
                io.Int.Input("train_seed", display_name="seed", default=42, min=0, max=2**32 - 1,
                             tooltip="Seed for LoRA init, noise, timesteps and batch order."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="auto: bf16 where the GPU has it, else fp16 with loss scaling on a GPU, else "
                                       "fp32 (CPU). bf16/fp16: base model math in autocast, LoRA weights in fp32. "
                                       "The summary says what was used."),
                io.Int.Input("save_every_n_epochs", default=0, min=0, max=10000,
                             tooltip="Also save <name>-<epoch>.safetensors every N epochs; 0 = only at the end."),
                io.String.Input("resume_from", default="", optional=True,
                                tooltip="Name of a cancelled or failed run to continue exactly where it stopped "
                                        "(same settings); it keeps its name. Empty = a new run."),
                io.Float.Input("prior_loss_weight", default=1.0, min=0.0, max=100.0, step=0.05, optional=True,
                               tooltip="Loss weight of regularization images (kohya's prior_loss_weight)."),
                io.Int.Input("gradient_accumulation_steps", default=1, min=1, max=1024, optional=True,
                             tooltip="Batches whose gradients add up to one optimizer step (kohya's); steps per "
                                     "epoch = ceil(batches / this)."),
                io.Boolean.Input("gradient_checkpointing", default=False, optional=True,
                                 tooltip="Recompute the UNet's blocks in the backward pass: much less memory, "
                                         "about a third slower (kohya's gradient_checkpointing)."),
                io.Combo.Input("max_token_length", options=[str(n) for n in MAX_TOKEN_LENGTHS], default="75",
                               optional=True,
                               tooltip="Captions are cut to this many tokens (kohya's max_token_length, default "
                                       "75); 150 / 225 keep longer captions as ComfyUI encodes them, in 75-token "
                                       "chunks."),
                io.Float.Input("scale_weight_norms", default=0.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="Max-norm regularization (kohya's scale_weight_norms, LoRA / LoCon): a "
                                       "module's update norm is kept at or below this after each step; 0 = off, "
                                       "1 is the usual value."),
                io.Int.Input("save_every_n_steps", default=0, min=0, max=10_000_000, optional=True,
                             tooltip="Also save <name>-step<step>.safetensors every N steps; 0 = off. Each save "
                                     "also keeps a state to resume from, so a crash loses at most the steps since."),
                io.Int.Input("keep_last_n", default=0, min=0, max=10000, optional=True,
                             tooltip="Keep only the last N intermediate saves (and their states) of this run; "
                                     "0 = keep all."),
                *objective_inputs(),
                LoraLatents.Input("validation_latents", optional=True,
                                  tooltip="Held-out images (their own Load Dataset -> Bucket & Cache chain) whose loss "
                                          "is taken at kohya's fixed timesteps and noise, to pick the best epoch."),
                io.Float.Input("validation_split", default=0.0, min=0.0, max=0.9, step=0.05, optional=True,
                               tooltip="Or hold out this share of each training folder's images (kohya's "
                                       "validation_split); 0 = off."),
                io.Int.Input("validation_seed", default=-1, min=-1, max=2**31 - 1, optional=True,
                             tooltip="Seed of the held-out choice and the validation noise; -1 = the training seed."),
                io.Int.Input("validate_every_n_steps", default=0, min=0, max=10_000_000, optional=True,
                             tooltip="Also take the validation loss every N steps; 0 = only at epoch ends."),
                io.Int.Input("validate_every_n_epochs", default=1, min=0, max=10000, optional=True,
                             tooltip="Take the validation loss every N epochs (and at the last); 0 = not per epoch."),
            ],
            outputs=[
                io.Model.Output(display_name="model"),
                io.Clip.Output(display_name="clip"),
                TrainedLoraType.Output(display_name="lora"),
                io.Image.Output(display_name="loss_graph"),
                io.String.Output(display_name="summary"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, latents, network, optimizer, output_name, epochs, max_steps, batch_size,
                train_seed, precision, save_every_n_epochs, resume_from="", prior_loss_weight=1.0,
                gradient_accumulation_steps=1, gradient_checkpointing=False, max_token_length="75",
                scale_weight_norms=0.0, save_every_n_steps=0, keep_last_n=0, validation_latents=None,
                validation_split=0.0, validation_seed=-1, validate_every_n_steps=0, validate_every_n_epochs=1,
                **loss_and_noise) -> io.NodeOutput:
        objective = objective_settings(loss_and_noise)
        validation = ValidationSettings(split=validation_split, seed=validation_seed,
                                        every_n_steps=validate_every_n_steps, every_n_epochs=validate_every_n_epochs)
        settings = TrainSettings(output_name=output_name, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                                 seed=train_seed, precision=precision, save_every_n_epochs=save_every_n_epochs,
                                 prior_loss_weight=prior_loss_weight,
                                 gradient_accumulation_steps=gradient_accumulation_steps,
                                 gradient_checkpointing=gradient_checkpointing,
                                 max_token_length=int(max_token_length), scale_weight_norms=scale_weight_norms,
                                 objective=objective, save_every_n_steps=save_every_n_steps, keep_last_n=keep_last_n,
                                 validation=validation)
        out = run_training(model, clip, latents, network, optimizer, settings, node_id=cls.hidden.unique_id,
                           resume_from=resume_from or "", validation_latents=validation_latents)
        return io.NodeOutput(out.model, out.clip, out.lora, out.loss_image, out.summary,
                             ui={"text": [out.summary]})

