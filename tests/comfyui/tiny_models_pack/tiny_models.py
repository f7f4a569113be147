"""Tiny real ComfyUI MODEL / CLIP / VAE objects with random weights (recipe: docs/testing.md).

Genuine ComfyUI classes (ModelPatcher -> BaseModel -> UNetModel, comfy.sd.CLIP with the real SD1
tokenizer, comfy.sd.VAE around AutoencoderKL), only small. Also the full-size SD1.5 UNet config.
Import only after comfy.cli_args.args.cpu has been set.
"""

from __future__ import annotations

import torch


def randomize_(module: torch.nn.Module, seed: int, fan_in: bool = False) -> torch.nn.Module:
    """comfy.ops layers start uninitialised: fill every parameter deterministically.

    The numbers are drawn where each parameter lives (one generator per device), so a full-size model built on a
    GPU is filled there, not drawn on the CPU and copied; on the CPU the draws are what they always were.
    Matrices get std 0.02, or with `fan_in` 1/sqrt(fan-in) (for the adaLN-gated DiTs: at 0.02 their gates are
    ~1e-4 and the blocks hardly touch the output, so a LoRA on them would change next to nothing)."""
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() > 1:
                if param.device not in generators:
                    generators[param.device] = torch.Generator(param.device).manual_seed(seed)
                std = param[0].numel() ** -0.5 if fan_in else 0.02
                param.copy_(std * torch.randn(param.shape, generator=generators[param.device], device=param.device))
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


