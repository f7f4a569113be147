"""The training engine: datasets, buckets, latent cache, LoRA networks, the loop and the file format.

Imports torch, safetensors, PIL and numpy; never ComfyUI (nodes/ adapts ComfyUI objects to
trainer.interfaces).
"""

__version__ = "0.1.0"          # pyproject.toml's version; recorded as modelspec.implementation_version
