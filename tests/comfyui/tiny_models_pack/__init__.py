"""Test-only ComfyUI custom nodes: loaders for tiny SD1.5-, SDXL-, Flux-, SD3-, Chroma-, Qwen-Image- and
Wan 2.1-topology models (CheckpointLoaderSimple only recognises real checkpoints) and a node that compares two
MODELs' predictions on one fixed input."""

import torch

from . import tiny_models


class TinySD15Loader:
    CATEGORY = "testing"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 1})}}

    def load(self, seed):
        return tiny_models.sd15_model(seed=seed), tiny_models.sd1_clip(seed=seed + 1), tiny_models.vae(seed=seed + 2)


class TinySDXLLoader(TinySD15Loader):
    def load(self, seed):
        return tiny_models.sdxl_model(seed=seed), tiny_models.sdxl_clip(seed=seed + 1), tiny_models.vae(seed=seed + 2)


class TinyFluxLoader(TinySD15Loader):
    """Flux.1-dev-like DiT, CLIP-L + T5 text encoders, 16-channel VAE."""

    def load(self, seed):
        return (tiny_models.flux_model(seed=seed), tiny_models.flux_clip(seed=seed + 1),
                tiny_models.flow_vae(seed=seed + 2))


class TinySD3Loader(TinySD15Loader):
    """SD3.5-Medium-like MMDiT, CLIP-L + CLIP-G + T5 text encoders, 16-channel VAE."""

    def load(self, seed):
        return (tiny_models.sd3_model(seed=seed), tiny_models.sd3_clip(seed=seed + 1),
                tiny_models.flow_vae(seed=seed + 2))


class TinyChromaLoader(TinySD15Loader):
    """Chroma DiT, T5 text encoder, 16-channel VAE."""

    def load(self, seed):
        return (tiny_models.chroma_model(seed=seed), tiny_models.chroma_clip(seed=seed + 1),
                tiny_models.flow_vae(seed=seed + 2))


class TinyQwenImageLoader(TinySD15Loader):
    """Qwen-Image MMDiT, Qwen2.5-VL text encoder, Wan 2.1 VAE."""

    def load(self, seed):
        return (tiny_models.qwen_image_model(seed=seed), tiny_models.qwen_image_clip(seed=seed + 1),
                tiny_models.wan_vae(seed=seed + 2))


class TinyWan21Loader(TinySD15Loader):
    """Wan 2.1 text-to-video DiT, umT5 text encoder, Wan 2.1 VAE."""

    def load(self, seed):
        return (tiny_models.wan21_model(seed=seed), tiny_models.wan_clip(seed=seed + 1),
                tiny_models.wan_vae(seed=seed + 2))


class RunsOutOfMemory:
    """A MODEL whose UNet raises torch's out-of-memory error at its Nth forward pass (as a GPU would when a
    large bucket comes up), to test what Train does with an exception in the middle of a run."""

    CATEGORY = "testing"
    FUNCTION = "wrap"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "at_forward": ("INT", {"default": 3})}}

    def wrap(self, model, at_forward):
        calls = {"n": 0}

        def pre_hook(module, args):
            calls["n"] += 1
            if calls["n"] == at_forward:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

        patched = model.clone()
        patched.model.diffusion_model.register_forward_pre_hook(pre_hook)   # a fresh tiny model per queue
        return (patched,)


class ComparePredictions:
    """Max |difference| between two MODELs' denoised outputs, each loaded the way a sampler loads it."""

    CATEGORY = "testing"
    FUNCTION = "compare"
    RETURN_TYPES = ("FLOAT",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_a": ("MODEL",), "model_b": ("MODEL",), "reference": ("MODEL",)}}

    @staticmethod
    def predict(patcher):
        import comfy.model_management as mm

        mm.load_models_gpu([patcher], force_full_load=True)
        generator = torch.Generator().manual_seed(0)
        unet_config = patcher.model.model_config.unet_config
        x = torch.randn(1, 4, 8, 8, generator=generator)
        context = torch.randn(1, 77, unet_config["context_dim"], generator=generator)
        sigma = torch.tensor([2.0])
        extra = {}
        if unet_config.get("adm_in_channels"):                 # SDXL's pooled text and size conditioning
            extra["y"] = torch.randn(1, unet_config["adm_in_channels"], generator=generator)
        return patcher.model.apply_model(x, sigma, c_crossattn=context, **extra).float().clone()

    def compare(self, model_a, model_b, reference):
        a, b, ref = self.predict(model_a), self.predict(model_b), self.predict(reference)
        difference = float((a - b).abs().max())
        lora_effect = float((a - ref).abs().max())
        return {"ui": {"text": [f"max_abs_diff={difference!r} lora_effect={lora_effect!r}"]}, "result": (difference,)}


NODE_CLASS_MAPPINGS = {"TinySD15Loader": TinySD15Loader, "TinySDXLLoader": TinySDXLLoader,
                       "TinyFluxLoader": TinyFluxLoader, "TinySD3Loader": TinySD3Loader,
                       "TinyChromaLoader": TinyChromaLoader, "TinyQwenImageLoader": TinyQwenImageLoader,
                       "TinyWan21Loader": TinyWan21Loader,
                       "ComparePredictions": ComparePredictions,
                       "RunsOutOfMemory": RunsOutOfMemory}
