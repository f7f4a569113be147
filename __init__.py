"""comfyui-lora-trainer: kohya-compatible LoRA training inside ComfyUI.

ComfyUI imports this folder as a package and calls `comfy_entrypoint` (V3 node API).
"""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