def model_on(config_class, unet_config: dict, device=None, seed: int = 1, dtype: torch.dtype = torch.float32,
             fan_in: bool = False, manual_cast_dtype: torch.dtype | None = None):
    """A ModelPatcher around ComfyUI's own model for `config_class` (comfy.supported_models.*), its weights in
    `dtype`; on "meta" for names and shapes only, else with deterministic random weights (drawn on `device`;
    `fan_in`: see randomize_). `manual_cast_dtype`: the compute dtype when the weights are stored in another
    (fp8 or bf16 weights computed in fp32, as UNETLoader's weight_dtype option sets up on a CPU)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config = config_class(dict(unet_config))
    # the config class's unet_extra_config overrides the head layout (SD15 forces 8 heads): put ours back
    model_config.unet_config.update({k: unet_config[k] for k in ("num_heads", "num_head_channels")
                                     if k in unet_config})
    model_config.set_inference_dtype(dtype, manual_cast_dtype)
    base = model_config.get_model({}, device=device)
    if device != "meta":
        randomize_(base.diffusion_model, seed, fan_in=fan_in)
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


# ---- flow-matching families (Flux, SD3, Chroma, Qwen-Image, Wan 2.1) ----------------------------------------------
#
# Each model is ComfyUI's own (comfy.supported_models.* -> model_base.* -> the real DiT) with the real block layout at
# small widths, its weights drawn at 1/sqrt(fan-in) (randomize_); each CLIP is ComfyUI's own text-encoder class for
# the family, its width overridden through model_options["<name>_model_config"] so its output fits the model's
# context input. Widths:
#   Flux / Chroma: T5 d_model 64 = context_in_dim; Flux's CLIP-L hidden 32 = vec_in_dim.
#   SD3: CLIP-L 32 + CLIP-G 32 (pooled 64 = adm_in_channels); context width 4096 (see sd3_clip).
#   Qwen-Image: Qwen2.5-VL hidden 32 = joint_attention_dim.   Wan 2.1: umT5 d_model 32 = text_dim.

FLOW_T5 = {"d_model": 64, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2}
FLOW_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
             "projection_dim": 32}


def _fill_newer_params(config: dict, params_class) -> dict:
    """Newer ComfyUI adds required fields to FluxParams / ChromaParams (txt_ids_dims; Chroma's vec_in_dim): give
    them what model_detection gives a Flux-/Chroma-layout checkpoint (no extra text ids, no vector input)."""
    import dataclasses

    fields = {field.name for field in dataclasses.fields(params_class)}
    if "txt_ids_dims" in fields:
        config.setdefault("txt_ids_dims", [])
    if "vec_in_dim" in fields:
        config.setdefault("vec_in_dim", None)
    return config


# Full-size DiTs, for names and shapes on the meta device and for benchmarks: comfy.supported_models class name and
# the unet config comfy.model_detection derives from the released files
FULL_SIZE_DITS = {
    "flux_dev": ("Flux", dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=768,
                              context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19,
                              depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True,
                              guidance_embed=True)),
    "sd35_large": ("SD3", dict(in_channels=16, patch_size=2, depth=38, pos_embed_max_size=192, num_patches=36864,
                               adm_in_channels=2048, pos_embed_scaling_factor=None, qk_norm="rms",
                               x_block_self_attn_layers=[],
                               context_embedder_config={"target": "torch.nn.Linear",
                                                        "params": {"in_features": 4096, "out_features": 2432}})),
    "sd35_medium": ("SD3", dict(in_channels=16, patch_size=2, depth=24, pos_embed_max_size=384,
                                num_patches=147456, adm_in_channels=2048, pos_embed_scaling_factor=None,
                                qk_norm="rms", x_block_self_attn_layers=list(range(13)),
                                context_embedder_config={"target": "torch.nn.Linear",
                                                         "params": {"in_features": 4096, "out_features": 1536}})),
    "qwen_image": ("QwenImage", dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=60,
                                     patch_size=2, attention_head_dim=128, num_attention_heads=24,
                                     joint_attention_dim=3584, axes_dims_rope=(16, 56, 56))),
    "wan21_14b": ("WAN21_T2V", dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512,
                                    in_dim=16, dim=5120, ffn_dim=13824, freq_dim=256, text_dim=4096, out_dim=16,
                                    num_heads=40, num_layers=40, window_size=(-1, -1), qk_norm=True,
                                    cross_attn_norm=True, eps=1e-6)),
}


def full_size_dit(name: str, device=None, dtype: torch.dtype = torch.float32,
                  manual_cast_dtype: torch.dtype | None = None, seed: int = 1):
    """A ModelPatcher around a full-size DiT of FULL_SIZE_DITS: on "meta" for names and shapes, else with random
    weights (1/sqrt(fan-in), as the tiny flow models) drawn where they live."""
    import comfy.supported_models as models

    class_name, unet_config = FULL_SIZE_DITS[name]
    unet_config = dict(unet_config)
    if class_name == "Flux":
        from comfy.ldm.flux.model import FluxParams

        unet_config = _fill_newer_params(unet_config, FluxParams)
    return model_on(getattr(models, class_name), unet_config, device=device, seed=seed, dtype=dtype, fan_in=True,
                    manual_cast_dtype=manual_cast_dtype)


def flux_unet_config(guidance_embed: bool = True) -> dict:
    """A tiny Flux.1 DiT (recipe: docs/kohya-flow-models.md section 5): 2 double + 2 single blocks, hidden 64 in
    2 heads of sum(axes_dim) = 32, 16 latent channels packed 2x2."""
    from comfy.ldm.flux.model import FluxParams

    return _fill_newer_params(dict(
        image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=FLOW_CLIP["hidden_size"],
        context_in_dim=FLOW_T5["d_model"], hidden_size=64, num_heads=2, axes_dim=[8, 12, 12], depth=2,
        depth_single_blocks=2, mlp_ratio=4.0, theta=10000, qkv_bias=True, guidance_embed=guidance_embed), FluxParams)


def flux_model(seed: int = 1, guidance_embed: bool = True, weight_dtype: torch.dtype = torch.float32):
    """Flux.1-dev-like (guidance_embed=True: comfy.supported_models.Flux, ModelSamplingFlux shift 1.15, the DiT
    sees timestep = sigma) or schnell-like (False: FluxSchnell, as ComfyUI picks for a checkpoint without
    guidance_in: ModelSamplingDiscreteFlow shift 1.0, multiplier 1.0). `weight_dtype` other than fp32: the weights
    stored in it and computed in fp32 (ComfyUI's manual cast), as UNETLoader loads fp8_e4m3fn on a CPU."""
    import comfy.supported_models

    config_class = comfy.supported_models.Flux if guidance_embed else comfy.supported_models.FluxSchnell
    cast = None if weight_dtype == torch.float32 else torch.float32
    return model_on(config_class, flux_unet_config(guidance_embed), seed=seed, fan_in=True, dtype=weight_dtype,
                    manual_cast_dtype=cast)


def flux_clip(seed: int = 6):
    """Flux's CLIP-L + T5-XXL (comfy.text_encoders.flux, real CLIP and T5 tokenizers), tiny: cond is T5's last
    hidden state [1, >=256, 64] (T5 pads to 256 tokens), pooled is CLIP-L's unprojected pooled output [1, 32]."""
    import comfy.sd
    import comfy.supported_models_base
    from comfy.text_encoders import flux

    target = comfy.supported_models_base.ClipTarget(flux.FluxTokenizer, flux.flux_clip())
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32, "clip_l_model_config": FLOW_CLIP,
                                                "t5xxl_model_config": FLOW_T5})
    randomize_(clip.cond_stage_model, seed)
    return clip


