"""Bucket & Cache Latents: kohya aspect-ratio buckets, resize + centre crop, VAE-encode once into memory."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..trainer.dataset.buckets import BucketSettings
from ..trainer.dataset.images import RESIZE_INTERPOLATIONS
from ..trainer.latent_cache import CACHE_MODES, cache_latents
from .comfy_host import ProgressReporter, latent_cache_fallback_folder
from .comfy_model import ComfyVAEEncoder
from .wire_types import CATEGORY, LoraDataset, LoraLatents


TRANSPARENCY = ("on white", "raw colour (kohya)")


class LoRABucketCacheLatents(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoRABucketCacheLatents",
            display_name="Bucket & Cache Latents",
            category=CATEGORY,
            description="Sorts images into kohya's aspect-ratio buckets, resizes and centre-crops them, and "
                        "encodes each once with the VAE.",
            inputs=[
                LoraDataset.Input("dataset"),
                io.Vae.Input("vae"),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=64,
                             tooltip="Training resolution; buckets keep about this many pixels (512 for SD1.5)."),
                io.Int.Input("min_bucket_reso", default=256, min=64, max=4096, step=64),
                io.Int.Input("max_bucket_reso", default=1024, min=64, max=8192, step=64),
                io.Int.Input("bucket_reso_steps", default=64, min=8, max=256, step=8,
                             tooltip="Bucket sides are multiples of this (kohya requires 64 for SD1.x)."),
                io.Boolean.Input("bucket_no_upscale", default=False,
                                 tooltip="Never enlarge small images; buckets follow each image's own size."),
                io.Int.Input("vae_batch_size", default=1, min=1, max=64,
                             tooltip="Images encoded per VAE call; higher is faster and needs more memory."),
                io.Combo.Input("cache", options=list(CACHE_MODES), default="memory",
                               tooltip="memory: encoded on every (re)run of this node. disk: also kept as kohya "
                                       ".npz files beside the images (readable by kohya) and reused while the image, "
                                       "bucket, resize, flip and VAE are unchanged; only what changed is "
                                       "re-encoded."),
                io.Combo.Input("resize_interpolation", options=list(RESIZE_INTERPOLATIONS), default="auto",
                               optional=True,
                               tooltip="kohya's resize_interpolation. auto: area average to shrink (OpenCV's "
                                       "INTER_AREA, exactly), LANCZOS to enlarge; any other name is used both ways."),
                io.Combo.Input("transparency", options=list(TRANSPARENCY), default=TRANSPARENCY[0],
                               optional=True,
                               tooltip="Transparent pixels: composited on white, or the raw colour stored under "
                                       "them, as kohya trains."),
                io.Boolean.Input("enable_bucket", default=True, optional=True,
                                 tooltip="Off: no aspect-ratio buckets; every image is resized to cover the "
                                         "resolution and centre-cropped to it (kohya's enable_bucket)."),
            ],
            outputs=[LoraLatents.Output(display_name="latents")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, dataset, vae, resolution, min_bucket_reso, max_bucket_reso, bucket_reso_steps,
                bucket_no_upscale, vae_batch_size, cache, resize_interpolation="auto",
                transparency=TRANSPARENCY[0], enable_bucket=True) -> io.NodeOutput:
        settings = BucketSettings((resolution, resolution), min_bucket_reso, max_bucket_reso, bucket_reso_steps,
                                  bucket_no_upscale, enable_bucket)
        reporter = ProgressReporter(cls.hidden.unique_id, max(1, dataset.num_images))
        # ComfyUI runs nodes under inference_mode; cached latents must be ordinary tensors for training
        encoder = ComfyVAEEncoder(vae)
        with torch.inference_mode(False), torch.no_grad():
            try:
                latents = cache_latents(dataset, encoder, settings, vae_batch_size,
                                        progress=lambda done, total: reporter.update(done, f"encoded {done}/{total}"),
                                        interpolation=resize_interpolation,
                                        transparent_on_white=transparency == TRANSPARENCY[0],
                                        cache_mode=cache, fallback_folder=latent_cache_fallback_folder())
            finally:
                encoder.release()
        # the text and the bucket histogram on the node (web/lora_trainer.js draws the bars)
        buckets = [[width, height, count] for (width, height), count in sorted(latents.bucket_counts().items())]
        return io.NodeOutput(latents, ui={"text": [latents.describe()], "lora_trainer_buckets": buckets})
