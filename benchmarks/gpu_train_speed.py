"""Training speed and memory on a GPU: the engine's training step against the bare loop on full-size UNets.

Every configuration (CONFIGS) trains a LoRA on a UNet with random bf16 weights, frozen, on the GPU: the real SD1.5
UNet at 512 px (64x64 latents), batch 1 and 4, rank 16 and 32, and the real SDXL UNet at 1024 px (128x128
latents), batch 1, each with gradient checkpointing off and on; then full-size Flux.1 dev (ComfyUI's classes only)
at 512 and 1024 px, batch 1, rank 16, checkpointing on. LoRA weights fp32, autocast bf16, AdamW. Each row
gives the engine's step (trainer.loop.TrainStep) and the bare loop (the same model, the same LoRA modules, one
precomputed batch: forward, MSE, backward, clipping, the optimizer step; benchmarks/training_step.py) in seconds
per step, their ratio, and each one's peak memory (torch.cuda.max_memory_allocated over one step, reset for it,
the weights included), beside the published H100 figures of the same class where there are any (ANCHORS).

The models are ComfyUI's own (comfy.supported_models.SD15 / SDXL in a ModelPatcher, wrapped by the Train node's
adapter, nodes/comfy_model.py) when a ComfyUI checkout is at hand (COMFYUI_PATH), else diffusers'
UNet2DConditionModel through trainer/diffusers_adapter.py. One failing configuration puts its error in its row
and the rest go on; a time budget skips the configurations it has no room for instead of running over.

On the GPU machine: `bash benchmarks/gpu.sh` (its header gives the device call). Here, the same code on tiny
models on the CPU, every configuration, one step each, to catch mistakes before the GPU's one call:
    .venv/bin/python -m benchmarks.gpu_train_speed --smoke [--backend diffusers|comfyui]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import os
import signal
import sys
import time
import traceback
import types
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import torch

from benchmarks.training_step import BareBatch, BenchModel, StepPair, Timing, diffusers_bench_model, \
    diffusers_unet, interleaved_medians, peak_bytes

GIB = 2 ** 30
PRECISION = "bf16"
TABLE_FILE = "gpu_train_speed.md"
JSON_FILE = "gpu_train_speed.json"
LOCAL_OUT_DIR = "benchmark-output"       # where results go when $OUT (the device machine's) is not set
SDXL_SIZE_EMBEDDING = 6 * 256            # SDXL's ADM input: the pooled text, then six 256-wide size embeddings
FLUX_CAPTION_TOKENS = 512                # T5-XXL's context for Flux.1 dev (ComfyUI pads to 256 or 512)


@dataclass(frozen=True)
class Config:
    model: str                 # a key of MODEL_TITLES
    batch: int
    rank: int
    checkpointing: bool
    option: str = ""           # a key of OPTION_TITLES: a speed option of the engine's step (the bare loop stays)
    latent_side: int = 0       # 0: the model's (LATENT_SIDES); else this one, at full scale (a Flux row's 512 / 1024)

    def label(self) -> str:
        title = MODEL_TITLES[self.model] + (f" {self.latent_side * 8} px" if self.latent_side else "")
        return (f"{title}, batch {self.batch}, rank {self.rank}, "
                f"checkpointing {'on' if self.checkpointing else 'off'}"
                + (f", {OPTION_TITLES[self.option]}" if self.option else ""))


@dataclass(frozen=True)
class Anchor:
    seconds: float             # per step
    gib: float                 # peak memory

    def text(self) -> str:
        return f"{self.seconds:.3f} s, {self.gib:.2f} GiB"


MODEL_TITLES = {"sd15": "SD1.5 512 px", "sdxl": "SDXL 1024 px", "flux": "Flux.1 dev"}
COMFYUI_ONLY = {"flux"}       # models only ComfyUI's classes build here (the GPU machine has no diffusers Flux)
# the engine's options whose worth only a GPU can tell (on a CPU channels-last measured no faster); their rows
# compare the engine with the option against the same bare loop as the row without it
OPTION_TITLES = {"channels_last": "engine channels-last", "torch_compile": "engine torch.compile"}
LATENT_SIDES = {"sd15": 64, "sdxl": 128, "flux": 64}
# the published figures (H100, the same model class, resolution, batch 1, bf16) come first, so a time budget that
# runs out leaves the rows that can be compared
CONFIGS = (
    Config("sd15", 1, 16, False), Config("sd15", 1, 16, True),
    Config("sdxl", 1, 16, False), Config("sdxl", 1, 16, True),
    Config("sd15", 1, 16, False, "channels_last"), Config("sd15", 1, 16, False, "torch_compile"),
    Config("sd15", 1, 32, False), Config("sd15", 1, 32, True),
    Config("sd15", 4, 16, False), Config("sd15", 4, 16, True),
    Config("sd15", 4, 32, False), Config("sd15", 4, 32, True),
    # the flow issue's rows: full-size Flux.1 dev with random bf16 weights, gradient checkpointing (what 24 GB needs)
    Config("flux", 1, 16, True, latent_side=64), Config("flux", 1, 16, True, latent_side=128),
)
ANCHORS = {
    Config("sd15", 1, 16, False): Anchor(0.181, 2.87), Config("sd15", 1, 16, True): Anchor(0.305, 1.98),
    Config("sdxl", 1, 16, False): Anchor(0.606, 13.0), Config("sdxl", 1, 16, True): Anchor(1.08, 6.5),
}


@dataclass(frozen=True)
class Scale:
    """How much each configuration runs: full size on the GPU, or the smoke run's tiny models on the CPU."""

    smoke: bool
    latent_sides: dict
    warmup: int
    steps: int
    reserve_s: float           # a configuration starts only with this much of the time budget left
    compile_backend: str       # the torch.compile row's: inductor on the GPU; in the smoke run aot_eager, the same
                               # tracing without minutes of C++ compiling on a CPU
    forced_side: bool = False  # --latent-side: one latent side for every row


