"""Configure LoRA: algorithm, rank (network_dim) and alpha -> LORA_NETWORK."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..trainer.network import NetworkConfig
from .wire_types import CATEGORY, LoraNetwork


class LoRAConfigure(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoRAConfigure",
            display_name="Configure LoRA",
            category=CATEGORY,
            description="LoRA on the UNet's attention, projection and feed-forward layers (kohya's networks.lora). "
                        "The update is scaled by alpha / rank.",
            inputs=[
                io.Combo.Input("algorithm", options=["LoRA"], default="LoRA"),
                io.Int.Input("rank", default=8, min=1, max=1024, tooltip="network_dim (kohya_ss default 8)."),
                io.Float.Input("alpha", default=1.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="network_alpha; scale = alpha / rank. 0 means alpha = rank (scale 1)."),
            ],
            outputs=[LoraNetwork.Output(display_name="network")],
        )

    @classmethod
    def validate_inputs(cls, algorithm, rank, alpha):
        if None in (algorithm, rank, alpha):      # a linked input: its value is known only at run time
            return True
        try:
            NetworkConfig(algorithm, rank, alpha).validated()
        except Exception as exc:  # shown to the user before the run starts
            return str(exc)
        return True

    @classmethod
    def execute(cls, algorithm, rank, alpha) -> io.NodeOutput:
        config = NetworkConfig(algorithm, rank, alpha).validated()
        return io.NodeOutput(config, ui=ui.PreviewText(config.describe()))
