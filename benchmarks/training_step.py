"""What the training-step benchmarks share: diffusers UNet layouts, the engine step beside the bare loop on one
model, and how they are timed.

Bare: the same UNet with the same LoRA modules and one precomputed batch, already in the model's own input form:
forward (autocast at the precision), MSE, backward, gradient clipping and the optimizer step, nothing else.
Engine: one `TrainStep` (noise and timestep draw, schedule lookup, latent scaling, context batching, SDXL's size
conditioning, kohya's loss with its options off, backward, clipping, step). Both update the same LoRA through the
same optimizer, so its state is warm for both, and they are timed interleaved, so machine noise hits both alike.

Used by benchmarks/train_step_overhead.py (CPU, diffusers) and benchmarks/gpu_train_speed.py (GPU, ComfyUI or
diffusers).
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from trainer.checkpointing import checkpointed
from trainer.compiled import compiled_model
from trainer.memory_format import channels_last
from trainer.conditioning import SizeCondition, TextConditioning, sdxl_size_condition
from trainer.diffusers_adapter import SD1_LATENT_SCALE, FunctionCaptionEncoder, diffusers_trainable
from trainer.families import SD1, SDXL, family_by_key
from trainer.interfaces import TrainableModel
from trainer.latent_cache import CachedSample
from trainer.loop import TrainStep, frozen
from trainer.networks import LoRANetwork, NetworkConfig
from trainer.optim import OptimizerConfig, build_optimizer
from trainer.text_contexts import CaptionContexts

OPTIMIZER = OptimizerConfig(optimizer_type="AdamW")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
SDXL_LATENT_SCALE = 0.13025
CAPTION_TOKENS = 77


# ---- diffusers UNets ------------------------------------------------------------------------------------------

def _sd15_small() -> dict:
    """SD1.5's block layout at reduced width, so a CPU can time it."""
    return dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128, 128),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=128, attention_head_dim=16, norm_num_groups=32)


def _sdxl_small() -> dict:
    """SDXL's block layout (no attention in the first level, 2 / 10 transformer layers deep, linear projections,
    the text_time size conditioning) at reduced width."""
    return dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(64, 128, 128),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 4), cross_attention_dim=160, attention_head_dim=16,
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=32,
                projection_class_embeddings_input_dim=64 + 6 * 32, norm_num_groups=32)


def _sd15_full() -> dict:
    """The real SD1.5 UNet: diffusers' default UNet2DConditionModel config is SD1.x's, with CLIP-L's context."""
    return dict(sample_size=64, cross_attention_dim=768)


def _sdxl_full() -> dict:
    """The real SDXL base UNet (its unet/config.json)."""
    return dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816, norm_num_groups=32)


def _sd15_tiny() -> dict:
    """SD1.5's layout at the smallest width GroupNorm allows: for smoke runs that only check the code runs."""
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)


def _sdxl_tiny() -> dict:
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                cross_attention_dim=64, attention_head_dim=8, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=32)


DIFFUSERS_LAYOUTS: dict[str, Callable[[], dict]] = {
    "sd15": _sd15_small, "sdxl": _sdxl_small, "sd15-full": _sd15_full, "sdxl-full": _sdxl_full,
    "sd15-tiny": _sd15_tiny, "sdxl-tiny": _sdxl_tiny,
}


def diffusers_unet(layout: str, device: torch.device | str, dtype: torch.dtype = torch.float32):
    """A diffusers UNet2DConditionModel in one of DIFFUSERS_LAYOUTS, random weights (seed 0), in eval mode.

    Built with the device and dtype as the defaults, so a full-size model's weights are made and initialised on
    the GPU, in bf16, instead of on the CPU in fp32 and then copied."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        unet = UNet2DConditionModel(**DIFFUSERS_LAYOUTS[layout]())
    if any(parameter.dtype != dtype for parameter in unet.parameters()):
        unet = unet.to(dtype=dtype)
    return unet.eval()


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Parameters made in `dtype` from the start: a full-size SDXL UNet is never held in fp32 beside its copy."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ---- a model as both loops see it -----------------------------------------------------------------------------

@dataclass
class BareBatch:
    """One precomputed batch in the model's compute dtype (the target in fp32, as the loss takes it)."""

    noisy: torch.Tensor
    timesteps: torch.Tensor                   # integer DDPM timesteps; sigmas in (0, 1) for a flow model
    context: torch.Tensor
    pooled: torch.Tensor | None               # SDXL's pooled text embedding
    sizes: list[SizeCondition] | None         # SDXL's size conditioning, one per sample
    target: torch.Tensor


