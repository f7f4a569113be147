"""A training run as a whole, for every host (the Train node, the command line): its name, where its files
go, its record, resuming it, its intermediate saves, progress, and its summary.

The host hands in the model (a trainer.interfaces.TrainableModel), the run folders, where progress goes and
how Cancel is asked; everything else here is ComfyUI-free.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import torch
from PIL import Image

from .atomic_files import write_json_atomic
from .distributed import DistributedContext
from .errors import ConfigError, TrainerError
from .families import FAMILIES, Family
from .flow_objective import check_flow_objective
from .interfaces import TrainableModel
from .latent_cache import LatentCache
from .loop import (ReadyRun, TrainCallbacks, TrainProgress, TrainResult, describe_precision, train_lora,
                   training_precision)
from .preflight import FP8_DTYPES, PlanOnly, describe_estimate, free_memory_budget, not_fitting, preflight
from .lora_file import TrainedLora, new_session_id, save_lora
from .loss_plot import draw_loss_plot
from .metadata import training_metadata
from .networks import NetworkConfig
from .optim import OptimizerConfig
from .paths import checked_run_name
from .plan import TrainPlan, TrainSettings, plan_run
from .resume import TrainState, latest_state_folder, load_state, save_state, state_folder_name



@dataclass(frozen=True)
class RunFolders:
    """Where a run's files go: LoRA files into `loras` (ComfyUI's loras folder), the run log and states into
    `runs`/<run name>/ (ComfyUI's output/lora-trainer/)."""

    loras: str
    runs: str

    def run_folder(self, run_name: str) -> str:
        return os.path.join(self.runs, run_name)


class ProgressSink(Protocol):
    """Where progress goes: a progress bar, a text line and an event per step (ComfyUI's, a terminal's)."""

    def update(self, value: int, text: str | None = None, event: dict | None = None) -> None: ...


@dataclass
class SessionResult:
    run_name: str
    lora: TrainedLora | None            # None: a plan-only run (summary is the plan)
    loss_image: Image.Image | None
    summary: str
    result: TrainResult | None

    @property
    def planned_only(self) -> bool:
        return self.lora is None


AVERAGE_WINDOW = 50


def unused_run_name(folders: RunFolders, name: str) -> str:
    """The output name, or name_2, name_3, ... when a LoRA file or run folder already uses it."""
    base = checked_run_name(name)
    candidate, counter = base, 1
    while _run_name_taken(folders, candidate):
        counter += 1
        candidate = f"{base}_{counter}"
    return candidate


def _run_name_taken(folders: RunFolders, name: str) -> bool:
    if os.path.exists(folders.run_folder(name)) or os.path.exists(os.path.join(folders.loras, name + ".safetensors")):
        return True
    directory, stem = os.path.split(os.path.join(folders.loras, name))
    if not os.path.isdir(directory):
        return False
    return any(entry.startswith(stem + "-") and entry.endswith(".safetensors") for entry in os.listdir(directory))


def check_latents_fit(latents: LatentCache, family: Family) -> None:
    """The family's bucket step (64 for SD1.x / SD2.x / SDXL: 3 downsamplings of 8x latents) and latent channels."""
    step = family.bucket_step
    odd = sorted(size for size in latents.buckets if size[0] % step or size[1] % step)
    if odd:
        raise ConfigError(f"Buckets {', '.join(f'{w}x{h}' for w, h in odd)} are not multiples of {step}, which "
                          f"{family.title} needs. Set bucket_reso_steps to {step} in Bucket & Cache Latents.")
    channels = {s.latent.shape[0] for s in latents.samples}
    if channels != {family.latent_channels}:
        raise ConfigError(f"The cached latents have {sorted(channels)} channels but this MODEL takes "
                          f"{family.latent_channels}: encode the dataset with the VAE that belongs to this checkpoint.")


class RunRecorder:
    """Writes what a run leaves behind: intermediate and interrupted LoRAs, resumable states, and the run log.

    Each intermediate save (kohya's names: `<name>-000002` for epochs, `<name>-step00000100` for steps) also
    writes the resumable state beside it and the run log, so a crash (the process killed, power lost) loses at
    most the steps since the last save. `keep_last_n` intermediate saves are kept: older ones of this run
    (this session's, and, when resuming, those its run log lists) are deleted with their states.
    """

    def __init__(self, folders: RunFolders, run_name: str, metadata_for, keep_last_n: int = 0,
                 previous_saves: list | None = None):
        self.folders = folders
        self.run_name = run_name
        self.metadata_for = metadata_for          # (progress) -> ss_* metadata
        self.keep_last_n = keep_last_n
        self.files: list[str] = []
        self.saves: list[tuple[str, str]] = [tuple(pair) for pair in previous_saves or []]   # (LoRA, state)

    def save_lora(self, suffix: str, progress: TrainProgress, tensors) -> str:
        lora = TrainedLora(self.run_name, tensors, self.metadata_for(progress), progress.step, progress.epoch)
        path = save_lora(lora, self.folders.loras, self.run_name + suffix, precision="fp16")
        self.files.append(path)
        return path

    def save_checkpoint(self, suffix: str, progress: TrainProgress, state: TrainState) -> None:
        path = self.save_lora(suffix, progress, state.network)
        folder = save_state(os.path.join(self.folders.run_folder(self.run_name), state_folder_name(state.step)), state)
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
        path = os.path.join(self.folders.run_folder(self.run_name), "run.json")
        write_json_atomic(path, record)
        return path


def previous_run_log(folders: RunFolders, run_name: str) -> dict:
    """A run's run.json, or {} (a run killed before its first save has none). `run_name` is a checked name or
    one of the run folder's own entries."""
    try:
        with open(os.path.join(folders.run_folder(run_name), "run.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def is_run_name(name: str) -> bool:
    try:
        return checked_run_name(name) == name
    except ConfigError:
        return False


def resumable_runs(folders: RunFolders) -> list[tuple[str, int]]:
    """(run name, newest saved step) of every run with a state to resume from, newest runs first."""
    if not os.path.isdir(folders.runs):
        return []
    found = []
    for name in os.listdir(folders.runs):
        if not is_run_name(name):                   # cache/, or a folder someone else put there
            continue
        state = latest_state_folder(folders.run_folder(name))
        if state is not None and previous_run_log(folders, name).get("status") != "finished":
            found.append((os.path.getmtime(state), name, int(os.path.basename(state).split("-")[-1])))
    return [(name, step) for _, name, step in sorted(found, reverse=True)]


def resumable_runs_text(folders: RunFolders) -> str:
    return ", ".join(f"{run} (step {step})" for run, step in resumable_runs(folders)[:8]) or "none"


def checked_resume_name(folders: RunFolders, run_name: str) -> str:
    """resume_from as a run name whose folder, links resolved, lies directly in the runs folder: resuming reads
    the state there and writes into it."""
    try:
        name = checked_run_name(run_name, "resume_from")
    except ConfigError as exc:
        raise ConfigError(f"{exc} Runs that can resume: {resumable_runs_text(folders)}.") from None
    folder = folders.run_folder(name)
    resolved = os.path.realpath(folder)
    if os.path.lexists(folder) and not (os.path.isdir(resolved)
                                        and os.path.dirname(resolved) == os.path.realpath(folders.runs)):
        raise ConfigError(f"resume_from {run_name!r}: {folder} is not a run folder of this trainer (it is a file, "
                          f"or a link to {resolved}). Runs that can resume: {resumable_runs_text(folders)}.")
    return name


def resumable_state(folders: RunFolders, run_name: str) -> TrainState:
    """The newest saved state of a run, with an actionable error (naming the runs that have one) when there is
    none."""
    name = checked_resume_name(folders, run_name)
    log = previous_run_log(folders, name)
    if log.get("status") == "finished":
        raise ConfigError(f"Run {name!r} finished at step {log.get('step')}: there is nothing to resume. To train "
                          f"it further, start a new run with Configure LoRA's continue_from set to {name}.safetensors "
                          "(or its last saved file).")
    folder = latest_state_folder(folders.run_folder(name))
    if folder is None:
        others = resumable_runs_text(folders)
        raise ConfigError(f"Run {name!r} has no saved state in {folders.run_folder(name)}. A state is saved at each "
                          "intermediate save and when a run is cancelled or stops on an error; clear resume_from to "
                          f"start a new run. Runs that can resume: {others}.")
    return load_state(folder)


def average_loss(losses: list[float]) -> float:
    """The moving average the progress line and the chart show: the last AVERAGE_WINDOW steps."""
    recent = losses[-AVERAGE_WINDOW:]
    return sum(recent) / len(recent)


def moving_averages(losses: list[float]) -> list[float]:
    """average_loss after each step, in one pass (a long resumed run has many thousands)."""
    averages, window_sum = [], 0.0
    for index, loss in enumerate(losses):
        window_sum += loss - (losses[index - AVERAGE_WINDOW] if index >= AVERAGE_WINDOW else 0.0)
        averages.append(window_sum / min(index + 1, AVERAGE_WINDOW))
    return averages


def epoch_of_step(step: int, plan: TrainPlan) -> int:
    """The epoch a step belongs to, counted from 1 (0 before the first step), as the progress line shows it."""
    return -(-step // plan.steps_per_epoch)


def start_event(run_name: str, plan: TrainPlan, resume: TrainState | None) -> dict:
    """The progress event that starts a run's chart; a resumed run's chart starts with the points it had."""
    step = resume.step if resume else 0
    event = {"started": True, "run": run_name, "step": step, "total": plan.total_steps,
             "epoch": epoch_of_step(step, plan), "epochs": plan.epochs}
    if resume and resume.losses:
        losses = list(resume.losses)
        averages = moving_averages(losses)
        effective = list(resume.effective_learning_rates) or list(resume.learning_rates)
        event["history"] = {"steps": list(range(1, len(losses) + 1)), "losses": losses, "averages": averages,
                            "lrs": list(resume.learning_rates), "effective": effective,
                            "validation": [list(pair) for pair in resume.validation_losses]}
    return event


def run_to_start(folders: RunFolders, resume_from: str, output_name: str) -> tuple[TrainState | None, str]:
    """(the state a resumed run continues from, or None; the run's name): resume_from's own, else the output
    name, numbered when taken."""
    resume = resumable_state(folders, resume_from) if resume_from.strip() else None
    return resume, checked_run_name(resume_from, "resume_from") if resume else unused_run_name(folders, output_name)


class OtherProcessStopped(TrainerError):
    """Raised on the processes of a distributed run that did not see the Cancel another one saw."""


def callbacks_for_rank(callbacks: TrainCallbacks, distributed: DistributedContext) -> TrainCallbacks:
    """A process's part of the host's callbacks: rank 0 reports, writes (saves, states, the run log, the
    interrupted LoRA) and renders previews; every process waits at each save and preview until rank 0 is
    done, so all go on together. Cancel is asked on every process."""
    def then_wait(work):
        if work is None:
            return None

        def run(*args) -> None:
            # rank 0 works while the others wait for its answer; an error there (disk full, a preview that
            # fails) is raised on every process, so none waits at the next collective for ever
            distributed.from_main(lambda: work(*args))
        return run

    def agreed(check_cancel):
        # Ctrl-C reaches the processes at different moments (and Cancel may reach one only): all stop at the same
        # check, or one would wait for the others' gradients for ever
        if check_cancel is None:
            return None

        def run() -> None:
            stopped = None
            try:
                check_cancel()
            except BaseException as exc:        # the host's cancel exception, whatever its class
                stopped = exc
            if distributed.any_process(stopped is not None):
                raise stopped if stopped is not None else OtherProcessStopped(
                    "another process of this run was cancelled; every process stops with it")
        return run

    waiting = {"on_checkpoint": then_wait(callbacks.on_checkpoint), "on_sample": then_wait(callbacks.on_sample),
               "check_cancel": agreed(callbacks.check_cancel)}
    if distributed.is_main:
        return replace(callbacks, **waiting)
    return TrainCallbacks(**waiting)


def check_flow_run(settings: TrainSettings) -> None:
    """What a flow-matching run refuses, said before anything loads or trains."""
    check_flow_objective(settings.objective, settings.flow)
    if settings.torch_compile:
        raise ConfigError("torch_compile is not available for flow-matching models in this version (only the SD "
                          "UNets are compiled); switch torch_compile off.")


def run_session(trainable: TrainableModel, latents: LatentCache, network: NetworkConfig, optimizer: OptimizerConfig,
                settings: TrainSettings, folders: RunFolders, *,
                progress: Callable[[int], ProgressSink] | None = None,
                check_cancel: Callable[[], None] | None = None,
                is_cancel: Callable[[BaseException], bool] = lambda exc: False, clip_skip: int | None = None,
                resume_from: str = "", validation_latents: LatentCache | None = None,
                on_sample: Callable[[TrainProgress, str], None] | None = None,
                distributed: DistributedContext | None = None, clock: Callable[[], float] = time.perf_counter,
                memory_budget: Callable[[torch.device, int], int | None] = free_memory_budget) -> SessionResult:
    """One training run with everything it leaves behind (intermediate saves with states, the run log, the
    interrupted LoRA and state on Cancel or an error). `progress(total_steps)` makes where progress goes;
    `on_sample(progress, run_folder)` renders previews (the host's, with the LoRA attached).

    `resume_from` names a stopped run: it continues from that run's newest state and keeps its name.
    Before the first step the run's plan, estimate and warnings (trainer/preflight.py) are reported and open
    the summary; a run that will not fit `memory_budget` stops there, as does a plan_only run, writing nothing.
    `clock` times the warm-up passes (a test's own clock makes the estimate deterministic).
    With `distributed` (one call on every process of a torchrun run), rank 0 names the run, reads its state,
    writes every file and reports progress; all processes train (trainer/distributed.py) and return the same
    LoRA. The host writes its own files (the final LoRA) on rank 0 only.
    """
    settings = settings.validated()
    if distributed is not None and settings.plan_only:
        raise ConfigError("plan_only shows one process's plan and estimate: run it without torchrun, then train "
                          "with torchrun and plan_only off.")
    if distributed is not None:         # a Cancel another process saw is this run's Cancel too
        host_is_cancel = is_cancel

        def is_cancel(exc: BaseException) -> bool:
            return isinstance(exc, OtherProcessStopped) or host_is_cancel(exc)
    family = trainable.family or FAMILIES[trainable.base_model_version]
    check_latents_fit(latents, family)
    plan = plan_run(latents, settings)
    denoiser = trainable.denoiser
    if denoiser.prediction_type == "flow":    # auto and the model's shift made explicit, for the metadata and log
        settings = replace(settings, flow=settings.flow.resolved(denoiser.flow_sampling, denoiser.flow_shift))
        check_flow_run(settings)
    precision = training_precision(settings.precision, denoiser.device, denoiser.compute_dtype)
    if distributed is None:
        resume, run_name = run_to_start(folders, resume_from, settings.output_name)
    else:           # one name and one state for all: rank 0 looks at the folders, the others are told
        resume, run_name = distributed.from_main(lambda: run_to_start(folders, resume_from, settings.output_name))
    writes = distributed is None or distributed.is_main      # the one process that writes and reports the run
    session_id = new_session_id()
    prediction_type = denoiser.prediction_type
    fp8_base = any(p.dtype in FP8_DTYPES for p in trainable.frozen_root.parameters())

    def metadata_for(progress: TrainProgress) -> dict[str, str]:
        return training_metadata(run_name=run_name, session_id=session_id, cache=latents, network=network,
                                 optimizer=optimizer, settings=settings, plan=plan, progress=progress,
                                 base_model_version=trainable.base_model_version, prediction_type=prediction_type,
                                 precision=precision, clip_skip=clip_skip, fp8_base=fp8_base)

    recorder = RunRecorder(folders, run_name, metadata_for, settings.keep_last_n,
                           previous_run_log(folders, run_name).get("saves") if resume else None)
    plan_text = "\n".join([f"run {run_name}" + (f", resumed at step {resume.step}" if resume else ""),
                           latents.describe(), network.describe(),
                           optimizer.describe(plan.total_steps, denoiser.device.type), plan.describe(),
                           settings.objective.describe()
                           + (f"; {settings.flow.describe(family.guidance_input)}"
                              if denoiser.prediction_type == "flow" else ""),
                           f"batch {settings.batch_size}"
                           + (f" over {distributed.world_size} processes" if distributed else "")
                           + f", seed {settings.seed}, "
                           + ("gradient checkpointing, " if settings.gradient_checkpointing else "")
                           + (f"torch.compile ({settings.dynamo_backend}), " if settings.torch_compile else "")
                           + ("channels-last, " if settings.channels_last else "")
                           + f"{describe_precision(settings.precision, precision, denoiser.compute_dtype)}"
                           + (f", clip skip {clip_skip}" if clip_skip else "")])
    reporter = progress(plan.total_steps) if progress and writes else _NoProgress()
    reporter.update(resume.step if resume else 0, f"run {run_name}: {plan.total_steps} steps",
                    start_event(run_name, plan, resume))

    session = {"first_step": None, "started": None}

    def on_step(progress: TrainProgress, total: int) -> None:
        loss, lr = progress.losses[-1], progress.learning_rates[-1]
        effective = progress.effective_learning_rates[-1] if progress.effective_learning_rates else lr
        average = average_loss(progress.losses)
        if session["started"] is None:              # speed from this session's steps (a resume starts later)
            session["first_step"], session["started"] = progress.step - 1, time.perf_counter()
        done = progress.step - session["first_step"]
        speed = done / max(time.perf_counter() - session["started"], 1e-9)
        left = (total - progress.step) / max(speed, 1e-9)
        text = (f"step {progress.step}/{total}  loss {loss:.4f} (avg {average:.4f})  lr {lr:.3g}"
                + (f" (effective {effective:.3g})" if effective != lr else "")
                + f"  {speed:.2f} step/s  {left / 60:.1f} min left")
        event = {"step": progress.step, "total": total, "loss": loss, "average_loss": average, "lr": lr,
                 "effective_lr": effective, "steps_per_second": speed, "seconds_left": left,
                 "epoch": epoch_of_step(progress.step, plan), "epochs": plan.epochs, "run": run_name}
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
        # keep what was trained: a loadable LoRA, the state to resume from (one of the run's saves, so
        # keep_last_n counts it too), and the run log
        recorder.save_checkpoint("-interrupted", progress, state)
        path, state_folder = recorder.saves[-1]
        recorder.write_log("cancelled" if is_cancel(exc) else f"error: {exc}", progress, plan_text,
                           {"interrupted_lora": path, "state": state_folder})
        message = (f"lora-trainer {run_name}: {'cancelled' if is_cancel(exc) else 'stopped by an error'} after step "
                   f"{state.step}; the LoRA so far is {path}, its state {state_folder}. To continue exactly with the "
                   f"same settings, type {run_name} into Train's resume_from and queue again; with other settings, "
                   "start a new run with Configure LoRA's continue_from set to that file")
        logging.warning(message)
        reporter.update(progress.step, message, {"step": progress.step, "run": run_name,
                                                 "status": "cancelled" if is_cancel(exc) else "stopped by an error"})

    def on_ready(ready: ReadyRun) -> None:
        nonlocal plan_text               # the run log and the summary carry the whole plan from here on
        try:
            found = preflight(ready, run_name, clock, memory_budget)
        except Exception:                   # the plan is a report: a failure in it never stops a run that trains
            if settings.plan_only:
                raise
            logging.exception("lora-trainer %s: the plan could not be made; training goes on", run_name)
            return
        # the settings' warnings are listed once, with the run's, at the end of the plan
        settings_lines = [line for line in plan_text.splitlines() if not line.lstrip().startswith("warning: ")]
        plan_text = text = "\n".join(settings_lines) + "\n" + found.text
        logging.info("lora-trainer %s plan:\n%s", run_name, text)
        reporter.update(ready.first_step, f"run {run_name}: {ready.plan.total_steps} steps; "
                        + describe_estimate(found.estimate, found.measure,
                                            ready.plan.total_steps - ready.first_step).splitlines()[0],
                        {"run": run_name, "plan": text})
        if not found.estimate.fits:
            error = not_fitting(ready, found.estimate, found.measure)
            if settings.plan_only:          # a plan that asks shows the stop too, as part of the plan
                raise PlanOnly(f"{text}\n{error}")
            raise error
        if settings.plan_only:
            raise PlanOnly(text)

    callbacks = TrainCallbacks(on_step=on_step, check_cancel=check_cancel,
                               on_checkpoint=on_checkpoint, on_abort=on_abort, on_validation=on_validation,
                               on_sample=(lambda p: on_sample(p, folders.run_folder(run_name))) if on_sample else None,
                               # the plan's warm-up times one process's step: not for a torchrun run
                               on_ready=on_ready if distributed is None else None)
    if distributed is not None:
        callbacks = callbacks_for_rank(callbacks, distributed)
    started = time.perf_counter()
    try:
        with torch.inference_mode(False):
            result = train_lora(trainable, latents, network, optimizer, settings, callbacks, resume,
                                validation_cache=validation_latents, distributed=distributed)
    except PlanOnly as stop:
        reporter.update(resume.step if resume else 0, None, {"run": run_name, "status": "plan only"})
        return SessionResult(run_name, None, None, stop.text + "\nplan only: nothing was trained or written", None)
    seconds = time.perf_counter() - started

    metadata = metadata_for(result.progress)
    lora = TrainedLora(run_name, result.tensors, metadata, result.progress.step, result.progress.epoch)
    losses = result.progress.losses
    steps_this_run = result.progress.step - (resume.step if resume else 0)
    summary = "\n".join([
        plan_text,
        f"trained {result.progress.step} step(s), {steps_this_run} in this session in {seconds:.1f} s "
        f"({steps_this_run / max(seconds, 1e-9):.2f} step/s); loss first {losses[0]:.4f}, last {losses[-1]:.4f}, "
        f"mean {sum(losses) / len(losses):.4f}",
        f"{len(lora.module_names)} LoRA modules" + (f"; saved {', '.join(recorder.files)}" if recorder.files else ""),
    ])
    if writes:
        recorder.write_log("finished", result.progress, plan_text, {"seconds": seconds})
        reporter.update(result.progress.step, None, {"step": result.progress.step, "run": run_name,
                                                     "status": "finished"})
    if distributed is not None:             # the run is over for all when its log is written
        distributed.barrier()
    image = draw_loss_plot(losses, title=f"{run_name} loss", learning_rates=result.progress.learning_rates,
                           effective_learning_rates=result.progress.effective_learning_rates,
                           validation_losses=result.progress.validation_losses)
    return SessionResult(run_name, lora, image, summary, result)


class _NoProgress:
    def update(self, value: int, text: str | None = None, event: dict | None = None) -> None:
        pass
