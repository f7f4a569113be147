"""Train: runs the engine on the workflow's MODEL and CLIP and hands back the LoRA in every useful form.

The run itself (its name, files, record, resume, saves, summary) is trainer/session.py's, shared with the
command line; this module is the node's schema and the ComfyUI adapters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..trainer.latent_cache import LatentCache
from ..trainer.loop import TrainResult
from ..trainer.lora_file import TrainedLora
from ..trainer.loss_plot import image_to_comfy_tensor
from ..trainer.networks import NetworkConfig
from ..trainer.optim import OptimizerConfig
from ..trainer.errors import ConfigError
from ..trainer.plan import MAX_TOKEN_LENGTHS, PRECISIONS, TrainSettings
from ..trainer.sample_prompts import SamplePrompt, parse_sample_prompts
from ..trainer.session import RunFolders, resumable_runs, run_session
from ..trainer.validation import ValidationSettings
from .comfy_host import RUN_DATA_FOLDER, ProgressReporter, check_cancel, is_cancel, loras_folder
from .comfy_model import apply_lora_patches, clip_skip_of, trainable_from_comfy
from .previews import PreviewRenderer
from .objective_inputs import flow_inputs, flow_settings, objective_inputs, objective_settings
from .wire_types import CATEGORY, LoraLatents, LoraNetwork, LoraOptimizer, TrainedLora as TrainedLoraType


@dataclass
class TrainOutputs:
    """What Train gives the graph; a plan-only run gives its summary (the plan) and None for the rest."""

    model: object
    clip: object
    lora: TrainedLora | None
    loss_image: torch.Tensor | None
    summary: str
    result: TrainResult | None


def comfy_run_folders() -> RunFolders:
    import folder_paths

    return RunFolders(loras_folder(), os.path.join(folder_paths.get_output_directory(), RUN_DATA_FOLDER))


@dataclass(frozen=True)
class PreviewSettings:
    """Train's in-training previews: kohya-syntax prompts, the VAE to decode with, ComfyUI's sampler."""

    vae: object = None
    prompts: str = ""
    sampler_name: str = "euler"
    scheduler: str = "normal"


def run_training(model, clip, latents: LatentCache, network: NetworkConfig, optimizer: OptimizerConfig,
                 settings: TrainSettings, node_id: str | None = None, resume_from: str = "",
                 validation_latents: LatentCache | None = None,
                 previews: PreviewSettings = PreviewSettings()) -> TrainOutputs:
    """The Train node's work, callable without the executor (tests, scripts).

    `resume_from` names a stopped run: it continues from that run's newest state and keeps its name.
    """
    settings = settings.validated()
    trainable = trainable_from_comfy(model, clip, settings.max_token_length)
    folders = comfy_run_folders()
    reporters = []

    def reporter(total: int) -> ProgressReporter:
        reporters.append(ProgressReporter(node_id, total))
        return reporters[-1]

    renderer = preview_renderer(trainable, clip, previews, latents, settings,
                                lambda step, image: reporters and reporters[-1].preview(step, image))
    with torch.inference_mode(False):
        session = run_session(trainable, latents, network, optimizer, settings, folders, progress=reporter,
                              check_cancel=check_cancel, is_cancel=is_cancel,
                              clip_skip=clip_skip_of(clip), resume_from=resume_from,
                              validation_latents=validation_latents, on_sample=renderer)
    if session.planned_only:
        return TrainOutputs(None, None, None, None, session.summary, None)
    patched_model, patched_clip = apply_lora_patches(model, clip, session.result.tensors)
    if renderer is not None and renderer.files:
        session.summary += f"\n{len(renderer.files)} preview image(s) in {os.path.dirname(renderer.files[0])}"
    return TrainOutputs(patched_model, patched_clip, session.lora, image_to_comfy_tensor(session.loss_image),
                        session.summary, session.result)


def resumable_runs_text() -> str:
    """The runs that can resume, for resume_from's tooltip (ComfyUI rebuilds it when the node list reloads)."""
    try:
        runs = resumable_runs(comfy_run_folders())
    except Exception:  # the tooltip is a help, never a reason for the node not to load
        return ""
    return (" Runs with a state: " + ", ".join(f"{name} (step {step})" for name, step in runs[:10])) if runs else ""


def sampler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