@dataclass
class BenchModel:
    """A UNet as the two loops see it: the engine through its adapter (`trainable`), the bare loop through
    `bare_call`, which turns a precomputed batch into the model's own inputs once and returns the forward."""

    trainable: TrainableModel
    context_dim: int
    pooled_dim: int | None                    # None: no pooled text (SD1.x)
    bare_call: Callable[[BareBatch], Callable[[], torch.Tensor]]
    caption_tokens: int = CAPTION_TOKENS      # the text context's length (Flux: T5's 512)


def _no_captions(caption: str):
    raise AssertionError("the benchmarks encode no captions through the model's adapter")


def diffusers_bench_model(unet) -> BenchModel:
    """A diffusers UNet through the engine's diffusers adapter (SD1.x naming, or SDXL's for text_time UNets)."""
    config = unet.config
    sdxl = config.addition_embed_type == "text_time"
    trainable = diffusers_trainable(unet, FunctionCaptionEncoder(_no_captions), SDXL if sdxl else SD1,
                                    latent_scale=SDXL_LATENT_SCALE if sdxl else SD1_LATENT_SCALE)
    pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim if sdxl else None

    def bare_call(batch: BareBatch) -> Callable[[], torch.Tensor]:
        extra = {}
        if batch.pooled is not None:
            time_ids = torch.tensor([[*s.original_hw, *s.crop_top_left, *s.target_hw] for s in batch.sizes],
                                    dtype=batch.pooled.dtype, device=batch.pooled.device)
            extra["added_cond_kwargs"] = {"text_embeds": batch.pooled, "time_ids": time_ids}
        return lambda: unet(batch.noisy, batch.timesteps, encoder_hidden_states=batch.context, **extra).sample

    return BenchModel(trainable, config.cross_attention_dim, pooled_dim, bare_call)


# ---- the two steps --------------------------------------------------------------------------------------------

