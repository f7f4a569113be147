"""Our training step against the bare training loop and ComfyUI's built-in TrainLoraNode, in one process.

Three things train the same ComfyUI MODEL on the same latent and caption (batch 1, rank 16, fp32, AdamW, CPU):
- bare: ComfyUI's UNet (its diffusion_model) with our LoRA modules attached and one precomputed batch:
  forward, MSE, backward, the AdamW step, nothing else. The floor.
- ours: the Train node's engine (nodes.train.run_training) on a one-image latent cache: noise and timestep draws,
  kohya's loss, clipping, the schedule, progress and cancel checks, everything a run does per step.
- built-in: ComfyUI's own TrainLoraNode (comfy_extras/nodes_train.py) called as the executor calls it, with each
  setting that trains the same thing (fp32 compute and LoRA, gradient checkpointing off, and its default: on).

A step is the time between two optimizer steps of a run (torch.optim's global step hook: one clock for every
trainer, no patching), so what a run does once (building adapters, loading, v0.33's model rebuild, writing the
run log) stays out of the per-step figure; that once-per-run cost is reported beside it, with the first step.
(Differencing two run lengths would give the same on a quiet machine, but lets the setup's noise, a 3.4 GB
reload from disk for v0.33's built-in, into the step.) Bare steps are timed one by one before and after each
run, and each run is compared with those: the machine's load drifts, so compare the ratios, not the times.

The full model is the real SD1.5 UNet architecture with random weights, saved to a file and loaded through
comfy.sd.load_diffusion_model (the Load Diffusion Model node's path), which also gives the MODEL the
`cached_patcher_init` factory that v0.33's built-in rebuilds its private copy from on every run.

Run from the repository root, with the Python of the ComfyUI checkout:
    OMP_NUM_THREADS=1 COMFYUI_PATH=~/ComfyUI ~/ComfyUI/.venv/bin/python -m benchmarks.vs_comfyui_builtin
        [--model full|tiny] [--steps 4] [--ours-steps 10] [--rounds 1] [--bare-steps 2] [--smoke]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

from tests.comfyui import harness

RANK = 16
LEARNING_RATE = 1e-4
# per model: steps per built-in run and per run of ours, rounds, bare steps timed before and after each run. The
# full-size built-in step takes 8-25 s on a 2-core CPU, so 4 steps (3 intervals) keep a version's benchmark under
# 5 minutes; ours costs what bare does, and more intervals tell the two apart better than the noise would.
DEFAULTS = {"full": dict(steps=4, ours_steps=10, rounds=1, bare_steps=2),
            "tiny": dict(steps=8, ours_steps=8, rounds=3, bare_steps=3)}
SMOKE = dict(steps=2, ours_steps=2, rounds=1, bare_steps=1)


@dataclass
class Workload:
    """What every contender trains on: one MODEL, its CLIP, a one-image latent cache and that caption's
    conditioning as ComfyUI's CLIPTextEncode makes it."""

    model_name: str
    model: object
    clip: object
    cache: object
    positive: list
    load_seconds: float

    @property
    def latent(self) -> torch.Tensor:
        return self.cache.samples[0].latent

    @property
    def caption(self) -> str:
        return self.cache.samples[0].caption


@dataclass(frozen=True)
class Contender:
    """One way to train, run whole for a number of steps; `run(steps)` returns nothing, the caller times it."""

    key: str
    label: str
    run: Callable[[int], None]
    steps: int
    warms_up: bool = False       # runs one step before the measured rounds: ours, and the cheapest built-in setting


@dataclass(frozen=True)
class Block:
    """One run of a contender: the seconds between its optimizer steps, the whole run's seconds and steps, and
    the median bare step timed around it."""

    intervals: list[float]
    total: float
    steps: int
    bare: float


# ---- the model and the data -----------------------------------------------------------------------------------


def start_comfyui():
    """ComfyUI as a library on the CPU, its server module as in the app, the pack, the tests' tiny-model recipes;
    one thread."""
    harness.bootstrap()
    torch.set_num_threads(1)     # as RESULTS.md's figures are taken (and tiny convolutions crawl with 2 threads)
    import_server_as_main_does()
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False     # the built-in's tqdm console bar: microseconds a step, pages of log
    harness.load_pack()
    return harness.load_tiny_models()


