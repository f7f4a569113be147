"""How much the engine's training step costs over the bare forward + backward it is built around.

Both run in this process on the same model, interleaved, so machine noise hits both alike; the result
is a ratio, not an absolute time. Run from the repository root:
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.train_step_overhead [--steps 20] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainer.kohya_names import block_targets
from trainer.latent_cache import CachedSample
from trainer.loop import TrainStep, frozen
from trainer.networks import LoRANetwork, NetworkConfig
from trainer.optim import OptimizerConfig, build_optimizer
from trainer.text_contexts import CaptionContexts
from trainer.diffusers_adapter import DiffusersUNetDenoiser, FunctionCaptionEncoder


def build_unet(device: str):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128, attention_head_dim=16, norm_num_groups=32).to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32, help="latent side (32 = 256 px images)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    unet = build_unet(args.device)
    unet.requires_grad_(False)
    targets = block_targets(unet, ("Transformer2DModel",))
    network = LoRANetwork(targets, NetworkConfig(rank=16, alpha=16)).to(device)
    optimizer, _ = build_optimizer(OptimizerConfig(), network.trainable_parameters(), total_steps=10_000)
    denoiser = DiffusersUNetDenoiser(unet)
    context = torch.randn(1, 77, 128)
    samples = [CachedSample(f"img{i}", "caption", 1, "set", (256, 256), (256, 256),
                            torch.randn(4, args.size, args.size)) for i in range(args.batch)]
    captions = CaptionContexts(FunctionCaptionEncoder(lambda caption: context), samples, torch.device(device), seed=0)
    step = TrainStep(denoiser, network, optimizer, OptimizerConfig(), captions, "fp32", seed=0)

    x = torch.randn(args.batch, 4, args.size, args.size, device=device)
    t = torch.randint(0, 1000, (args.batch,), device=device)
    c = context.repeat(args.batch, 1, 1).to(device)
    target = torch.randn_like(x)

    def bare() -> None:
        prediction = unet(x, t, encoder_hidden_states=c).sample
        torch.nn.functional.mse_loss(prediction, target).backward()
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
        for _ in range(args.steps):
            bare_times.append(timed(bare))
            engine_times.append(timed(engine))
    bare_median, engine_median = statistics.median(bare_times), statistics.median(engine_times)
    print(f"device {device}, batch {args.batch}, latents {args.size}x{args.size}, {len(targets)} LoRA modules, "
          f"{args.steps} interleaved steps")
    print(f"bare forward+backward median {bare_median * 1000:.1f} ms; engine step median {engine_median * 1000:.1f} ms")
    print(f"ratio engine / bare = {engine_median / bare_median:.3f}")


if __name__ == "__main__":
    main()