FULL = Scale(False, LATENT_SIDES, warmup=3, steps=10, reserve_s=20.0, compile_backend="inductor")
SMOKE = Scale(True, {"sd15": 8, "sdxl": 8, "flux": 8}, warmup=1, steps=1, reserve_s=0.0, compile_backend="aot_eager")


# ---- the two ways to build a model ----------------------------------------------------------------------------

class DiffusersBackend:
    """diffusers' UNet2DConditionModel through the engine's diffusers adapter."""

    LAYOUTS = {(False, "sd15"): "sd15-full", (False, "sdxl"): "sdxl-full",
               (True, "sd15"): "sd15-tiny", (True, "sdxl"): "sdxl-tiny"}

    def __init__(self, device: torch.device, smoke: bool):
        import diffusers

        self.device, self.smoke = device, smoke
        self.description = (f"diffusers {diffusers.__version__} UNet2DConditionModel through "
                            "trainer/diffusers_adapter.py (SD1.5: diffusers' default config with a 768 context; "
                            "SDXL: the base model's config)")

    def build(self, model: str) -> BenchModel:
        return diffusers_bench_model(diffusers_unet(self.LAYOUTS[self.smoke, model], self.device, torch.bfloat16))

    def release(self) -> None:
        pass


class ComfyBackend:
    """ComfyUI's own model classes (comfy.supported_models.SD15 / SDXL, BaseModel, UNetModel) in a ModelPatcher,
    built as the tests build them (tests/comfyui/tiny_models_pack/tiny_models.py) and wrapped by the Train node's
    adapter (nodes/comfy_model.py trainable_from_comfy), as the node does with a loaded MODEL."""

    def __init__(self, device: torch.device, smoke: bool):
        from tests.comfyui import harness

        if harness.missing_reason():
            raise RuntimeError(harness.missing_reason())
        harness.bootstrap(cpu=device.type == "cpu")
        import comfy.model_management as mm

        self.mm, self.smoke = mm, smoke
        self.device = mm.get_torch_device()
        self.recipes = harness.load_tiny_models()
        self.adapter = pack_module(harness, "nodes.comfy_model")
        self.description = (f"ComfyUI {harness.comfyui_version()} at {harness.comfyui_path()}: its SD15 / SDXL "
                            "model classes in a ModelPatcher, wrapped by nodes/comfy_model.py")

    def build(self, model: str) -> BenchModel:
        import comfy.supported_models as models

        recipes = self.recipes
        if model == "flux":
            if self.smoke:
                patcher = recipes.model_on(models.Flux, recipes.flux_unet_config(), device=self.device,
                                           dtype=torch.bfloat16, fan_in=True)
            else:
                patcher = recipes.full_size_dit("flux_dev", device=self.device, dtype=torch.bfloat16)
            return comfy_flow_bench_model(patcher, self.adapter)
        if model == "sd15":
            config_class = models.SD15
            unet_config = recipes.sd15_unet_config(context_dim=32 if self.smoke else 768, tiny=self.smoke)
        else:
            config_class, unet_config = models.SDXL, recipes.sdxl_unet_config(tiny=self.smoke)
        patcher = recipes.model_on(config_class, unet_config, device=self.device, dtype=torch.bfloat16)
        return comfy_bench_model(patcher, self.adapter)

    def release(self) -> None:
        self.mm.unload_all_models()         # ComfyUI's list of loaded models would keep the last one alive


