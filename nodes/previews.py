"""In-training previews: each sample prompt rendered with the LoRA as it is now, through ComfyUI's own
sampler and the workflow's VAE, saved to the run's samples folder and shown on the Train node.

Called by the loop with the LoRA attached to the model (forward hooks, in eval mode), gradients off and the
training random streams left alone, so a run with previews trains the same LoRA as one without.
"""

from __future__ import annotations

import io as bytes_io
import os

import numpy as np
import torch
from PIL import Image

from ..trainer.atomic_files import write_atomic
from ..trainer.sample_prompts import SamplePrompt

PREVIEW_SIZE = 512            # the longest side of the image shown on the node


def encode(clip, text: str):
    """CLIPTextEncode's conditioning for `text` (with the pooled output SDXL needs)."""
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def render(patcher, clip, vae, prompt: SamplePrompt, sampler_name: str, scheduler: str) -> Image.Image:
    import comfy.sample

    latent = torch.zeros([1, 4, prompt.height // 8, prompt.width // 8])
    latent = comfy.sample.fix_empty_latent_channels(patcher, latent)
    noise = comfy.sample.prepare_noise(latent, prompt.seed)
    samples = comfy.sample.sample(patcher, noise, prompt.steps, prompt.cfg, sampler_name, scheduler,
                                  encode(clip, prompt.prompt), encode(clip, prompt.negative), latent,
                                  disable_pbar=True, seed=prompt.seed)
    pixels = vae.decode(samples)[0].float().clamp(0, 1)
    while pixels.dim() > 3:                                   # video-shaped VAEs: the first frame
        pixels = pixels[0]
    return Image.fromarray((pixels.cpu().numpy() * 255.0).round().astype(np.uint8))


class PreviewRenderer:
    """The loop's on_sample callback for one run."""

    def __init__(self, patcher, clip, vae, prompts: list[SamplePrompt], sampler_name: str, scheduler: str,
                 reporter_for_step, reload_training_models):
        self.patcher, self.clip, self.vae = patcher, clip, vae
        self.prompts, self.sampler_name, self.scheduler = prompts, sampler_name, scheduler
        self.reporter_for_step = reporter_for_step          # (step, PIL image) -> shows it on the node
        self.reload_training_models = reload_training_models
        self.files: list[str] = []

    def __call__(self, progress, run_folder: str) -> None:
        samples_folder = os.path.join(run_folder, "samples")
        os.makedirs(samples_folder, exist_ok=True)
        try:
            for index, prompt in enumerate(self.prompts):
                image = render(self.patcher, self.clip, self.vae, prompt, self.sampler_name, self.scheduler)
                path = os.path.join(samples_folder, f"step{progress.step:08d}_{index:02d}.png")
                buffer = bytes_io.BytesIO()
                image.save(buffer, format="PNG")
                write_atomic(path, buffer.getvalue())
                self.files.append(path)
                shown = image.copy()
                shown.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
                self.reporter_for_step(progress.step, shown)
        finally:
            # sampling loaded the VAE (and perhaps moved the UNet): put the training models back
            self.reload_training_models()