SD3_CONTEXT_WIDTH = 4096     # sd3_clip pads CLIP-L+G's hidden states to a fixed 4096 and joins T5's tokens to them


def sd3_unet_config() -> dict:
    """A tiny SD3.5-Medium-like MMDiT (recipe: docs/kohya-flow-models.md section 5): depth 2 (hidden 64 * depth,
    depth heads), RMS q/k norm, the x-block self-attention in block 0; positions for latents up to 32x32."""
    return dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, pos_embed_scaling_factor=None,
                pos_embed_max_size=16, num_patches=256, adm_in_channels=2 * FLOW_CLIP["projection_dim"],
                context_embedder_config={"target": "torch.nn.Linear",
                                         "params": {"in_features": SD3_CONTEXT_WIDTH, "out_features": 64 * 2}},
                qk_norm="rms", x_block_self_attn_layers=[0])


def sd3_model(seed: int = 1):
    """comfy.supported_models.SD3: ModelSamplingDiscreteFlow, shift 3.0, multiplier 1000 (timestep = 1000 sigma).
    Latents up to 32x32 (pos_embed_max_size 16 x patch 2)."""
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

    model = model_on(comfy.supported_models.SD3, sd3_unet_config(), seed=seed, fan_in=True)
    mmdit = model.model.diffusion_model
    # pos_embed is a buffer that checkpoints fill (with this fixed 2-D sin/cos table); torch.empty until then
    table = get_2d_sincos_pos_embed(mmdit.pos_embed.shape[-1], mmdit.pos_embed_max_size)
    mmdit.pos_embed.copy_(torch.from_numpy(table).reshape(mmdit.pos_embed.shape))
    return model


def sd3_clip(seed: int = 7, t5: bool = True):
    """SD3's CLIP-L + CLIP-G + T5-XXL (comfy.text_encoders.sd3_clip). ComfyUI joins L's and G's penultimate hidden
    states (32 + 32), zero-pads them to a fixed 4096 and appends T5's tokens along the sequence, so T5's d_model
    has to be 4096 here: the T5 keeps its tiny layers (2, 2 heads x 16, d_ff 64) but its 32128 x 4096 token
    embedding (0.5 GB in fp32) is the one large tensor. cond [1, 77 + 77, 4096] (L/G tokens then T5's, T5 padded
    to 77); pooled = CLIP-L's unprojected pooled (32) + CLIP-G's projected pooled (32) = [1, 64]. t5=False gives
    the CLIP-L+G-only encoder (ComfyUI's for a checkpoint without T5): cond [1, 77, 4096]."""
    import comfy.sd
    import comfy.supported_models_base
    from comfy.text_encoders import sd3_clip as sd3

    target = comfy.supported_models_base.ClipTarget(sd3.SD3Tokenizer, sd3.sd3_clip(clip_l=True, clip_g=True, t5=t5))
    clip = comfy.sd.CLIP(target, model_options={
        "dtype": torch.float32, "clip_l_model_config": FLOW_CLIP, "clip_g_model_config": FLOW_CLIP,
        "t5xxl_model_config": {**FLOW_T5, "d_model": SD3_CONTEXT_WIDTH}})
    randomize_(clip.cond_stage_model, seed)
    return clip