def pack_module(harness, name: str):
    """A module of this pack imported as ComfyUI imports it (one package, relative imports inside), without
    running nodes/__init__.py: that registers every node and so imports ComfyUI's node API, which needs PyAV, a
    package the GPU machine lacks and the model adapter never uses."""
    harness.load_pack()                     # the pack's own __init__.py imports nothing
    package = f"{harness.PACK_MODULE}.nodes"
    if package not in sys.modules:
        nodes = types.ModuleType(package)
        nodes.__path__ = [os.path.join(harness.REPO_ROOT, "nodes")]
        nodes.__package__ = package
        sys.modules[package] = nodes
        setattr(sys.modules[harness.PACK_MODULE], "nodes", nodes)
    return importlib.import_module(f"{harness.PACK_MODULE}.{name}")


def comfy_bench_model(patcher, adapter) -> BenchModel:
    """A ComfyUI MODEL as the Train node hands it to the engine, and its diffusion_model for the bare loop."""
    trainable = adapter.trainable_from_comfy(patcher, None)
    trainable.prepare(False, 0)             # as the engine does before its first step: ComfyUI loads the UNet
    denoiser = trainable.denoiser
    unet_config = patcher.model.model_config.unet_config
    pooled_dim = unet_config["adm_in_channels"] - SDXL_SIZE_EMBEDDING if denoiser.family.pooled_text else None
    attention = attention_options(adapter)

    def bare_call(batch: BareBatch):
        extra = {}
        if batch.pooled is not None:        # SDXL's ADM vector, made once by ComfyUI's encode_adm
            extra["y"] = denoiser.size_vector(batch.pooled, batch.sizes).to(batch.noisy.device, batch.noisy.dtype)
        timesteps = batch.timesteps.float()
        unet = denoiser.unet                # the model itself: an engine torch.compile row compiles only its own
        return lambda: unet(batch.noisy, timesteps, context=batch.context, **extra, **attention())

    return BenchModel(trainable, unet_config["context_dim"], pooled_dim, bare_call)


def comfy_flow_bench_model(patcher, adapter) -> BenchModel:
    """A flow-matching ComfyUI MODEL (Flux.1 dev) as the Train node hands it to the engine; the bare loop calls its
    diffusion model with what ComfyUI's apply_model would give it: sigmas as timesteps (Flux's multiplier is 1),
    the T5 context, the pooled CLIP-L vector and the guidance input."""
    trainable = adapter.trainable_from_comfy(patcher, None)
    trainable.prepare(False, 0)
    denoiser = trainable.denoiser
    unet_config = patcher.model.model_config.unet_config
    attention = attention_options(adapter)

    def bare_call(batch: BareBatch):
        unet = denoiser.diffusion_model
        guidance = torch.ones(batch.noisy.shape[0], device=batch.noisy.device, dtype=batch.noisy.dtype)
        sigmas = batch.timesteps.to(batch.noisy.dtype)
        return lambda: unet(batch.noisy, sigmas, context=batch.context, y=batch.pooled, guidance=guidance,
                            **attention())

    return BenchModel(trainable, unet_config["context_in_dim"], unet_config["vec_in_dim"], bare_call,
                      caption_tokens=FLUX_CAPTION_TOKENS)