def import_server_as_main_does() -> None:
    """ComfyUI's main.py imports its `utils` package, then `server`, before `nodes`. Here nothing would, and
    v0.3.64's nodes.py puts comfy/ first on sys.path, where comfy/utils.py then shadows that package: `import
    server` fails, and the pack's check for a running server (nodes/comfy_host.py `_server`) would re-run that
    failing import at every progress update, ~10 ms a step that the app never pays. (No server is started:
    PromptServer.instance stays unset, so no progress events are sent, by ours or by the built-in.)"""
    importlib.import_module("utils.extra_config")
    importlib.import_module("server")


def point_folders_at(work: str) -> None:
    """ComfyUI's loras and output folders in a scratch folder, so the runs leave nothing behind."""
    import folder_paths

    os.makedirs(os.path.join(work, "loras"), exist_ok=True)
    folder_paths.folder_names_and_paths["loras"] = ([os.path.join(work, "loras")], {".safetensors"})
    folder_paths.set_output_directory(os.path.join(work, "output"))


def full_model_from_file(tiny, work: str):
    """The real SD1.5 UNet with random weights, through a file and the core loader, as a user's checkpoint
    arrives: load_diffusion_model attaches cached_patcher_init (v0.33) itself."""
    import comfy.sd
    import comfy.utils

    built = tiny.sd15_model(tiny=False, seed=1)
    path = os.path.join(work, "sd15_random_unet.safetensors")
    comfy.utils.save_torch_file(built.model.diffusion_model.state_dict(), path)
    del built
    gc.collect()
    return comfy.sd.load_diffusion_model(path)


def tiny_model_with_factory(tiny, seed: int = 1, disable_dynamic: bool = False):
    """The tiny SD1.5 model. Model detection does not know its config, so it cannot go through a file; the
    rebuild factory is attached the way core loaders attach theirs: (function, args), called by v0.33 with
    disable_dynamic=True for a fresh patcher with the same weights (the same seed). This function is it."""
    model = tiny.sd15_model(tiny=True, seed=seed)
    model.cached_patcher_init = (tiny_model_with_factory, (tiny, seed))
    return model


def one_image_cache(tiny, work: str):
    """One 64x64 image (an 8x8 latent) cached by our Bucket & Cache Latents code with a tiny VAE."""
    from tests.helpers import make_kohya_folder

    from comfyui_lora_trainer.nodes.comfy_model import ComfyVAEEncoder
    from comfyui_lora_trainer.trainer.dataset import load_dataset_folder
    from comfyui_lora_trainer.trainer.dataset.buckets import BucketSettings
    from comfyui_lora_trainer.trainer.latent_cache import cache_latents

    root = make_kohya_folder(os.path.join(work, "data"), {"1_sks dog": [(64, 64)]})
    buckets = BucketSettings(resolution=(64, 64), min_bucket_reso=64, max_bucket_reso=64)
    return cache_latents(load_dataset_folder(root), ComfyVAEEncoder(tiny.vae(seed=3)), buckets)


def prepare_workload(tiny, model_name: str, work: str) -> Workload:
    started = time.perf_counter()
    model = full_model_from_file(tiny, work) if model_name == "full" else tiny_model_with_factory(tiny)
    load_seconds = time.perf_counter() - started
    clip = tiny.sd1_clip(width=768 if model_name == "full" else 32, seed=2)
    cache = one_image_cache(tiny, work)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(cache.samples[0].caption))
    return Workload(model_name, model, clip, cache, positive, load_seconds)


def clear_weight_wrappers(model) -> None:
    """Leave the shared model as the loader gave it: unload everything, and drop the weight wrappers that
    v0.3.64's built-in leaves on the modules of the BaseModel it shares with its input (docs: harness pitfall 8)."""
    import comfy.model_management as mm

    mm.unload_all_models()
    for module in model.model.modules():
        for attribute in ("weight_function", "bias_function"):
            if getattr(module, attribute, None):
                setattr(module, attribute, [])
    gc.collect()


# ---- the bare loop --------------------------------------------------------------------------------------------