def chroma_unet_config() -> dict:
    """A tiny Chroma: Flux's double/single blocks without per-block modulation; the distilled guidance
    approximator (in 64 = timestep 16 + guidance 16 + modulation index 32, 2 layers of 128) makes every block's
    modulation vectors. Chroma packs the latent itself, so in/out_channels are 16 * 2 * 2 = 64."""
    from comfy.ldm.chroma.model import ChromaParams

    return _fill_newer_params(dict(
        image_model="chroma", in_channels=64, out_channels=64, patch_size=2, context_in_dim=FLOW_T5["d_model"],
        hidden_size=64, num_heads=2, axes_dim=[8, 12, 12], depth=2, depth_single_blocks=2, mlp_ratio=4.0,
        theta=10000, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=128, n_layers=2), ChromaParams)


def chroma_model(seed: int = 1):
    """comfy.supported_models.Chroma: ModelSamplingFlux, shift 1.15 (its sampling_settings only set multiplier
    1.0, which ModelSamplingFlux has no use for), timestep = sigma; guidance defaults to 0 in extra_conds."""
    import comfy.supported_models

    return model_on(comfy.supported_models.Chroma, chroma_unet_config(), seed=seed, fan_in=True)


def chroma_clip(seed: int = 8):
    """Chroma's text encoder, T5-XXL only (comfy.text_encoders.pixart_t5, as Chroma.clip_target): cond is T5's
    last hidden state [1, n, 64] with no padding (n = the caption's tokens + end); pooled is None."""
    import comfy.sd
    import comfy.supported_models_base
    from comfy.text_encoders import pixart_t5

    target = comfy.supported_models_base.ClipTarget(pixart_t5.PixArtTokenizer, pixart_t5.pixart_te())
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32, "t5xxl_model_config": FLOW_T5})
    randomize_(clip.cond_stage_model, seed)
    return clip


QWEN_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1}


def qwen_image_unet_config() -> dict:
    """A tiny Qwen-Image MMDiT: 2 blocks, 2 heads of 32 (rope axes 8 + 12 + 12), text input 32 wide."""
    return dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                attention_head_dim=32, num_attention_heads=2, joint_attention_dim=QWEN_TEXT["hidden_size"],
                axes_dims_rope=(8, 12, 12))


def qwen_image_model(seed: int = 1):
    """comfy.supported_models.QwenImage: ModelSamplingFlux, shift 1.15, timestep = sigma. Its latents are
    Wan 2.1's, 5-D [B, 16, 1, h, w] (ComfyUI unsqueezes a 4-D empty latent before sampling)."""
    import comfy.supported_models

    return model_on(comfy.supported_models.QwenImage, qwen_image_unet_config(), seed=seed, fan_in=True)


def qwen_image_clip(seed: int = 9):
    """Qwen-Image's Qwen2.5-VL-7B text encoder (comfy.text_encoders.qwen_image with the real Qwen2.5 tokenizer and
    chat template), tiny: the language model through model_options["qwen25_7b_model_config"] (hidden 32, 2
    layers, 2 query heads / 1 kv head of ComfyUI's fixed head_dim 128, the full 152064-token vocabulary).
    Qwen25_7BVLI builds its vision tower with a fixed width (1280, 32 layers: 0.6 B parameters) that no option
    reaches, so while the CLIP is built ComfyUI's own Qwen2VLVisionTransformer is called with a small width
    (32, 1 block); captions never go through it. cond [1, n, 32] (the tokens after the system prompt);
    pooled is None; no attention_mask (dropped by ComfyUI when nothing is masked)."""
    from unittest import mock

    import comfy.sd
    import comfy.supported_models_base
    from comfy.text_encoders import qwen_image, qwen_vl

    full_size_tower = qwen_vl.Qwen2VLVisionTransformer

    def small_tower(**kwargs):
        return full_size_tower(**{**kwargs, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                                  "num_layers": 1})

    target = comfy.supported_models_base.ClipTarget(qwen_image.QwenImageTokenizer, qwen_image.te())
    with mock.patch.object(qwen_vl, "Qwen2VLVisionTransformer", small_tower):
        clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32, "qwen25_7b_model_config": QWEN_TEXT})
    randomize_(clip.cond_stage_model, seed)
    return clip


WAN_TEXT_DIM = 32


def wan21_unet_config() -> dict:
    """A tiny Wan 2.1 text-to-video DiT: 2 blocks of width 64 in 2 heads (rope 12 + 10 + 10 of head dim 32),
    ffn 128, 32-channel time embedding, 32-wide text input."""
    return dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=64,
                ffn_dim=128, freq_dim=32, text_dim=WAN_TEXT_DIM, out_dim=16, num_heads=2, num_layers=2,
                window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)


