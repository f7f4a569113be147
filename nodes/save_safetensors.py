"""Save Safetensors: writes the trained LoRA into ComfyUI's loras folder, kohya keys and metadata."""

from __future__ import annotations

import json
import logging
import os

from comfy_api.latest import io, ui

from ..trainer.lora_file import checkpoint_hashes, save_lora
from .base_model import base_model_file
from .comfy_host import loras_folder
from .wire_types import CATEGORY, TrainedLora


class LoRASaveSafetensors(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoRASaveSafetensors",
            display_name="Save Safetensors",
            category=CATEGORY,
            description="Saves the LoRA to models/loras with kohya's key names and ss_* metadata; it loads in "
                        "ComfyUI's LoraLoader, A1111/Forge, diffusers and kohya. An existing file is never "
                        "overwritten: the name gets _2, _3...",
            is_output_node=True,
            inputs=[
                TrainedLora.Input("lora"),
                # sub-folders are allowed, as LoraLoader lists them; the name is checked to stay inside
                # models/loras (trainer/paths.py: checked_lora_name)
                io.String.Input("file_name", default="",
                                tooltip="Name inside models/loras; a sub-folder such as 'people/anna' is allowed, "
                                        "'..' and absolute paths are not. Empty = the run's output name."),
                io.Combo.Input("precision", options=["fp16", "bf16", "fp32"], default="fp16",
                               tooltip="Tensor precision in the file (kohya_ss GUI default fp16)."),
                io.String.Input("comment", default="", multiline=True, optional=True,
                                tooltip="Saved as ss_training_comment (kohya's --training_comment)."),
            ],
            outputs=[],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, lora, file_name, precision, comment="") -> io.NodeOutput:
        folder = loras_folder()
        extra = save_time_metadata(cls.hidden.prompt, cls.hidden.extra_pnginfo, cls.hidden.unique_id, comment)
        path = save_lora(lora, folder, file_name.strip() or lora.run_name, precision, extra)
        relative = os.path.relpath(path, folder)
        return io.NodeOutput(ui=ui.PreviewText(f"saved {relative} ({len(lora.module_names)} modules, "
                                               f"{lora.steps} steps, {precision}) in {folder}"))


def save_time_metadata(prompt, extra_pnginfo, node_id, comment: str) -> dict[str, str]:
    """What only the saving node knows: the comment, the base checkpoint's name and hashes, and, as ComfyUI's
    own savers do unless started with --disable-metadata, the prompt and the workflow."""
    import folder_paths
    from comfy.cli_args import args

    extra = {"ss_training_comment": comment.strip()} if comment and comment.strip() else {}
    base = base_model_file(prompt, node_id)
    if base:
        folder, name = base.split("/", 1)
        path = folder_paths.get_full_path(folder, name)
        if path and os.path.isfile(path):
            try:
                extra.update(checkpoint_hashes(path))
            except OSError as exc:
                logging.warning("lora-trainer: could not hash the base model %s: %s", path, exc)
    if not args.disable_metadata:
        if prompt is not None:
            extra["prompt"] = json.dumps(prompt)
        for key, value in (extra_pnginfo or {}).items():
            extra[key] = json.dumps(value)
    return extra