def attention_options(adapter):
    """The attention the engine's denoiser trains with, for the bare loop too: the adapter's override where it has
    one (a fresh transformer_options per call: the UNet writes into it), else ComfyUI's own choice, which the
    engine then uses as well."""
    override = getattr(adapter, "training_attention", None)
    if override is None:
        return lambda: {}
    return lambda: {"transformer_options": override()}


def start_backend(name: str, device: torch.device, smoke: bool, log) -> object:
    """The backend asked for; `auto`: ComfyUI when a checkout is at hand, and diffusers when there is none or it
    cannot start (the one GPU call still measures something; the header says which ran and why)."""
    if name == "diffusers":
        return DiffusersBackend(device, smoke)
    if name == "comfyui":
        return ComfyBackend(device, smoke)
    if os.environ.get("COMFYUI_PATH"):
        try:
            return ComfyBackend(device, smoke)
        except Exception as error:           # a missing package on the GPU machine, say
            traceback.print_exc()
            log(f"ComfyUI could not start ({one_line(error)}); measuring through diffusers instead")
            backend = DiffusersBackend(device, smoke)
            backend.description += f" (ComfyUI could not start: {one_line(error)})"
            return backend
    return DiffusersBackend(device, smoke)


# ---- running the configurations -------------------------------------------------------------------------------

@dataclass
class Row:
    config: Config
    status: str = "ok"
    timing: Timing | None = None
    engine_peak: int | None = None
    bare_peak: int | None = None
    weights: int | None = None      # bytes allocated on the GPU once the model is built: its weights
    syncs: tuple[int, int] | None = None    # host synchronisations in one engine step and one bare step (CUDA)

    def cells(self) -> list[str]:
        anchor = ANCHORS.get(self.config)
        timing = self.timing
        return [self.config.label(),
                f"{timing.engine_s:.3f}" if timing else "",
                f"{timing.bare_s:.3f}" if timing else "",
                f"{timing.engine_s / timing.bare_s:.3f}" if timing else "",
                gib_text(self.engine_peak, timing), gib_text(self.bare_peak, timing), gib_text(self.weights, timing),
                (f"{self.syncs[0]} / {self.syncs[1]}" if self.syncs else "n/a (CPU)") if timing else "",
                anchor.text() if anchor else "", markdown_cell(self.status)]

    def record(self) -> dict:
        return {"config": asdict(self.config), "label": self.config.label(), "status": self.status,
                "timing": asdict(self.timing) if self.timing else None, "engine_peak_bytes": self.engine_peak,
                "bare_peak_bytes": self.bare_peak, "weights_bytes": self.weights, "host_syncs": self.syncs,
                "anchor": asdict(ANCHORS[self.config]) if self.config in ANCHORS else None}


def gib_text(amount: int | None, timing: Timing | None) -> str:
    if timing is None:
        return ""
    return "n/a (CPU)" if amount is None else f"{amount / GIB:.2f}"


def one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


class ModelSlot:
    """One model on the device at a time, so each configuration's peak counts its own model only; the model
    stays while configurations on it follow each other."""

    def __init__(self, backend):
        self.backend, self.key, self.model = backend, None, None

    def get(self, key: str) -> BenchModel:
        if key != self.key:
            self.clear()
            model = self.backend.build(key)
            self.key, self.model = key, model
        return self.model

    def clear(self) -> None:
        if self.model is not None:
            self.key = self.model = None
            self.backend.release()
        free_memory()


