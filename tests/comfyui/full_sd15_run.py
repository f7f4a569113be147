"""Train two steps on ComfyUI's full-size SD1.5 UNet (random weights, 8x8 latents) and report memory.

Run as a subprocess by test_full_sd15.py so the resident-memory numbers belong to this run alone:
    python -m tests.comfyui.full_sd15_run <work folder>
Prints one JSON line: weight bytes, RSS with the model loaded, peak RSS while training, saved keys.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def resident_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class PeakSampler(threading.Thread):
    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.peak, self.samples, self.running = interval, 0, 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, resident_bytes())
            self.samples += 1
            time.sleep(self.interval)


def main(work: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tests.comfyui import harness

    harness.bootstrap()
    import torch

    torch.set_num_threads(1)
    harness.load_pack()
    tiny = harness.load_tiny_models()
    import folder_paths

    folder_paths.folder_names_and_paths["loras"] = ([os.path.join(work, "loras")], {".safetensors"})
    folder_paths.set_output_directory(os.path.join(work, "output"))
    from tests.helpers import make_kohya_folder

    from comfyui_lora_trainer.nodes.comfy_model import ComfyVAEEncoder
    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.dataset.buckets import BucketSettings
    from comfyui_lora_trainer.trainer.dataset import load_dataset_folder
    from comfyui_lora_trainer.trainer.latent_cache import cache_latents
    from comfyui_lora_trainer.trainer.lora_file import save_lora
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    root = make_kohya_folder(os.path.join(work, "data"), {"1_sks dog": [(64, 64), (64, 64)]})
    # built inside inference_mode, as ComfyUI's loaders run, so the weights are inference tensors
    with torch.inference_mode():
        model = tiny.sd15_model(tiny=False, seed=1)
        clip = tiny.sd1_clip(width=768, seed=2)
        vae = tiny.vae(seed=3)
        with torch.inference_mode(False):
            cache = cache_latents(load_dataset_folder(root), ComfyVAEEncoder(vae), BucketSettings((64, 64), 64, 64))
    unet = model.model.diffusion_model
    weight_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    baseline = resident_bytes()
    sampler = PeakSampler()
    sampler.start()
    started = time.perf_counter()
    with torch.inference_mode():
        out = run_training(model, clip, cache, NetworkConfig(rank=4, alpha=1), OptimizerConfig(),
                           TrainSettings(output_name="full_sd15", epochs=1, batch_size=1, seed=0))
    seconds = time.perf_counter() - started
    sampler.running = False
    sampler.join()
    path = save_lora(out.lora, os.path.join(work, "loras"), "full_sd15_saved", precision="fp32")
    print(json.dumps({"weight_bytes": weight_bytes, "baseline_rss": baseline, "peak_rss": sampler.peak,
                      "samples": sampler.samples, "seconds": seconds, "steps": out.result.progress.step,
                      "losses": out.result.progress.losses, "path": path}))


if __name__ == "__main__":
    main(sys.argv[1])
