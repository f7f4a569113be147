"""Save Safetensors: writes the trained LoRA into ComfyUI's loras folder, kohya keys and metadata."""

from __future__ import annotations

import os

from comfy_api.latest import io, ui

from ..trainer.lora_file import save_lora
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
                io.String.Input("file_name", default="",
                                tooltip="Name inside models/loras (sub-folders allowed); "
                                        "empty = the run's output name."),
                io.Combo.Input("precision", options=["fp16", "bf16", "fp32"], default="fp16",
                               tooltip="Tensor precision in the file (kohya_ss GUI default fp16)."),
            ],
            outputs=[],
        )

    @classmethod
    def execute(cls, lora, file_name, precision) -> io.NodeOutput:
        folder = loras_folder()
        path = save_lora(lora, folder, file_name.strip() or lora.run_name, precision)
        relative = os.path.relpath(path, folder)
        return io.NodeOutput(ui=ui.PreviewText(f"saved {relative} ({len(lora.module_names)} modules, "
                                               f"{lora.steps} steps, {precision}) in {folder}"))
