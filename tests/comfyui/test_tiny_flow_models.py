"""The tiny flow-matching models (tiny_models_pack) are ComfyUI's own: each family's loader node gives a MODEL whose
conditioning ComfyUI builds from its CLIP's output (extra_conds, as a sampler does), a forward of the right shape,
and a VAE whose latents fit the model.

What ComfyUI gives each family (both checkouts, v0.3.64 and v0.33.0, alike):

| family | model_sampling | shift | multiplier / timestep | extra_conds keys | latent |
|---|---|---|---|---|---|
| Flux (dev) | ModelSamplingFlux | 1.15 | timestep = sigma | c_crossattn, y, guidance (3.5) | [B,16,h,w] |
| Flux (schnell) | ModelSamplingDiscreteFlow | 1.0 | 1.0: timestep = sigma | c_crossattn, y, guidance | [B,16,h,w] |
| SD3 / SD3.5 | ModelSamplingDiscreteFlow | 3.0 | 1000: timestep = 1000 sigma | c_crossattn, y | [B,16,h,w] |
| Chroma | ModelSamplingFlux | 1.15 | timestep = sigma | c_crossattn, guidance (0) | [B,16,h,w] |
| Qwen-Image | ModelSamplingFlux | 1.15 | timestep = sigma | c_crossattn | [B,16,1,h,w] |
| Wan 2.1 T2V | ModelSamplingDiscreteFlow | 8.0 | 1000: timestep = 1000 sigma | c_crossattn | [B,16,T,h,w] |
"""

from __future__ import annotations

import sys

import pytest
import torch

CAPTION = "a photo of a cat"
FLUX_SAMPLING = ("ModelSamplingFlux", 1.15, None)

# node, latent shape, (model_sampling class, shift, multiplier), extra_conds keys, CLIP cond shape, pooled width
FAMILIES = {
    "flux": ("TinyFluxLoader", (1, 16, 16, 16), FLUX_SAMPLING, {"c_crossattn", "y", "guidance"}, (1, 256, 64), 32),
    "sd3": ("TinySD3Loader", (1, 16, 16, 16), ("ModelSamplingDiscreteFlow", 3.0, 1000),
            {"c_crossattn", "y"}, (1, 154, 4096), 64),
    "chroma": ("TinyChromaLoader", (1, 16, 16, 16), FLUX_SAMPLING, {"c_crossattn", "guidance"}, (1, 8, 64), None),
    "qwen_image": ("TinyQwenImageLoader", (1, 16, 1, 16, 16), FLUX_SAMPLING, {"c_crossattn"}, (1, 10, 32), None),
    "wan21": ("TinyWan21Loader", (1, 16, 1, 16, 16), ("ModelSamplingDiscreteFlow", 8.0, 1000),
              {"c_crossattn"}, (1, 512, 32), None),
}


def text_inputs(diffusion_model) -> tuple[int, int | None]:
    """The widths the DiT takes its text tokens and its pooled vector in at (None: no pooled input)."""
    m = diffusion_model
    context = {"Flux": lambda: m.txt_in, "Chroma": lambda: m.txt_in, "QwenImageTransformer2DModel": lambda: m.txt_in,
               "OpenAISignatureMMDITWrapper": lambda: m.context_embedder,
               "WanModel": lambda: m.text_embedding[0]}[type(m).__name__]().in_features
    vector = getattr(m, "vector_in", None) or getattr(m, "y_embedder", None)
    pooled = None
    if vector is not None:
        pooled = vector.in_layer.in_features if hasattr(vector, "in_layer") else vector.mlp[0].in_features
    return context, pooled


