"""Test-only ComfyUI custom nodes: loaders for tiny SD1.5- and SDXL-topology models (CheckpointLoaderSimple only
recognises real checkpoints) and a node that compares two MODELs' predictions on one fixed input."""

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
                       "ComparePredictions": ComparePredictions,
                       "RunsOutOfMemory": RunsOutOfMemory}
