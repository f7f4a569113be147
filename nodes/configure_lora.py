"""Configure LoRA: algorithm, rank (network_dim) and alpha, conv rank and alpha for LoCon -> LORA_NETWORK."""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..trainer.networks import ALGORITHMS, NetworkConfig
from .wire_types import CATEGORY, LoraNetwork


class LoRAConfigure(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoRAConfigure",
            display_name="Configure LoRA",
            category=CATEGORY,
            description="LoRA on the UNet's attention, projection and feed-forward layers (kohya's networks.lora); "
                        "LoCon also on its ResNet and up/down-sampling layers. The update is scaled by alpha / rank.",
            inputs=[
                io.Combo.Input("algorithm", options=list(ALGORITHMS), default="LoRA",
                               tooltip="LoRA: attention and feed-forward layers. LoCon: also the convolutions "
                                       "(kohya's networks.lora with conv_dim)."),
                io.Int.Input("rank", default=8, min=1, max=1024, tooltip="network_dim (kohya_ss default 8)."),
                io.Float.Input("alpha", default=1.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="network_alpha; scale = alpha / rank. 0 means alpha = rank (scale 1)."),
                io.Int.Input("conv_rank", default=1, min=1, max=1024, optional=True,
                             tooltip="LoCon: conv_dim, the rank of 3x3 convolutions (kohya_ss default 1)."),
                io.Float.Input("conv_alpha", default=1.0, min=0.0, max=1024.0, step=0.5, optional=True,
                               tooltip="LoCon: conv_alpha; 0 means conv alpha = conv rank."),
            ],
            outputs=[LoraNetwork.Output(display_name="network")],
        )

    @classmethod
    def validate_inputs(cls, algorithm, rank, alpha, conv_rank=1, conv_alpha=1.0):
        if None in (algorithm, rank, alpha, conv_rank, conv_alpha):   # linked: known only at run time
            return True
        try:
            NetworkConfig(algorithm, rank, alpha, conv_rank, conv_alpha).validated()
        except Exception as exc:  # shown to the user before the run starts
            return str(exc)
        return True

    @classmethod
    def execute(cls, algorithm, rank, alpha, conv_rank=1, conv_alpha=1.0) -> io.NodeOutput:
        config = NetworkConfig(algorithm, rank, alpha, conv_rank, conv_alpha).validated()
        for warning in config.warnings():           # allowed, as kohya allows it, but said where it is seen
            logging.warning("lora-trainer Configure LoRA: %s", warning)
        return io.NodeOutput(config, ui=ui.PreviewText(config.describe()))