def wan21_model(seed: int = 1):
    """comfy.supported_models.WAN21_T2V: ModelSamplingDiscreteFlow, shift 8.0, multiplier 1000 (timestep = 1000
    sigma); latents 5-D [B, 16, frames, h, w]."""
    import comfy.supported_models

    return model_on(comfy.supported_models.WAN21_T2V, wan21_unet_config(), seed=seed, fan_in=True)


def wan_clip(seed: int = 10):
    """Wan's umT5-XXL text encoder (comfy.text_encoders.wan: WanT5Tokenizer, UMT5XXlModel with umT5's per-layer
    relative attention), tiny: d_model 32 = text_dim. The umT5 SentencePiece model only ships inside Wan's text
    encoder checkpoint (tokenizer_data "spiece_model"), so the tokenizer is given the SentencePiece model that the
    ComfyUI checkout has (comfy/text_encoders/t5_pile_tokenizer, AuraFlow's 32000 pieces) and the embedding has
    that many rows: the real classes, another vocabulary. cond [1, 512, 32] (ComfyUI pads umT5 input to 512
    tokens and zeroes the padded positions); pooled is None."""
    import os

    import comfy.sd
    import comfy.supported_models_base
    from comfy.text_encoders import wan

    spiece = os.path.join(os.path.dirname(os.path.realpath(wan.__file__)), "t5_pile_tokenizer", "tokenizer.model")
    with open(spiece, "rb") as handle:
        spiece_model = handle.read()
    target = comfy.supported_models_base.ClipTarget(wan.WanT5Tokenizer, wan.te())
    clip = comfy.sd.CLIP(target, tokenizer_data={"spiece_model": spiece_model}, model_options={
        "dtype": torch.float32, "umt5xxl_model_config": {**FLOW_T5, "d_model": WAN_TEXT_DIM, "vocab_size": 32000}})
    randomize_(clip.cond_stage_model, seed)
    return clip


def flow_vae(seed: int = 11):
    """The 16-channel AutoencoderKL of Flux / SD3 / Chroma, tiny like vae(): encode returns raw latents
    [B, 16, H/8, W/8] (the models apply their latent format's scale and shift in process_latent_in)."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = {"params": {"embed_dim": 16, "ddconfig": {
        "double_z": True, "z_channels": 16, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}
    autoencoder = randomize_(AutoencoderKL(**config["params"]), seed)
    result = comfy.sd.VAE(sd=autoencoder.state_dict(), config=config, dtype=torch.float32)
    result.latent_channels = 16      # what ComfyUI reads off decoder.conv_in for a Flux/SD3 VAE without a config
    return result


WAN_VAE_DIM = 8


def wan_vae(seed: int = 12):
    """The Wan 2.1 VAE (comfy.ldm.wan.vae.WanVAE: causal 3-D convolutions, 4 levels of width 8/16/32/32, 2 res
    blocks each, 16 latent channels) loaded the way ComfyUI loads a Wan 2.1 VAE file: comfy.sd.VAE detects it
    from the state dict (latent_dim 3, 8x spatial and 4x temporal compression). Newer ComfyUI reads the width
    from the state dict; older builds it with a fixed width 96, and then the state dict does not fit: in that
    case the VAE is built again with ComfyUI's WanVAE called at our width. Qwen-Image uses this VAE too.
    encode of images [B, H, W, 3] treats the batch as frames: [1, 16, 1 + (B - 1) // 4, H/8, W/8]."""
    from unittest import mock

    import comfy.ldm.wan.vae
    import comfy.sd

    wan_class = comfy.ldm.wan.vae.WanVAE
    autoencoder = randomize_(wan_class(dim=WAN_VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                       attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0), seed)
    state_dict = autoencoder.state_dict()
    try:
        return comfy.sd.VAE(sd=state_dict, dtype=torch.float32)
    except RuntimeError:         # size mismatch: this ComfyUI built its fixed-width Wan VAE
        def at_our_width(**kwargs):
            return wan_class(**{**kwargs, "dim": WAN_VAE_DIM})

        with mock.patch.object(comfy.ldm.wan.vae, "WanVAE", at_our_width):
            return comfy.sd.VAE(sd=state_dict, dtype=torch.float32)
