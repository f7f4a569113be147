"""Which checkpoint file a LoRA was trained on, read from the queued prompt (the MODEL object does not say)."""

from __future__ import annotations

# loader node inputs that name the base model's file, and the folder each one is in
LOADER_FILE_INPUTS = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models"}
MAX_HOPS = 32


def upstream(prompt: dict, node_id: str, input_name: str) -> str | None:
    link = prompt.get(str(node_id), {}).get("inputs", {}).get(input_name)
    return str(link[0]) if isinstance(link, list) and len(link) == 2 else None


def base_model_file(prompt: dict | None, save_node_id: str | None) -> str | None:
    """The base checkpoint's file name: from Save's `lora` input up to Train, then up Train's `model` input
    through any MODEL-in-MODEL-out nodes (LoRA loaders, sampling patches) to a loader; None when unknown."""
    if not prompt or save_node_id is None:
        return None
    node = upstream(prompt, save_node_id, "lora")
    for _ in range(MAX_HOPS):
        if node is None:
            return None
        inputs = prompt.get(node, {}).get("inputs", {})
        for name, folder in LOADER_FILE_INPUTS.items():
            if isinstance(inputs.get(name), str):
                return f"{folder}/{inputs[name]}"
        node = upstream(prompt, node, "model")
    return None
