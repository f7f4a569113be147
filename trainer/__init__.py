"""The training engine: datasets, buckets, latent cache, LoRA networks, the loop and the file format.

Imports torch, safetensors, PIL and numpy; never ComfyUI (nodes/ adapts ComfyUI objects to
trainer.interfaces).
"""
