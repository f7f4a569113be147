"""Configure LoRA: algorithm, rank (network_dim) and alpha, conv rank and alpha for LoCon -> LORA_NETWORK."""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..trainer.networks import ALGORITHMS, TRAIN_ON, NetworkConfig
from .comfy_host import lora_file_names, lora_file_path
from .wire_types import CATEGORY, LoraNetwork

FRESH = "(none)"


class LoRAConfigure(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoRAConfigure",
            display_name="Configure LoRA",
            category=CATEGORY,
            description="LoRA on the UNet's attention, projection and feed-forward layers (kohya's networks.lora), "
                        "and/or on the text encoder(s); LoCon also on the UNet's ResNet and up/down-sampling "
                        "layers; LoHa and LoKr as LyCORIS; DyLoRA as kohya; DoRA as a switch on LoRA / LoCon. "
                        "The update is scaled by alpha / rank.",
            inputs=[
                io.Combo.Input("algorithm", options=list(ALGORITHMS), default="LoRA",
                               tooltip="LoRA: attention and feed-forward layers. LoCon: also the convolutions "
                                       "(kohya's networks.lora with conv_dim). LoHa / LoKr: LyCORIS's Hadamard / "
                                       "Kronecker products. DyLoRA: kohya's, trained in rank steps of dylora_unit, "
                                       "saved as a plain LoRA."),
                io.Int.Input("rank", default=8, min=1, max=1024, tooltip="network_dim (kohya_ss default 8)."),
                io.Float.Input("alpha", default=1.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="network_alpha; scale = alpha / rank. 0 means alpha = rank (scale 1)."),
                io.Int.Input("conv_rank", default=1, min=1, max=1024, optional=True,
                             tooltip="LoCon: conv_dim, the rank of 3x3 convolutions (kohya_ss default 1)."),
                io.Float.Input("conv_alpha", default=1.0, min=0.0, max=1024.0, step=0.5, optional=True,
                               tooltip="LoCon: conv_alpha; 0 means conv alpha = conv rank."),
                io.Float.Input("network_dropout", default=0.0, min=0.0, max=0.99, step=0.01, optional=True,
                               tooltip="Drops units of each down projection while training (kohya's network_dropout)."),
                io.Float.Input("rank_dropout", default=0.0, min=0.0, max=0.99, step=0.01, optional=True,
                               tooltip="Drops whole ranks per sample while training (kohya's rank_dropout)."),
                io.Float.Input("module_dropout", default=0.0, min=0.0, max=0.99, step=0.01, optional=True,
                               tooltip="Skips a module's whole update for a step (kohya's module_dropout)."),
                io.Combo.Input("train", options=list(TRAIN_ON), default="unet", optional=True,
                               tooltip="Which parts get LoRA modules: the UNet (kohya's --network_train_unet_only), "
                                       "the text encoder(s) only, or both (kohya's default). Each part's learning "
                                       "rate is on the Optimizer node."),
                io.Boolean.Input("dora", default=False, optional=True,
                                 tooltip="DoRA (weight-decomposed LoRA, LyCORIS's dora_wd) for LoRA and LoCon: a "
                                         "trained magnitude per input column, saved as dora_scale."),
                io.Int.Input("lokr_factor", default=-1, min=-1, max=1024, optional=True,
                             tooltip="LoKr: LyCORIS's factor for splitting each dimension (-1: as balanced as "
                                     "possible)."),
                io.Boolean.Input("decompose_both", default=False, optional=True,
                                 tooltip="LoKr: also write the smaller Kronecker factor as a rank-r product."),
                io.Int.Input("dylora_unit", default=1, min=1, max=1024, optional=True,
                             tooltip="DyLoRA: the rank step trained at a time; must divide rank (kohya default 1)."),
                io.Combo.Input("continue_from", options=[FRESH, *lora_file_names()], default=FRESH, optional=True,
                               tooltip="Start from this LoRA file's weights (ours or kohya's: same algorithm, rank "
                                       "and alpha, same model family) instead of a fresh LoRA."),
            ],
            outputs=[LoraNetwork.Output(display_name="network")],
        )

    @classmethod
    def validate_inputs(cls, continue_from=None, train="unet", **values):
        if train is None or any(value is None for value in values.values()):   # linked: known only at run time
            return True
        try:
            NetworkConfig(**values, train_on=train).validated()
        except Exception as exc:  # shown to the user before the run starts
            return str(exc)
        return True

    @classmethod
    def execute(cls, continue_from=FRESH, train="unet", **values) -> io.NodeOutput:
        start = lora_file_path(continue_from) if continue_from and continue_from != FRESH else ""
        config = NetworkConfig(**values, train_on=train, continue_from=start).validated()
        for warning in config.warnings():           # allowed, as kohya allows it, but said where it is seen
            logging.warning("lora-trainer Configure LoRA: %s", warning)
        return io.NodeOutput(config, ui=ui.PreviewText(config.describe()))
