"""How much the engine's training step costs over the bare training step it is built around.

Bare: the same UNet with the same LoRA modules and one precomputed batch: forward (autocast as the engine's
precision), MSE, backward, gradient clipping and the optimizer step, nothing else. Engine: one `TrainStep`
(noise and timestep draw, schedule lookup, latent scaling, context batching, size conditioning for SDXL,
kohya's loss with the options off, backward, clipping, step). Both run in this process on the same model,
interleaved, so machine noise hits both alike; the result is a ratio, not an absolute time.

Run from the repository root (every model x precision, or a chosen one):
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.train_step_overhead [--steps 15] [--model sd15|sdxl]
        [--precision fp32|bf16|fp16] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from trainer.conditioning import TextConditioning, sdxl_size_condition
from trainer.diffusers_adapter import DiffusersUNetDenoiser, FunctionCaptionEncoder
from trainer.kohya_names import block_targets
from trainer.latent_cache import CachedSample
from trainer.loop import TrainStep, frozen
from trainer.networks import LoRANetwork, NetworkConfig
from trainer.optim import OptimizerConfig, build_optimizer
from trainer.text_contexts import CaptionContexts

OPTIMIZER = OptimizerConfig(optimizer_type="AdamW")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def build_unet(model: str, device: str):
    """SD1.5's block layout, or SDXL's (no attention in the first level, 2 / 10 transformer layers deep, linear
    projections, the text_time size conditioning), both at reduced width so a CPU can time them."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if model == "sdxl":
        return UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(64, 128, 128),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 4), cross_attention_dim=160, attention_head_dim=16,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=32,
            projection_class_embeddings_input_dim=64 + 6 * 32, norm_num_groups=32).to(device).eval()
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128, attention_head_dim=16, norm_num_groups=32).to(device).eval()


def measure(model: str, precision: str, device: torch.device, steps: int, batch: int, size: int) -> dict:
    unet = build_unet(model, device.type)
    unet.requires_grad_(False)
    targets = block_targets(unet, ("Transformer2DModel",))
    network = LoRANetwork(targets, NetworkConfig(rank=16, alpha=16)).to(device)
    optimizer, _ = build_optimizer(OPTIMIZER, network.parameter_groups(1e-4, 1e-4), total_steps=10_000)
    denoiser = DiffusersUNetDenoiser(unet)
    context_dim = unet.config.cross_attention_dim
    context = torch.randn(1, 77, context_dim)
    pooled = torch.randn(1, 64) if model == "sdxl" else None
    encoded = TextConditioning(context, pooled) if pooled is not None else context
    samples = [CachedSample(f"img{i}", "caption", 1, "set", (256, 256), (256, 256), torch.randn(4, size, size))
               for i in range(batch)]
    captions = CaptionContexts(FunctionCaptionEncoder(lambda caption: encoded), samples, device, seed=0)
    step = TrainStep(denoiser, network, optimizer, OPTIMIZER, captions, precision, seed=0)

    x = torch.randn(batch, 4, size, size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    c = context.repeat(batch, 1, 1).to(device)
    target = torch.randn_like(x)
    extra = {}
    if pooled is not None:
        condition = sdxl_size_condition((256, 256), (256, 256))
        ids = torch.tensor([[*condition.original_hw, *condition.crop_top_left, *condition.target_hw]] * batch,
                           dtype=torch.float32, device=device)
        extra["added_cond_kwargs"] = {"text_embeds": pooled.repeat(batch, 1).to(device), "time_ids": ids}
    parameters = network.trainable_parameters()
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def bare() -> None:
        autocast = torch.autocast(device.type, dtype=AUTOCAST[precision]) if precision in AUTOCAST else nullcontext()
        with autocast:
            prediction = unet(x, t, encoder_hidden_states=c, **extra).sample
        scaler.scale(torch.nn.functional.mse_loss(prediction.float(), target)).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def engine() -> None:
        step(samples, 1, ["caption"] * len(samples))

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with frozen(unet), network.attached(targets):
        for _ in range(3):
            bare(), engine()
        bare_times, engine_times = [], []
        for _ in range(steps):
            bare_times.append(timed(bare))
            engine_times.append(timed(engine))
    bare_median, engine_median = statistics.median(bare_times), statistics.median(engine_times)
    return {"model": model, "precision": precision, "modules": len(targets), "bare_ms": bare_median * 1000,
            "engine_ms": engine_median * 1000, "ratio": engine_median / bare_median}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32, help="latent side (32 = 256 px images)")
    parser.add_argument("--model", choices=("sd15", "sdxl"), action="append")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), action="append")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, batch {args.batch}, latents {args.size}x{args.size}, {args.steps} interleaved steps")
    print("| model | precision | LoRA modules | bare ms | engine ms | ratio engine / bare |")
    print("|---|---|---|---|---|---|")
    for model in args.model or ("sd15", "sdxl"):
        for precision in args.precision or ("fp32", "bf16", "fp16"):
            row = measure(model, precision, device, args.steps, args.batch, args.size)
            print(f"| {row['model']} | {row['precision']} | {row['modules']} | {row['bare_ms']:.1f} | "
                  f"{row['engine_ms']:.1f} | {row['ratio']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
