"""comfyui-lora-trainer: kohya-compatible LoRA training inside ComfyUI.

ComfyUI imports this folder as a package and awaits `comfy_entrypoint` (V3 node API). The node
modules are imported only then, so the package also imports cleanly where ComfyUI is absent.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import LoRATrainerExtension
    from .nodes.comfy_host import attach_live_view

    attach_live_view()      # here, not in ComfyExtension.on_load, which ComfyUI v0.3.64 never calls
    return LoRATrainerExtension()


__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
