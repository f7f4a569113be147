"""`train` and `resume`: a RunConfig through the same engine path as the nodes (load_dataset_folder ->
cache_latents -> trainer.session.run_session), then the final file, the loss graph and the summary.

The run's config goes into its run folder (config.toml, paths absolute) as soon as the run has its name, so
`resume` needs nothing else.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..atomic_files import write_atomic
from ..errors import ConfigError
from ..preflight import WillNotFit
from ..latent_cache import cache_latents
from ..lora_file import checkpoint_hashes, save_lora
from ..paths import LATENT_CACHE_FOLDER
from ..distributed import DistributedContext, context_from_environment
from ..session import RunFolders, previous_run_log, run_session
from .config import RunConfig
from .engine_settings import (bucket_settings, load_training_dataset, load_validation_dataset, network_config,
                              optimizer_config, train_settings)
from .models import LoadedModel, load_model
from .options import TRANSPARENCY
from .progress import CtrlC, TerminalProgress
from .toml_writer import config_text

CONFIG_FILE = "config.toml"
LOSS_GRAPH = "loss.png"
SUMMARY = "summary.txt"


@dataclass
class RunFiles:
    run_name: str
    lora: str
    loss_graph: str
    summary: str
    run_folder: str
    summary_text: str


class RunStopped(Exception):
    """The run stopped (Ctrl-C or an error) after keeping its state; `message` says how to resume."""

    def __init__(self, message: str, cancelled: bool):
        super().__init__(message)
        self.cancelled = cancelled


def run_folders(config: RunConfig) -> RunFolders:
    folders = RunFolders(config["output"]["loras_folder"], config["output"]["runs_folder"])
    os.makedirs(folders.loras, exist_ok=True)
    os.makedirs(folders.runs, exist_ok=True)
    return folders


def resume_command(run_folder: str) -> str:
    return f"python -m trainer resume {run_folder}"


def stopped_message(folders: RunFolders, run_name: str, cancelled: bool, exc: BaseException) -> str:
    log = previous_run_log(folders, run_name)
    folder = folders.run_folder(run_name)
    what = "Cancelled" if cancelled else f"Stopped by an error ({exc})"
    if not log.get("state"):
        return f"{what} before the first step finished; nothing to resume. Run the same command again to start over."
    return (f"{what} after step {log.get('step')}. The LoRA so far: {log.get('interrupted_lora')}; its state: "
            f"{log.get('state')}.\nTo continue exactly where it stopped, with the same settings:\n"
            f"  {resume_command(folder)}")


def train(config: RunConfig, *, resume_from: str = "", model: LoadedModel | None = None,
          say: Callable[[str], None] = print, stream=None, use_tqdm: bool | None = None) -> RunFiles | None:
    """One run of `config` (or, with `resume_from`, the stopped run of that name in the config's runs folder).
    `model` replaces loading [model] (a test's own objects). Under torchrun every process calls this; rank 0
    writes and reports (trainer/distributed.py), and the others return None."""
    distributed = context_from_environment()
    try:
        return train_on_this_process(config, resume_from, model, say, stream, use_tqdm, distributed)
    finally:
        if distributed is not None:
            distributed.close()


def train_on_this_process(config: RunConfig, resume_from: str, model: LoadedModel | None, say, stream, use_tqdm,
                          distributed: DistributedContext | None) -> RunFiles | None:
    if distributed is not None and not distributed.is_main:
        def say(text: str) -> None:         # one process speaks for the run
            pass
    settings, network, optimizer = train_settings(config), network_config(config), optimizer_config(config)
    buckets = bucket_settings(config)
    dataset = load_training_dataset(config)
    validation_dataset = load_validation_dataset(config)
    say(dataset.describe())
    folders = run_folders(config)
    model_settings = config["model"]
    if distributed is not None and (model_settings["device"] == "auto" or model_settings["device"].startswith("cuda")):
        # under torchrun each process trains on its own GPU (LOCAL_RANK), whichever CUDA device the config names
        model_settings = {**model_settings, "device": str(distributed.device)}
    loaded = model or load_model(model_settings, settings)
    say(f"model: {loaded.description}")
    wants_previews = settings.sample_every_n_steps or settings.sample_every_n_epochs
    if wants_previews and loaded.previews is None:
        raise config.source.error(("previews",), "in-training previews render with ComfyUI's sampler, so they need "
                                                 "a checkpoint file loaded through ComfyUI; set "
                                                 "sample_every_n_steps and sample_every_n_epochs to 0 here.")

    values = config["buckets"]
    started = time.perf_counter()

    def cache(which):
        return cache_latents(which, loaded.latent_encoder, buckets, values["vae_batch_size"],
                             interpolation=values["resize_interpolation"],
                             transparent_on_white=values["transparency"] == TRANSPARENCY[0],
                             cache_mode=values["cache"],
                             fallback_folder=os.path.join(folders.runs, LATENT_CACHE_FOLDER))

    # under torchrun rank 0 caches first (writing a disk cache's .npz files); the others then read them, so only
    # rank 0 writes
    if distributed is not None and not distributed.is_main:
        distributed.barrier()
    with torch.inference_mode(False), torch.no_grad():
        try:
            latents = cache(dataset)
            validation_latents = cache(validation_dataset) if validation_dataset is not None else None
        finally:
            loaded.release_encoder()
            if distributed is not None and distributed.is_main:
                distributed.barrier()
    say(latents.describe() + f"\n(latents cached in {time.perf_counter() - started:.1f} s)")

    state = {"run_name": "", "bar": None}

    def remember_run(event: dict) -> None:
        state["run_name"] = event["run"]
        if settings.plan_only:              # a plan writes nothing
            return
        folder = folders.run_folder(event["run"])
        os.makedirs(folder, exist_ok=True)
        if not resume_from or not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
            heading = (f"The settings of run {event['run']}, written when it started; paths are absolute.\n"
                       f"`{resume_command(folder)}` continues it from its newest state with these settings.")
            write_atomic(os.path.join(folder, CONFIG_FILE), config_text(config, heading).encode("utf-8"))

    def progress(total: int) -> TerminalProgress:
        state["bar"] = TerminalProgress(total, stream, remember_run, use_tqdm)
        return state["bar"]

    renderer = None
    if wants_previews:
        renderer = loaded.previews(latents, settings, config["previews"],
                                   lambda step, image: state["bar"] and state["bar"].write(
                                       f"step {step}: preview saved in the run's samples folder"))
    ctrl_c = CtrlC(lambda text: state["bar"].write(text) if state["bar"] else say(text))
    try:
        with ctrl_c.installed():
            session = run_session(loaded.trainable, latents, network, optimizer, settings, folders, progress=progress,
                                  check_cancel=ctrl_c.check_cancel, is_cancel=ctrl_c.is_cancel,
                                  clip_skip=loaded.clip_skip, resume_from=resume_from,
                                  validation_latents=validation_latents, on_sample=renderer,
                                  distributed=distributed)
    except BaseException as exc:
        if state["bar"] is not None:
            state["bar"].close()
        if isinstance(exc, WillNotFit) and state["run_name"] and not resume_from:
            remove_unstarted_run(folders.run_folder(state["run_name"]))     # the plan stopped it: nothing kept
            raise
        if state["run_name"] and (ctrl_c.is_cancel(exc) or isinstance(exc, Exception)):
            cancelled = ctrl_c.is_cancel(exc)
            raise RunStopped(stopped_message(folders, state["run_name"], cancelled, exc), cancelled) from exc
        raise
    if state["bar"] is not None:
        state["bar"].close()
    if distributed is not None and not distributed.is_main:
        return None
    if session.planned_only:                # the plan was printed before step one
        say(session.summary.splitlines()[-1])
        return None
    return finish(config, folders, session, loaded)


def remove_unstarted_run(folder: str) -> None:
    """A run folder that holds only the config.toml written at its start: removed, so its name stays free."""
    if os.path.isdir(folder) and os.listdir(folder) == [CONFIG_FILE]:
        os.remove(os.path.join(folder, CONFIG_FILE))
        os.rmdir(folder)


def finish(config: RunConfig, folders: RunFolders, session, loaded: LoadedModel) -> RunFiles:
    """The final LoRA (Save Safetensors' work), the loss graph and the summary in the run folder."""
    save = config["save"]
    extra = {"ss_training_comment": save["comment"].strip()} if save["comment"].strip() else {}
    if loaded.base_model_file:
        extra.update(checkpoint_hashes(loaded.base_model_file))
    path = save_lora(session.lora, folders.loras, save["file_name"].strip() or session.run_name, save["precision"],
                     extra)
    folder = folders.run_folder(session.run_name)
    graph = os.path.join(folder, LOSS_GRAPH)
    session.loss_image.save(graph + ".partial", format="PNG")
    os.replace(graph + ".partial", graph)
    text = session.summary + f"\nfinal LoRA: {path} ({save['precision']})"
    summary = os.path.join(folder, SUMMARY)
    write_atomic(summary, (text + "\n").encode("utf-8"))
    return RunFiles(session.run_name, path, graph, summary, folder, text)


def located_run(target: str, runs_folder: str) -> tuple[str, str]:
    """(runs folder, run name) of a run folder, one of its state folders, or a run name in `runs_folder`."""
    path = os.path.abspath(os.path.expanduser(target))
    if os.path.isdir(path):
        if os.path.basename(path).startswith("state-"):
            path = os.path.dirname(path)
        if os.path.isfile(os.path.join(path, CONFIG_FILE)):
            return os.path.dirname(path), os.path.basename(path)
        raise ConfigError(f"{path} has no {CONFIG_FILE}: give a run folder that `python -m trainer train` made "
                          "(runs_folder/<run name>), one of its state-* folders, or a run name with --runs-folder.")
    folder = os.path.join(os.path.abspath(runs_folder), target)
    if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        return os.path.abspath(runs_folder), target
    raise ConfigError(f"No run {target!r}: neither a folder nor a run in {os.path.abspath(runs_folder)} "
                      f"(with a {CONFIG_FILE}). Give the run folder the stop message named, or --runs-folder.")
