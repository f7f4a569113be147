"""The plan's time estimate against the time the run then takes, in one process.

Each case trains a LoRA on a diffusers UNet (SD1.5's layout at reduced width, benchmarks/training_step.py) from a
latent cache made here (random latents in one or two buckets). Before the first step the plan (trainer/preflight.py)
times its warm-up passes on the largest bucket and gives seconds per step; the run's next steps are then timed
between optimizer steps (on_step). Printed: the estimate, the measured mean and median of those steps, and
estimate / measured mean. With two buckets the estimate is the largest bucket's, an upper bound (the smaller
bucket's steps are faster), so its ratio sits above 1 by design.

Run from the repository root:
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.plan_estimate [--steps 50] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from benchmarks.training_step import diffusers_unet
from trainer.cli.tiny_model import HashedWordEncoder, tiny_unet
from trainer.dataset.buckets import BucketSettings
from trainer.dataset.records import Dataset, ImageEntry, Subset
from trainer.diffusers_adapter import FunctionCaptionEncoder, diffusers_sd1_trainable
from trainer.latent_cache import CachedSample, LatentCache
from trainer.loop import TrainCallbacks, train_lora
from trainer.networks import NetworkConfig
from trainer.optim import OptimizerConfig
from trainer.plan import TrainSettings
from trainer.preflight import preflight


@dataclass(frozen=True)
class Case:
    label: str
    sides: tuple[tuple[int, int], ...]     # latent (width, height) of each bucket, one image each
    batch: int
    accumulation: int = 1


CASES = (Case("one bucket, batch 1", ((32, 32),), 1),
         Case("one bucket, batch 2, accumulation 2", ((32, 32),), 2, 2),
         Case("two buckets (32x32, 24x16), batch 1", ((32, 32), (24, 16)), 1))


def latent_cache(sides, images_per_bucket: int) -> LatentCache:
    """Random latents, `images_per_bucket` per bucket, with the dataset records the plan describes."""
    generator = torch.Generator().manual_seed(0)
    buckets, entries = {}, []
    for width, height in sides:
        size = (width * 8, height * 8)
        samples = []
        for index in range(images_per_bucket):
            path = f"bench/1_sks dog/{width}x{height}_{index}.png"
            samples.append(CachedSample(path, "a photo of sks dog", 1, "1_sks dog", size, size,
                                        torch.randn(4, height, width, generator=generator)))
            entries.append(ImageEntry(path, "a photo of sks dog", True, size))
        buckets[size] = samples
    dataset = Dataset("bench", ".txt", (Subset("bench/1_sks dog", 1, "sks dog", tuple(entries)),))
    largest = max(buckets, key=lambda size: size[0] * size[1])
    return LatentCache(BucketSettings(largest, 64, 512), buckets, dataset, 0.0)


def measure(case: Case, steps: int, smoke: bool) -> dict:
    unet = tiny_unet() if smoke else diffusers_unet("sd15", "cpu")
    dim = unet.config.cross_attention_dim
    trainable = diffusers_sd1_trainable(unet, FunctionCaptionEncoder(HashedWordEncoder(dim)))
    per_step = case.batch * case.accumulation
    cache = latent_cache(tuple((w // 2, h // 2) for w, h in case.sides) if smoke else case.sides,
                         images_per_bucket=per_step * 4)
    settings = TrainSettings(output_name="bench", epochs=0, max_steps=steps, batch_size=case.batch,
                             gradient_accumulation_steps=case.accumulation)
    planned, stamps = {}, []

    def on_ready(ready) -> None:
        planned["estimate"] = preflight(ready, "bench", time.perf_counter, lambda device, resident: None).estimate

    def on_step(progress, total) -> None:
        stamps.append(time.perf_counter())

    started = time.perf_counter()
    train_lora(trainable, cache, NetworkConfig(rank=16, alpha=16), OptimizerConfig(learning_rate=1e-4), settings,
               TrainCallbacks(on_step=on_step, on_ready=lambda ready: (on_ready(ready), stamps.append(
                   time.perf_counter()))))
    durations = [after - before for before, after in zip(stamps, stamps[1:])]
    estimate = planned["estimate"].step_seconds
    mean = statistics.fmean(durations)
    return {"case": case.label, "estimate_s": estimate, "mean_s": mean, "median_s": statistics.median(durations),
            "ratio": estimate / mean, "steps": len(durations), "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="the tests' tiny UNet, 5 steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = 5 if args.smoke else args.steps
    print("| case | estimate s/step | measured mean s/step | measured median s/step | estimate / mean | steps |")
    print("|---|---|---|---|---|---|")
    for case in CASES:
        row = measure(case, steps, args.smoke)
        print(f"| {row['case']} | {row['estimate_s']:.4f} | {row['mean_s']:.4f} | {row['median_s']:.4f} | "
              f"{row['ratio']:.3f} | {row['steps']} |", flush=True)


if __name__ == "__main__":
    main()
