"""Tiny real ComfyUI MODEL / CLIP / VAE objects with random weights (recipe: docs/testing.md).

Genuine ComfyUI classes (ModelPatcher -> BaseModel -> UNetModel, comfy.sd.CLIP with the real SD1
tokenizer, comfy.sd.VAE around AutoencoderKL), only small. Also the full-size SD1.5 UNet config.
Import only after comfy.cli_args.args.cpu has been set.
"""

from __future__ import annotations

import torch


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """comfy.ops layers start uninitialised: fill every parameter deterministically.

    The numbers are drawn where each parameter lives (one generator per device), so a full-size model built on a
    GPU is filled there, not drawn on the CPU and copied; on the CPU the draws are what they always were."""
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() > 1:
                if param.device not in generators:
                    generators[param.device] = torch.Generator(param.device).manual_seed(seed)
                param.copy_(0.02 * torch.randn(param.shape, generator=generators[param.device], device=param.device))
            else:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
    return module


def sd15_unet_config(model_channels: int = 320, context_dim: int = 768, tiny: bool = False) -> dict:
    if tiny:
        return dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1],
                    transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
                    context_dim=context_dim, num_heads=2, use_linear_in_transformer=False,
                    use_spatial_transformer=True, legacy=False, adm_in_channels=None, image_size=32,
                    use_checkpoint=False, use_temporal_attention=False, use_temporal_resblock=False)
    # the real SD1.5 UNet (what comfy.model_detection derives from a v1-5 checkpoint)
    return dict(in_channels=4, out_channels=4, model_channels=model_channels, channel_mult=[1, 2, 4, 4],
                num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                context_dim=context_dim, num_heads=8, num_head_channels=-1, use_linear_in_transformer=False,
                use_spatial_transformer=True, legacy=False, adm_in_channels=None, image_size=32,
                use_checkpoint=False, use_temporal_attention=False, use_temporal_resblock=False)


def sd15_model(tiny: bool = True, seed: int = 1, randomize: bool = True, context_dim: int | None = None):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    config = sd15_unet_config(context_dim=context_dim or (32 if tiny else 768), tiny=tiny)
    model_config = comfy.supported_models.SD15(config)
    if tiny:
        model_config.unet_config["num_heads"] = 2     # SD15's unet_extra_config forced 8 heads
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({})
    if randomize:
        randomize_(base.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def sd1_clip(width: int = 32, seed: int = 2):
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target, model_options={
        "dtype": torch.float32,
        "clip_l_model_config": {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 2,
                                "num_hidden_layers": 2, "projection_dim": width},
    })
    randomize_(clip.cond_stage_model, seed)
    return clip


def vae(seed: int = 3):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}
    autoencoder = randomize_(AutoencoderKL(**config["params"]), seed)
    return comfy.sd.VAE(sd=autoencoder.state_dict(), config=config, dtype=torch.float32)


def sd2_unet_config() -> dict:
    """The real SD2.x UNet (768-v and 512-base share it): linear projections, 64-channel heads, 1024 context."""
    config = sd15_unet_config(context_dim=1024)
    config.update(use_linear_in_transformer=True, num_heads=-1, num_head_channels=64)
    return config


def sdxl_unet_config(tiny: bool = False) -> dict:
    """The real SDXL base UNet (what comfy.model_detection derives from its checkpoint), or a tiny one with the
    same block structure: no attention in the first level, linear projections, the ADM size conditioning."""
    if tiny:
        # context: tiny CLIP-L (32) + tiny CLIP-G (32); adm: CLIP-G's pooled output (32) + 6 size embeddings x 256
        return dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1],
                    transformer_depth=[0, 2], transformer_depth_output=[0, 0, 2, 2], transformer_depth_middle=1,
                    context_dim=64, num_heads=2, num_head_channels=-1, use_linear_in_transformer=True,
                    use_spatial_transformer=True, legacy=False, num_classes="sequential", adm_in_channels=32 + 1536,
                    image_size=32, use_checkpoint=False, use_temporal_attention=False, use_temporal_resblock=False)
    return dict(in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2],
                transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                transformer_depth_middle=10, context_dim=2048, num_heads=-1, num_head_channels=64,
                use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False, num_classes="sequential",
                adm_in_channels=2816, image_size=32, use_checkpoint=False, use_temporal_attention=False,
                use_temporal_resblock=False)


def model_on(config_class, unet_config: dict, device=None, seed: int = 1, dtype: torch.dtype = torch.float32):
    """A ModelPatcher around ComfyUI's own model for `config_class` (comfy.supported_models.*), its weights in
    `dtype`; on "meta" for names and shapes only, else with deterministic random weights (drawn on `device`)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config = config_class(dict(unet_config))
    # the config class's unet_extra_config overrides the head layout (SD15 forces 8 heads): put ours back
    model_config.unet_config.update({k: unet_config[k] for k in ("num_heads", "num_head_channels")
                                     if k in unet_config})
    model_config.set_inference_dtype(dtype, None)
    base = model_config.get_model({}, device=device)
    if device != "meta":
        randomize_(base.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def sdxl_model(seed: int = 1):
    import comfy.supported_models

    return model_on(comfy.supported_models.SDXL, sdxl_unet_config(tiny=True), seed=seed)


def sdxl_clip(width: int = 32, seed: int = 4):
    """SDXL's two text encoders (CLIP-L, CLIP-G) as ComfyUI builds them, three layers each (SDXL reads the
    penultimate one)."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base

    small = {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 2,
             "num_hidden_layers": 3, "projection_dim": width}
    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32, "clip_l_model_config": small,
                                                "clip_g_model_config": small})
    randomize_(clip.cond_stage_model, seed)
    return clip


def text_encoders_on_meta(family: str):
    """ComfyUI's full-size text-encoder module tree of a family, on the meta device (names and shapes)."""
    import comfy.sd1_clip
    import comfy.sdxl_clip
    from comfy.text_encoders import sd2_clip

    model_class = {"sd15": comfy.sd1_clip.SD1ClipModel, "sd2": sd2_clip.SD2ClipModel,
                   "sdxl": comfy.sdxl_clip.SDXLClipModel}[family]
    return model_class(device="meta", dtype=torch.float32)


def sd2_model(seed: int = 1, v_prediction: bool = True):
    """A tiny SD2.x UNet (linear projections) set to v-prediction as SD2-768-v is (ComfyUI's
    ModelSamplingDiscrete v_prediction patch)."""
    import comfy.model_sampling
    import comfy.supported_models

    unet_config = {**sd15_unet_config(context_dim=32, tiny=True), "use_linear_in_transformer": True,
                   "num_head_channels": -1}
    model = model_on(comfy.supported_models.SD20, unet_config, seed=seed)
    if v_prediction:
        class VPrediction(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
            pass

        model.add_object_patch("model_sampling", VPrediction(model.model.model_config))
    return model


def sd2_clip(width: int = 32, seed: int = 5):
    """SD2's OpenCLIP-H text encoder as ComfyUI builds it, three layers (SD2 reads the penultimate one)."""
    import comfy.sd
    import comfy.supported_models_base
    from comfy.text_encoders import sd2_clip as sd2

    target = comfy.supported_models_base.ClipTarget(sd2.SD2Tokenizer, sd2.SD2ClipModel)
    clip = comfy.sd.CLIP(target, model_options={
        "dtype": torch.float32,
        "clip_h_model_config": {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 2,
                                "num_hidden_layers": 3, "projection_dim": width}})
    randomize_(clip.cond_stage_model, seed)
    return clip
