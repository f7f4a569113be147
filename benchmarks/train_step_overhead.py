"""How much the engine's training step costs over the bare training step it is built around.

Bare: the same UNet with the same LoRA modules and one precomputed batch: forward (autocast as the engine's
precision), MSE, backward, gradient clipping and the optimizer step, nothing else. Engine: one `TrainStep`
(noise and timestep draw, schedule lookup, latent scaling, context batching, size conditioning for SDXL,
kohya's loss with the options off, backward, clipping, step). Both run in this process on the same model,
interleaved, so machine noise hits both alike; the result is a ratio, not an absolute time. The two steps and
their timing are benchmarks/training_step.py's, shared with the GPU benchmark (benchmarks/gpu_train_speed.py).

Run from the repository root (every model x precision, or a chosen one):
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.train_step_overhead [--steps 15] [--model sd15|sdxl|sd15-full]
        [--precision fp32|bf16|fp16] [--device cuda] [--batch 2] [--size 32]
The real SD1.5 UNet on a CPU, at 8x8 latents:
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.train_step_overhead --model sd15-full --size 8 --batch 1 \
        --precision fp32 --steps 10
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.training_step import StepPair, diffusers_bench_model, diffusers_unet, interleaved_medians

MODELS = ("sd15", "sdxl", "sd15-full")
DEFAULT_MODELS = ("sd15", "sdxl")      # sd15-full when asked: the real SD1.5 UNet, slow on a CPU
RANK = 16
WARMUP_STEPS = 3


def measure(model: str, precision: str, device: torch.device, steps: int, batch: int, size: int) -> dict:
    bench = diffusers_bench_model(diffusers_unet(model, device))
    pair = StepPair(bench, batch, RANK, size, precision)
    with pair.attached():
        timing = interleaved_medians(pair, WARMUP_STEPS, steps)
    return {"model": model, "precision": precision, "modules": len(bench.trainable.lora_targets),
            "bare_ms": timing.bare_s * 1000, "engine_ms": timing.engine_s * 1000,
            "ratio": timing.engine_s / timing.bare_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32, help="latent side (32 = 256 px images)")
    parser.add_argument("--model", choices=MODELS, action="append",
                        help="sd15 / sdxl: the layouts at reduced width; sd15-full: the real SD1.5 UNet")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), action="append")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, batch {args.batch}, latents {args.size}x{args.size}, {args.steps} interleaved steps")
    print("| model | precision | LoRA modules | bare ms | engine ms | ratio engine / bare |")
    print("|---|---|---|---|---|---|")
    for model in args.model or DEFAULT_MODELS:
        for precision in args.precision or ("fp32", "bf16", "fp16"):
            row = measure(model, precision, device, args.steps, args.batch, args.size)
            print(f"| {row['model']} | {row['precision']} | {row['modules']} | {row['bare_ms']:.1f} | "
                  f"{row['engine_ms']:.1f} | {row['ratio']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