def preview_renderer(trainable, clip, previews: PreviewSettings, latents: LatentCache, settings: TrainSettings,
                     show) -> PreviewRenderer | None:
    """The loop's on_sample callback, or None when no previews are asked for; an error before training when
    they are asked for and cannot be made."""
    if not (settings.sample_every_n_steps or settings.sample_every_n_epochs):
        return None
    if not previews.prompts.strip():
        raise ConfigError("sample_every_n_steps / _epochs is set but sample_prompts is empty: write one prompt per "
                          "line (kohya's syntax: 'a photo of sks dog --n blurry --s 20 --l 7 --d 1'), or set both "
                          "to 0.")
    if previews.vae is None:
        raise ConfigError("In-training previews need the VAE: connect the checkpoint's VAE to Train's vae input, or "
                          "set sample_every_n_steps and sample_every_n_epochs to 0.")
    width, height = latents.settings.resolution
    defaults = SamplePrompt("", width=width, height=height, seed=settings.seed)
    prompts = parse_sample_prompts(previews.prompts, defaults)

    def reload() -> None:
        if trainable.prepare is not None:
            trainable.prepare(True)

    return PreviewRenderer(trainable.host, clip, previews.vae, prompts, previews.sampler_name, previews.scheduler,
                           show, reload)


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
                                tooltip="Name of the run and its files in models/loras: a plain name, no folders (Save "
                                        "Safetensors' file_name may have one); a taken name gets _2, _3..."),
                io.Int.Input("epochs", default=10, min=0, max=10000,
                             tooltip="The run's length in epochs (kohya's max_train_epochs); 0 = by max_steps."),
                io.Int.Input("max_steps", default=0, min=0, max=10_000_000,
                             tooltip="The run's length in steps when epochs is 0 (kohya's max_train_steps; "
                                     "epochs, when set, override it as in kohya)."),
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
                                tooltip="Name of a cancelled, failed or killed run to continue exactly from its "
                                        "newest state (same settings); it keeps its name. Empty = a new run."
                                        + resumable_runs_text()),
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
                io.Vae.Input("vae", optional=True, tooltip="For in-training previews: the checkpoint's VAE."),
                io.String.Input("sample_prompts", default="", multiline=True, optional=True,
                                tooltip="One prompt per line, rendered with the LoRA so far; kohya's options: --n "
                                        "negative, --w / --h size, --s steps, --l cfg, --d seed."),
                io.Int.Input("sample_every_n_steps", default=0, min=0, max=10_000_000, optional=True,
                             tooltip="Render the sample prompts every N steps (shown on this node, saved in the "
                                     "run's samples folder); 0 = off."),
                io.Int.Input("sample_every_n_epochs", default=0, min=0, max=10000, optional=True,
                             tooltip="Render the sample prompts every N epochs; 0 = off."),
                io.Combo.Input("sample_sampler", options=sampler_names(), default="euler", optional=True,
                               tooltip="ComfyUI sampler for the previews."),
                io.Combo.Input("sample_scheduler", options=scheduler_names(), default="normal", optional=True,
                               tooltip="ComfyUI scheduler for the previews."),
                # last, so the widget values of workflows saved before it keep their places
                io.Boolean.Input("torch_compile", default=False, optional=True,
                                 tooltip="Compile the UNet with torch.compile (inductor), the LoRA traced in: "
                                         "faster steps on a GPU after a first step that compiles (a minute or "
                                         "more); needs Triton on the GPU (kohya's torch_compile)."),
                *flow_inputs(),
                io.Boolean.Input("plan_only", default=False, optional=True,
                                 tooltip="Stop after the plan: steps, saves, modules, the time and memory "
                                         "estimate from a few warm-up passes, every warning. Nothing trains or is "
                                         "written; the nodes after Train (Save, KSampler) are skipped."),
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
                vae=None, sample_prompts="", sample_every_n_steps=0, sample_every_n_epochs=0,
                sample_sampler="euler", sample_scheduler="normal", torch_compile=False, plan_only=False,
                **loss_and_noise) -> io.NodeOutput:
        flow = flow_settings(loss_and_noise)
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
                                 validation=validation, sample_every_n_steps=sample_every_n_steps,
                                 sample_every_n_epochs=sample_every_n_epochs, torch_compile=torch_compile,
                                 flow=flow, plan_only=plan_only)
        out = run_training(model, clip, latents, network, optimizer, settings, node_id=cls.hidden.unique_id,
                           resume_from=resume_from or "", validation_latents=validation_latents,
                           previews=PreviewSettings(vae, sample_prompts or "", sample_sampler, sample_scheduler))
        if out.lora is None:        # plan only: the summary is the plan; what comes after Train is skipped
            from comfy_execution.graph_utils import ExecutionBlocker

            blocked = ExecutionBlocker(None)
            return io.NodeOutput(blocked, blocked, blocked, blocked, out.summary, ui={"text": [out.summary]})
        return io.NodeOutput(out.model, out.clip, out.lora, out.loss_image, out.summary,
                             ui={"text": [out.summary]})

