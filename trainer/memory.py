"""What training needs on the device beyond the model's weights, for the host's memory manager to keep free
when it loads the model (ComfyUI's load_models_gpu(memory_required=...)): a rough estimate, not a promise.

    LoRA: its weights, gradients and two optimizer moments, in fp32 (16 bytes a parameter)
    activations: the host's own forward estimate for the largest batch (ComfyUI's memory_required), times
                 ACTIVATIONS_KEPT (backward keeps the activations of every block; checkpointing keeps one's)

The measured estimate before step one is the plan's (issue 14); this only keeps the memory manager from
packing other models into the room the first step needs.
"""

from __future__ import annotations

import math

ACTIVATIONS_KEPT = 4               # forward activations kept for backward, as a multiple of the forward peak
LORA_BYTES_PER_PARAMETER = 16      # fp32 weight + gradient + AdamW's two moments


def training_memory_estimate(model, cache, network, settings) -> int:
    """Bytes to keep free beside the model's weights; 0 where the host has no forward estimate."""
    lora = sum(p.numel() for p in network.parameters()) * LORA_BYTES_PER_PARAMETER
    forward = getattr(model.denoiser, "forward_memory", None)
    if forward is None or not cache.buckets:
        return lora
    channels = next(iter(cache.samples)).latent.shape[0]
    width, height = max(cache.buckets, key=lambda size: size[0] * size[1])
    shape = (settings.batch_size, channels, height // 8, width // 8)
    kept = 1 if settings.gradient_checkpointing else ACTIVATIONS_KEPT
    return lora + int(math.ceil(forward(shape) * kept))