class StepPair:
    """The engine's training step and the bare loop on one model, sharing one LoRA and its optimizer."""

    def __init__(self, model: BenchModel, batch: int, rank: int, latent_side: int, precision: str,
                 checkpointing: bool = False, option: str = "", compile_backend: str = "inductor"):
        self.model, self.checkpointing, self.option = model, checkpointing, option
        self.compile_backend = compile_backend
        denoiser = model.trainable.denoiser
        self.device = denoiser.device
        torch.manual_seed(0)                  # the LoRA's init draws from the global RNG
        self.network = LoRANetwork(model.trainable.lora_targets, NetworkConfig(rank=rank, alpha=rank)).to(self.device)
        self.optimizer, _ = build_optimizer(OPTIMIZER, self.network.parameter_groups(1e-4, 1e-4), total_steps=10_000)
        self.parameters = self.network.trainable_parameters()
        self.autocast_dtype = AUTOCAST.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

        pixels = (latent_side * 8, latent_side * 8)
        self.latent_channels = (model.trainable.family or family_by_key(model.trainable.base_model_version)
                                ).latent_channels
        context = torch.randn(1, model.caption_tokens, model.context_dim)
        pooled = torch.randn(1, model.pooled_dim) if model.pooled_dim else None
        encoded = TextConditioning(context, pooled) if pooled is not None else context
        # the latent cache keeps latents on the CPU: the engine's step moves each batch to the device itself
        self.samples = [CachedSample(f"img{i}", "caption", 1, "set", pixels, pixels,
                                     torch.randn(self.latent_channels, latent_side, latent_side))
                        for i in range(batch)]
        self.captions = ["caption"] * batch
        contexts = CaptionContexts(FunctionCaptionEncoder(lambda caption: encoded), self.samples, self.device, seed=0)
        self.step = TrainStep(denoiser, self.network, self.optimizer, OPTIMIZER, contexts, precision, seed=0)
        self.bare_batch = self._bare_batch(context, pooled, pixels, batch, latent_side, denoiser.compute_dtype)
        self.bare_forward = model.bare_call(self.bare_batch)

    def _bare_batch(self, context, pooled, pixels, batch: int, latent_side: int, dtype: torch.dtype) -> BareBatch:
        device = self.device
        noisy = torch.randn(batch, self.latent_channels, latent_side, latent_side, device=device)
        sizes = [sdxl_size_condition(pixels, pixels)] * batch if pooled is not None else None
        flow = self.model.trainable.denoiser.prediction_type == "flow"
        timesteps = torch.rand(batch, device=device) if flow else torch.randint(0, 1000, (batch,), device=device)
        return BareBatch(noisy.to(dtype), timesteps,
                         context.repeat(batch, 1, 1).to(device, dtype),
                         None if pooled is None else pooled.repeat(batch, 1).to(device, dtype), sizes,
                         torch.randn_like(noisy))

    @contextmanager
    def attached(self) -> Iterator[None]:
        """The model frozen, in its training mode (a flow model's), the LoRA attached and, when asked, the blocks
        checkpointed, as a run has them."""
        trainable = self.model.trainable
        with ExitStack() as stack:
            stack.enter_context(frozen(trainable.frozen_root))
            if trainable.training_mode is not None:
                stack.enter_context(trainable.training_mode())
            stack.enter_context(self.network.attached(trainable.lora_targets))
            if self.checkpointing:
                stack.enter_context(checkpointed(trainable.checkpoint_blocks, self.checkpoint_generator(),
                                                 trainable.blocks_update_inputs))
            if self.option == "channels_last":     # the weights for both loops; the engine's latents too
                stack.enter_context(channels_last(trainable.frozen_root))
                self.step.memory_format = torch.channels_last
            elif self.option == "torch_compile":   # the engine's calls only: bare_call holds the model itself
                stack.enter_context(compiled_model(trainable.denoiser, self.compile_backend))
            elif self.option:
                raise ValueError(f"unknown engine option {self.option!r}")
            yield

    def checkpoint_generator(self) -> torch.Generator | None:
        """What the engine's run hands checkpointing: the step's generator only when the LoRA draws random numbers
        in its forward (dropouts, DyLoRA), as train_lora does."""
        return self.step.generator if self.network.config.draws_in_forward else None

    def engine(self) -> None:
        self.step(self.samples, 1, self.captions)

    def bare(self) -> None:
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else nullcontext())
        with autocast:
            prediction = self.bare_forward()
        self.scaler.scale(torch.nn.functional.mse_loss(prediction.float(), self.bare_batch.target)).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


# ---- timing ---------------------------------------------------------------------------------------------------

@dataclass
class Timing:
    engine_s: float           # medians, seconds per step
    bare_s: float
    steps: int                # timed steps of each


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds `fn` takes, with the GPU's queue drained before and after, so its kernels count."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(pair: StepPair, warmup: int, steps: int, deadline: float | None = None) -> Timing:
    """Warm-up steps of both (allocations, kernel choices, the optimizer's state), then bare and engine steps
    alternately; timing stops early at `deadline` (time.monotonic()), after at least one step of each."""
    for _ in range(warmup):
        pair.bare()
        pair.engine()
    bare_times, engine_times = [], []
    for index in range(steps):
        if deadline is not None and index and time.monotonic() > deadline:
            break
        bare_times.append(timed(pair.bare, pair.device))
        engine_times.append(timed(pair.engine, pair.device))
    return Timing(statistics.median(engine_times), statistics.median(bare_times), len(bare_times))


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int | None:
    """torch.cuda.max_memory_allocated over one call of `fn`, counted from a fresh peak (weights included); None
    off CUDA."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device)