class BareLoop:
    """The floor: the UNet with our LoRA modules and optimizer, one precomputed batch, nothing else per step."""

    def __init__(self, work: Workload):
        from comfyui_lora_trainer.nodes.comfy_model import trainable_from_comfy
        from comfyui_lora_trainer.trainer.networks import LoRANetwork, NetworkConfig
        from comfyui_lora_trainer.trainer.optim import OptimizerConfig, build_optimizer

        trainable = trainable_from_comfy(work.model, work.clip)
        self.unet = trainable.frozen_root
        self.targets = trainable.targets_for(False)
        torch.manual_seed(0)
        self.network = LoRANetwork(self.targets, NetworkConfig(rank=RANK, alpha=1))
        groups = self.network.parameter_groups(LEARNING_RATE, LEARNING_RATE)
        self.optimizer, _ = build_optimizer(OptimizerConfig(), groups, total_steps=10_000)
        denoiser = trainable.denoiser
        latents = denoiser.scale_latents(work.latent[None].clone())
        noise = torch.randn_like(latents)
        signal = denoiser.alphas_cumprod[500].float()          # kohya's noisy latents at timestep 500
        self.noisy = signal.sqrt() * latents + (1 - signal).sqrt() * noise
        self.timesteps = torch.tensor([500.0])
        encoded = trainable.caption_encoder.encode(work.caption)     # SD1: the context tensor itself
        self.context = getattr(encoded, "context", encoded).detach().clone()
        self.target = noise

    def step(self) -> None:
        prediction = self.unet(self.noisy, self.timesteps, context=self.context)
        torch.nn.functional.mse_loss(prediction.float(), self.target).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed_steps(self, count: int) -> list[float]:
        """`count` steps, each timed alone; the LoRA is attached only meanwhile, so the other runs see the
        model as loaded."""
        from comfyui_lora_trainer.trainer.loop import frozen

        times = []
        with torch.inference_mode(False), frozen(self.unet), self.network.attached(self.targets):
            for _ in range(count):
                started = time.perf_counter()
                self.step()
                times.append(time.perf_counter() - started)
        return times


# ---- our engine -----------------------------------------------------------------------------------------------


def our_run(work: Workload, gradient_checkpointing: bool) -> Callable[[int], None]:
    """The Train node's whole run (nodes.train.run_training), called inside inference mode as ComfyUI's
    executor calls nodes."""
    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    def run(steps: int) -> None:
        settings = TrainSettings(output_name="bench", epochs=0, max_steps=steps, batch_size=1, seed=0,
                                 precision="fp32", gradient_checkpointing=gradient_checkpointing)
        with torch.inference_mode():
            out = run_training(work.model, work.clip, work.cache, NetworkConfig(rank=RANK, alpha=1),
                               OptimizerConfig(learning_rate=LEARNING_RATE), settings)
        assert out.result.progress.step == steps
        clear_weight_wrappers(work.model)

    return run


# ---- ComfyUI's built-in TrainLoraNode -------------------------------------------------------------------------


def builtin_settings() -> list[tuple[str, dict]]:
    """The built-in's settings that train what it always trains (every layer, fp32) at full speed, and its
    default gradient checkpointing. v0.33 adds bypass_mode (LoRA as forward hooks, not weight wrappers): the
    same parameters and loss. Left out: training_dtype "none" (bf16 autocast on an fp32 model), offloading
    (weights to the CPU: already there), checkpoint_depth > 1 (only with checkpointing, finer and slower)."""
    settings = [("checkpointing off", {"gradient_checkpointing": False})]
    if builtin_is_v3():
        settings.append(("checkpointing off, bypass_mode", {"gradient_checkpointing": False, "bypass_mode": True}))
    settings.append(("checkpointing on (its default)", {"gradient_checkpointing": True}))
    return settings


def builtin_is_v3() -> bool:
    from comfy_extras.nodes_train import TrainLoraNode

    return hasattr(TrainLoraNode, "define_schema")


def builtin_inputs(work: Workload, steps: int, overrides: dict) -> dict:
    inputs = dict(model=work.model, latents={"samples": work.latent[None].clone()}, positive=work.positive,
                  batch_size=1, grad_accumulation_steps=1, steps=steps, learning_rate=LEARNING_RATE, rank=RANK,
                  optimizer="AdamW", loss_function="MSE", seed=0, training_dtype="fp32", lora_dtype="fp32",
                  algorithm="LoRA", gradient_checkpointing=True, existing_lora="[None]")
    if builtin_is_v3():
        inputs.update(quantized_backward=False, checkpoint_depth=1, offloading=False, bucket_mode=False,
                      bypass_mode=False)
    inputs.update(overrides)
    return inputs


