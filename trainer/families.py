"""The model families the trainer knows, and how kohya names each one's LoRA modules.

A family record says what an adapter needs to name modules exactly as kohya's networks.lora does for that
model: which UNet path style the names use (kohya's SD1.x / SD2.x UNet uses diffusers' module paths, its
SDXL UNet the original SAI / LDM paths), and each text encoder's prefix and the layers kohya's own text
encoder has. The adapters (nodes/comfy_model.py, trainer/diffusers_adapter.py) walk the model in hand and
name its layers by these rules; tests compare the result with names generated from kohya itself
(tests/reference/).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextEncoderNames:
    prefix: str                  # kohya's name prefix: lora_te (SD1/SD2), lora_te1 / lora_te2 (SDXL)
    component: str               # the encoder's name in ComfyUI's CLIP model: clip_l, clip_h, clip_g
    kohya_layers: int            # layers kohya's own text encoder has (SD2: 23, the penultimate is its output)


@dataclass(frozen=True)
class Family:
    version: str                 # kohya's ss_base_model_version
    title: str
    unet_paths: str              # "diffusers" (kohya's SD1.x / SD2.x names) or "ldm" (SDXL)
    text_encoders: tuple[TextEncoderNames, ...]
    v2: bool = False             # kohya's ss_v2
    pooled_text: bool = False    # conditioned on the pooled text embedding and size conditioning too (SDXL)
    latent_channels: int = 4
    bucket_step: int = 64        # bucket sides must be multiples of this (the UNet downsamples 3 times)

    def architecture(self, prediction_type: str) -> str:
        """modelspec.architecture of a LoRA for this family (kohya's sai_model_spec names)."""
        if self.version == "sd_v2":
            return "stable-diffusion-v2-768-v/lora" if prediction_type == "v_prediction" else \
                "stable-diffusion-v2-512/lora"
        return ARCHITECTURES[self.version]


ARCHITECTURES = {"sd_v1": "stable-diffusion-v1/lora", "sdxl_base_v1-0": "stable-diffusion-xl-v1-base/lora"}

SD1 = Family("sd_v1", "SD1.x", "diffusers", (TextEncoderNames("lora_te", "clip_l", 12),))
SD2 = Family("sd_v2", "SD2.x", "diffusers", (TextEncoderNames("lora_te", "clip_h", 23),), v2=True)
SDXL = Family("sdxl_base_v1-0", "SDXL", "ldm",
              (TextEncoderNames("lora_te1", "clip_l", 12), TextEncoderNames("lora_te2", "clip_g", 32)),
              pooled_text=True)

FAMILIES = {family.version: family for family in (SD1, SD2, SDXL)}