def allocated_bytes(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def free_memory() -> None:
    """Give the GPU back what the last configuration held (reference cycles too); nothing to do on the CPU,
    where a collection of the whole heap costs more than the smoke run's steps."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def measure(slot: ModelSlot, config: Config, scale: Scale, latent_sides: dict, deadline: float) -> Row:
    """One configuration's row; its error in the row when it fails."""
    pair = None
    try:
        model = slot.get(config.model)
        weights = allocated_bytes(model.trainable.denoiser.device)
        pair = StepPair(model, config.batch, config.rank, latent_side_of(config, scale, latent_sides), PRECISION,
                        config.checkpointing, config.option, scale.compile_backend)
        with pair.attached():
            timing = interleaved_medians(pair, scale.warmup, scale.steps, deadline)
            engine_peak, bare_peak = peak_bytes(pair.engine, pair.device), peak_bytes(pair.bare, pair.device)
            syncs = (host_syncs(pair.engine), host_syncs(pair.bare)) if pair.device.type == "cuda" else None
        status = "ok" if timing.steps == scale.steps else \
            f"ok, {timing.steps} of {scale.steps} timed steps (time budget)"
        return Row(config, status, timing, engine_peak, bare_peak, weights, syncs)
    except Exception as error:
        traceback.print_exc()
        return Row(config, f"error: {one_line(error)}")
    finally:
        del pair
        free_memory()


def latent_side_of(config: Config, scale: Scale, latent_sides: dict) -> int:
    """--latent-side's side where it is given (latent_sides then holds it for every model), else a row's own side
    at full scale, else its model's."""
    if config.latent_side and not scale.smoke and not scale.forced_side:
        return config.latent_side
    return latent_sides[config.model]


def host_syncs(step) -> int:
    """How many times one call of `step` makes the CPU wait for the GPU (torch's sync debug mode warns at each
    synchronising call: .item(), a blocking copy, a GradScaler check...)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def run_configs(backend, configs, scale: Scale, latent_sides: dict, deadline: float, on_row) -> list[Row]:
    """Every configuration in order, each row handed to `on_row` as it is done; configurations the time budget
    has no room for, or that an interrupt (gpu.sh's time limit) leaves, come back as skipped rows."""
    slot, rows = ModelSlot(backend), []
    try:
        for config in configs:
            if config.model in COMFYUI_ONLY and not isinstance(backend, ComfyBackend):
                rows.append(Row(config, "skipped: needs ComfyUI's model classes (a ComfyUI checkout)"))
            elif time.monotonic() > deadline - scale.reserve_s:
                rows.append(Row(config, "skipped: time budget"))
            else:
                rows.append(measure(slot, config, scale, latent_sides, deadline))
            on_row(rows)
    except KeyboardInterrupt:
        done = {row.config for row in rows}
        rows += [Row(config, "skipped: interrupted (gpu.sh's time limit)") for config in configs
                 if config not in done]
        on_row(rows)
    finally:
        slot.clear()
    return rows


# ---- the report -----------------------------------------------------------------------------------------------

COLUMNS = ("configuration", "engine s/step", "bare s/step", "engine / bare", "engine peak GiB", "bare peak GiB",
           "model GiB", "host syncs per step (engine / bare)", "H100 anchor (s/step, GiB)", "status")


def device_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({torch.get_num_threads()} thread(s)), torch {torch.__version__}"


def header_lines(backend, scale: Scale, latent_sides: dict, budget_s: float) -> list[str]:
    def side_text(model: str, side: int) -> str:
        own = sorted({c.latent_side for c in CONFIGS if c.model == model and c.latent_side})
        if own and not scale.smoke and not scale.forced_side:
            return " / ".join(f"{s}x{s}" for s in own) + " (per row)"
        return f"{side}x{side}"

    sides = ", ".join(f"{MODEL_TITLES[m].split()[0]} {side_text(m, s)}" for m, s in latent_sides.items())
    lines = ["## GPU training speed: the engine's step against the bare loop (benchmarks/gpu.sh)", "",
             f"- device: {device_text(backend.device)}",
             f"- models: {backend.description}; random bf16 weights, frozen; LoRA fp32 on the attention and "
             "projection layers (alpha = rank), AdamW, autocast bf16",
             f"- engine options: channels-last (both loops' weights, the engine's latents); torch.compile with "
             f"{scale.compile_backend} (the engine's calls; the warm-up steps compile)",
             f"- latents: {sides}; {scale.warmup} warm-up and {scale.steps} timed steps of each loop, interleaved, "
             "torch.cuda.synchronize around each; medians",
             "- peaks: torch.cuda.max_memory_allocated over one step of each, reset for it, the weights included; "
             "model: what was allocated once the model was built (its weights; one model on the GPU at a time)",
             "- anchors: published H100 figures of the same class (model, resolution, batch 1, bf16), not this "
             "machine's",
             f"- {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; time budget {budget_s:.0f} s"]
    if scale.smoke:
        lines.append("- SMOKE RUN: tiny models and 8x8 latents on the CPU, to check that every configuration runs; "
                     "the numbers mean nothing")
    return lines + [""]


def table_lines(rows: list[Row]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return lines + ["| " + " | ".join(row.cells()) + " |" for row in rows]


def write_report(out_dir: str, header: list[str], rows: list[Row], seconds: float) -> str:
    """The Markdown table (and the same rows as JSON) in `out_dir`, rewritten whole after every row, so a run
    cut short still leaves what it measured."""
    text = "\n".join(header + table_lines(rows) + ["", f"{len(rows)} of {len(CONFIGS)} rows, {seconds:.0f} s"])
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, TABLE_FILE), "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    with open(os.path.join(out_dir, JSON_FILE), "w", encoding="utf-8") as handle:
        json.dump({"header": header, "seconds": seconds, "rows": [row.record() for row in rows]}, handle, indent=1)
    return text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models on the CPU, one step per configuration: checks that everything runs")
    parser.add_argument("--backend", choices=("auto", "comfyui", "diffusers"), default="auto",
                        help="auto: ComfyUI's model classes when COMFYUI_PATH names a checkout, else diffusers")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda; cpu with --smoke")
    parser.add_argument("--model", choices=tuple(MODEL_TITLES), action="append",
                        help="only these models' configurations (default: all)")
    parser.add_argument("--latent-side", type=int, default=None, help="latent side for every model (a local check "
                        "of the full-size models at a size a CPU can run)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=290.0,
                        help="configurations start only while this much time since the start is not used up")
    parser.add_argument("--out-dir", default=os.environ.get("OUT") or LOCAL_OUT_DIR)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    # gpu.sh's time limit sends SIGINT, the device tool's SIGTERM: either one stops the run as Ctrl-C does, so the
    # rows not run are marked and the table is kept; installed explicitly, since a shell that starts us in the
    # background leaves SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    scale = SMOKE if args.smoke else FULL
    if args.warmup is not None or args.steps is not None:
        scale = dataclasses.replace(scale, warmup=scale.warmup if args.warmup is None else args.warmup,
                                    steps=scale.steps if args.steps is None else args.steps)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)

    if device.type == "cuda" and not torch.cuda.is_available():
        log("no CUDA GPU here: run with --smoke (tiny models on the CPU), or on the GPU machine (benchmarks/gpu.sh)")
        return 2
    if device.type == "cpu":
        torch.set_num_threads(1)            # tiny convolutions run about 100x slower with 2 threads on small boxes
    models = args.model or tuple(MODEL_TITLES)
    configs = [config for config in CONFIGS if config.model in models]
    latent_sides = {m: args.latent_side or scale.latent_sides[m] for m in models}
    scale = dataclasses.replace(scale, forced_side=bool(args.latent_side))
    backend = start_backend(args.backend, device, scale.smoke, log)
    header = header_lines(backend, scale, latent_sides, args.budget_s)
    log(f"{len(configs)} configurations; models: {backend.description}")

    def on_row(rows: list[Row]) -> None:
        row = rows[-1]
        log(" | ".join([row.config.label()] + row.cells()[1:]))
        write_report(args.out_dir, header, rows, time.monotonic() - started)

    rows = run_configs(backend, configs, scale, latent_sides, started + args.budget_s, on_row)
    text = write_report(args.out_dir, header, rows, time.monotonic() - started)
    print("\n" + text, flush=True)
    print(f"\nwritten: {os.path.join(args.out_dir, TABLE_FILE)} and {JSON_FILE}", flush=True)
    interrupted = any(row.status.startswith("skipped: interrupted") for row in rows)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