def builtin_run(work: Workload, overrides: dict) -> Callable[[int], None]:
    """TrainLoraNode as the executor calls it: inside inference mode; V3 (v0.33) takes every input as a list."""
    from comfy_extras.nodes_train import TrainLoraNode

    def run(steps: int) -> None:
        inputs = builtin_inputs(work, steps, overrides)
        with torch.inference_mode():
            if builtin_is_v3():
                output = TrainLoraNode.execute(**{name: [value] for name, value in inputs.items()})
                losses = output.result[1]["loss"]
            else:
                losses = TrainLoraNode().train(**inputs)[2]["loss"]
        assert len(losses) == steps, losses
        clear_weight_wrappers(work.model)

    return run


# ---- measuring ------------------------------------------------------------------------------------------------


class StepClock:
    """The time of every optimizer step taken in this process, from torch.optim's global step hook: the same
    clock for our engine and the built-in, without touching either's code. The time between two steps is one
    whole iteration of a trainer's loop (data, noise, forward, loss, backward, step, logging, progress)."""

    def __init__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.ticks: list[float] = []
        self.handle = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: self.ticks.append(
            time.perf_counter()))

    def run(self, contender: Contender, steps: int) -> tuple[list[float], float]:
        """The intervals between the run's optimizer steps and the run's total seconds."""
        self.ticks = []
        started = time.perf_counter()
        contender.run(steps)
        total = time.perf_counter() - started
        ticks = self.ticks
        assert len(ticks) == steps, f"{contender.label}: {len(ticks)} optimizer steps in a {steps}-step run"
        return [later - earlier for earlier, later in zip(ticks, ticks[1:])], total


@dataclass(frozen=True)
class Estimate:
    per_step: float      # seconds
    outside: float       # seconds of a run outside its timed intervals: setup (adapters, loading, v0.33's rebuild),
                         # the first step, and what follows the last (the run log, handing the LoRA back)
    vs_bare: float       # per step / the bare step timed around the same run


def estimate(blocks: list[Block]) -> Estimate:
    """Per step: the median time between optimizer steps; outside: the rest of the run, setup and first step
    together (a first step need not cost a median one: optimizer state is allocated there, and some runs'
    later steps slow down, so "the run minus N median steps" can even come out negative); the ratio to the
    bare steps timed around each run, so drifts in the machine's load cancel. Medians over rounds."""
    per_step = [statistics.median(block.intervals) for block in blocks]
    return Estimate(statistics.median(per_step),
                    statistics.median(block.total - sum(block.intervals) for block in blocks),
                    statistics.median(step / block.bare for block, step in zip(blocks, per_step)))


def measure(contenders: list[Contender], bare: BareLoop, rounds: int, bare_steps: int,
            log: Callable[[str], None]) -> tuple[list[float], dict[str, list[Block]]]:
    """Each round runs every contender once, with `bare_steps` bare steps before and after, so each contender is
    compared with the floor as the machine was while it ran."""
    clock = StepClock()
    # warm-up: first-touch allocations, lazy imports and first-call setup in both trainers (process-wide, so one
    # run of ours and of the cheapest built-in setting does for all); else the first runs' setup would hold them
    bare.timed_steps(2)
    for contender in contenders:
        if contender.warms_up:
            clock.run(contender, 1)
    bare_times: list[float] = []
    blocks: dict[str, list[Block]] = {c.key: [] for c in contenders}
    for round_index in range(rounds):
        log(f"round {round_index + 1}/{rounds}")
        for contender in contenders:
            around = bare.timed_steps(bare_steps)
            intervals, total = clock.run(contender, contender.steps)
            around += bare.timed_steps(bare_steps)
            blocks[contender.key].append(Block(intervals, total, contender.steps, statistics.median(around)))
            bare_times += around
            log(f"{contender.label}: {contender.steps} steps in {total:.2f} s; ms between steps: "
                f"{', '.join(f'{seconds * 1000:.0f}' for seconds in intervals)}; bare steps around it: "
                f"{', '.join(f'{seconds * 1000:.0f}' for seconds in around)}")
    clock.handle.remove()
    return bare_times, blocks


