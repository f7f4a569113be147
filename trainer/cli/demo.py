"""`python -m trainer demo`: samples/demo.toml (the built-in tiny model on samples/demo_dataset) through the
same `train` path as any config, into an output folder; it says where the files are and what they show."""

from __future__ import annotations

import os
import time

import torch

from .config import RunConfig, read_toml, parse_config
from .run import RunFiles, train

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "samples")
DEMO_CONFIG = os.path.join(SAMPLES, "demo.toml")
DEFAULT_OUTPUT = "demo-output"


def demo_config(output: str) -> RunConfig:
    config = parse_config(read_toml(DEMO_CONFIG))
    output = os.path.abspath(output)
    config.values["output"].update(loras_folder=output, runs_folder=os.path.join(output, "runs"))
    return config


def run_demo(output: str = DEFAULT_OUTPUT, say=print, use_tqdm: bool | None = None) -> RunFiles | None:
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)             # tiny convolutions: one thread is ~100x faster than two on small CPUs
    started = time.perf_counter()
    say(f"demo: training a LoRA on the built-in tiny model with {os.path.join(SAMPLES, 'demo_dataset')}")
    try:
        files = train(demo_config(output), say=say, use_tqdm=use_tqdm)
    finally:
        torch.set_num_threads(previous_threads)      # a test may run the demo in its own process
    if files is None:                    # another process of a torchrun run: the first one reports
        return None
    seconds = time.perf_counter() - started
    say("\n".join([
        "",
        f"demo finished in {seconds:.1f} s. The model is a random tiny SD1-shaped UNet and VAE (no download), so the "
        "demo shows the pipeline (buckets, latent cache, steps, the saved file), not image quality.",
        f"  LoRA:        {files.lora}",
        f"  loss graph:  {files.loss_graph}",
        f"  summary:     {files.summary}",
        f"  run folder:  {files.run_folder} (run.json, config.toml, states)",
        f"Your own run: copy {DEMO_CONFIG}, set [model] path and [dataset] folder, then "
        "`python -m trainer train your.toml` (every key: docs/cli.md).",
    ]))
    return files