def conditioned_forward(patcher, clip, x, caption: str = CAPTION):
    """Encode the caption, build the model's conds as ComfyUI's samplers do and run apply_model at sigma 0.7."""
    encoded = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True, return_dict=True)
    cond, pooled = encoded.pop("cond"), encoded.pop("pooled_output")
    conds = patcher.model.extra_conds(cross_attn=cond, pooled_output=pooled, device=x.device, noise=x, **encoded)
    kwargs = {k: v.process_cond(batch_size=x.shape[0], device=x.device, area=None).cond for k, v in conds.items()}
    with torch.no_grad():
        out = patcher.model.apply_model(x, torch.tensor([0.7]), **kwargs)
    return cond, pooled, conds, out


def check_sampling(patcher, expected):
    import comfy.model_sampling

    name, shift, multiplier = expected
    sampling = patcher.model.model_sampling
    assert isinstance(sampling, getattr(comfy.model_sampling, name))
    assert sampling.shift == pytest.approx(shift)
    if multiplier is not None:
        assert sampling.multiplier == multiplier
    assert float(sampling.timestep(torch.tensor(0.7))) == pytest.approx(0.7 * (multiplier or 1.0))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loader_gives_a_model_its_clip_conditions_and_a_vae_that_fits(comfy, tiny, family):
    node, latent_shape, sampling, cond_keys, cond_shape, pooled_width = FAMILIES[family]
    model, clip, vae = sys.modules["lora_trainer_test_tiny_models"].NODE_CLASS_MAPPINGS[node]().load(seed=1)
    assert model.model.latent_format.latent_channels == 16
    check_sampling(model, sampling)

    x = torch.randn(latent_shape, generator=torch.Generator().manual_seed(0))
    cond, pooled, conds, out = conditioned_forward(model, clip, x)
    assert tuple(cond.shape) == cond_shape
    assert (None if pooled is None else pooled.shape[-1]) == pooled_width
    assert text_inputs(model.model.diffusion_model) == (cond_shape[-1], pooled_width)
    assert set(conds) == cond_keys
    assert out.shape == x.shape and torch.isfinite(out).all()
    other = conditioned_forward(model, clip, x, "a watercolor painting of a dog")[-1]
    assert (other - out).abs().max() > 1e-3          # the blocks see the text: the weights are not near-identity

    image = torch.rand(1, 8 * latent_shape[-2], 8 * latent_shape[-1], 3, generator=torch.Generator().manual_seed(1))
    latent = vae.encode(image)
    assert tuple(latent.shape) == latent_shape and torch.isfinite(latent).all()
    assert model.model.process_latent_in(latent).shape == latent.shape
    decoded = vae.decode(latent)
    assert decoded.shape[-3:] == image.shape[-3:]


def test_flux_schnell_is_the_flow_sampling_comfyui_picks_without_guidance_in(comfy, tiny):
    import comfy.supported_models

    model = tiny.flux_model(guidance_embed=False)
    assert isinstance(model.model.model_config, comfy.supported_models.FluxSchnell)
    assert not any(k.startswith("guidance_in.") for k in model.model.diffusion_model.state_dict())   # no weights
    check_sampling(model, ("ModelSamplingDiscreteFlow", 1.0, 1.0))
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    _, _, conds, out = conditioned_forward(model, tiny.flux_clip(), x)
    assert set(conds) == {"c_crossattn", "y", "guidance"}
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_sd3_clip_without_t5_gives_clip_l_and_g_padded_to_the_same_width(comfy, tiny):
    clip = tiny.sd3_clip(t5=False)
    encoded = clip.encode_from_tokens(clip.tokenize(CAPTION), return_pooled=True, return_dict=True)
    assert tuple(encoded["cond"].shape) == (1, 77, 4096) and tuple(encoded["pooled_output"].shape) == (1, 64)
    assert not encoded["cond"][..., 64:].any()        # L (32) + G (32), then ComfyUI's zero padding to 4096


def test_wan_vae_treats_an_image_batch_as_frames(comfy, tiny):
    vae = tiny.wan_vae()
    assert (vae.latent_dim, vae.latent_channels) == (3, 16)
    images = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    assert tuple(vae.encode(images).shape) == (1, 16, 2, 4, 4)       # 5 frames -> 1 + (5 - 1) // 4 latent frames