def table(work: Workload, bare_times: list[float], estimates: dict[str, Estimate],
          pairs: list[tuple[str, str, str]]) -> str:
    """One row per built-in setting beside ours on the same setting (checkpointing on or off)."""
    bare_ms = statistics.median(bare_times) * 1000
    model = ("SD1.5 UNet (full size, random weights)" if work.model_name == "full" else "tiny SD1.5 UNet")
    lines = ["| model | settings | bare ms/step | ours ms/step | built-in ms/step | ours / bare | built-in / ours "
             "| ours setup + 1st step s | built-in setup + 1st step s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, ours_key, builtin_key in pairs:
        ours, builtin = estimates[ours_key], estimates[builtin_key]
        lines.append(f"| {model}, 8x8 latents, batch 1, rank {RANK}, fp32 | {label} | {bare_ms:.1f} | "
                     f"{ours.per_step * 1000:.1f} | {builtin.per_step * 1000:.1f} | {ours.vs_bare:.3f} | "
                     f"{builtin.vs_bare / ours.vs_bare:.2f} | {ours.outside:.2f} | {builtin.outside:.2f} |")
    return "\n".join(lines)


def contenders_and_pairs(work: Workload, steps: int, ours_steps: int
                         ) -> tuple[list[Contender], list[tuple[str, str, str]]]:
    """Ours with checkpointing off and on, and each built-in setting beside ours on the same checkpointing."""
    ours = {False: Contender("ours", "ours", our_run(work, False), ours_steps, warms_up=True),
            True: Contender("ours-checkpointing", "ours, checkpointing on", our_run(work, True), ours_steps)}
    settings = builtin_settings()
    cheapest = next((label for label, overrides in settings if overrides.get("bypass_mode")), settings[0][0])
    contenders, pairs = [ours[False]], []
    for index, (label, overrides) in enumerate(settings):
        checkpointing = overrides["gradient_checkpointing"]
        if checkpointing and ours[True] not in contenders:
            contenders.append(ours[True])
        key = f"builtin-{index}"
        contenders.append(Contender(key, f"built-in, {label}", builtin_run(work, overrides), steps,
                                    warms_up=label == cheapest))
        pairs.append((label, ours[checkpointing].key, key))
    return contenders, pairs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("full", "tiny"), default="full")
    parser.add_argument("--steps", type=int, help="steps per built-in run, at least 2 (full: 4, tiny: 8)")
    parser.add_argument("--ours-steps", type=int, help="steps per run of ours, at least 2 (full: 10, tiny: 8)")
    parser.add_argument("--rounds", type=int, help="runs of every contender, interleaved (full: 2, tiny: 3)")
    parser.add_argument("--bare-steps", type=int, help="bare steps timed before and after each run (full: 2, tiny: 3)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2-step runs: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.model = "tiny"
    for name, value in (SMOKE if args.smoke else DEFAULTS[args.model]).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.steps, args.ours_steps) < 2 or args.rounds < 1 or args.bare_steps < 1:
        parser.error("need --steps and --ours-steps >= 2 (one interval between steps), --rounds >= 1 and "
                     "--bare-steps >= 1")
    return args


def main() -> None:
    args = parse_args()
    tiny = start_comfyui()
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="vs_comfyui_builtin_") as work_folder:
        point_folders_at(work_folder)
        work = prepare_workload(tiny, args.model, work_folder)
        log(f"{args.model} model loaded in {work.load_seconds:.1f} s, weights {work.model.model.get_dtype()}")
        bare = BareLoop(work)
        contenders, pairs = contenders_and_pairs(work, args.steps, args.ours_steps)
        bare_times, blocks = measure(contenders, bare, args.rounds, args.bare_steps, log)
    estimates = {key: estimate(runs) for key, runs in blocks.items()}
    print(f"\nComfyUI {harness.comfyui_version()}, torch {torch.__version__}, {torch.get_num_threads()} thread; "
          f"{args.rounds} round(s) of runs of {args.ours_steps} (ours) and {args.steps} (built-in) steps, "
          f"{len(bare_times)} bare steps; "
          f"total {time.perf_counter() - started:.0f} s\n")
    print(table(work, bare_times, estimates, pairs), flush=True)
    print("\nms/step: the median time between a run's optimizer steps (bare: the median bare step). ours / bare: "
          "each per-step time over the bare steps timed around its run (bare never checkpoints, so the "
          "checkpointing row includes the recompute); built-in / ours: those ratios divided. setup + 1st step: "
          "a run's time outside the intervals between its optimizer steps.", flush=True)
    if args.smoke:
        print("\n(smoke run: a tiny model and one interval per run; the figures say nothing about speed)")


if __name__ == "__main__":
    main()
