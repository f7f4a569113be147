"""The model families the trainer knows, and how kohya names each one's LoRA modules.

A family record says what an adapter needs to name modules exactly as kohya's networks.lora does for that
model: which UNet path style the names use (kohya's SD1.x / SD2.x UNet uses diffusers' module paths, its
SDXL UNet the original SAI / LDM paths), and each text encoder's prefix and the layers kohya's own text
encoder has. The adapters (nodes/comfy_model.py, trainer/diffusers_adapter.py) walk the model in hand and
name its layers by these rules; tests compare the result with names generated from kohya itself
(tests/reference/).

Flow-matching families (Flux.1, Chroma, SD3.x, Qwen-Image, Wan, and any other DiT ComfyUI loads) are records too:
kohya's and musubi-tuner's DiT LoRA names are `lora_unet_` + the module path with `.` as `_`, and ComfyUI's
module paths are the original ones (BFL's Flux, SAI's MMDiT, the Qwen-Image and Wan reference code), so the
names come from ComfyUI's own paths; which Linear layers train is the record's `dit_blocks` rule.
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
    key: str = ""                # FAMILIES' key (and TrainableModel.base_model_version); default: version
    # flow-matching families: the timestep sampling kohya's trainer for the family uses by default ("" = DDPM)
    flow_sampling: str = ""
    # which DiT Linear layers a LoRA trains: "blocks:<Class>,<Class>" every Linear inside modules of those
    # classes (kohya's lora_flux), "sd3" every Linear in joint_blocks.N.context_block / x_block (kohya's
    # lora_sd3), "repeated" every Linear inside the model's repeated blocks (any nn.ModuleList of blocks)
    dit_blocks: str = ""
    architecture_name: str = ""  # modelspec.architecture without "/lora" (flow families)
    # the model takes a distilled-guidance input that training sets (Flux.1 dev: guidance_scale); other families
    # get what their sampling gives it (Chroma: 0), so training and sampling see the same input
    guidance_input: bool = False
    implementation: str = "diffusers"   # modelspec.implementation, as kohya's sai_model_spec picks it

    def __post_init__(self):
        if not self.key:
            object.__setattr__(self, "key", self.version)

    @property
    def is_flow(self) -> bool:
        return bool(self.flow_sampling)

    def architecture(self, prediction_type: str) -> str:
        """modelspec.architecture of a LoRA for this family (kohya's sai_model_spec names)."""
        if self.version == "sd_v2":
            return "stable-diffusion-v2-768-v/lora" if prediction_type == "v_prediction" else \
                "stable-diffusion-v2-512/lora"
        return (self.architecture_name or ARCHITECTURES[self.version]) + "/lora"


ARCHITECTURES = {"sd_v1": "stable-diffusion-v1", "sdxl_base_v1-0": "stable-diffusion-xl-v1-base"}

SD1 = Family("sd_v1", "SD1.x", "diffusers", (TextEncoderNames("lora_te", "clip_l", 12),))
SD2 = Family("sd_v2", "SD2.x", "diffusers", (TextEncoderNames("lora_te", "clip_h", 23),), v2=True)
SDXL = Family("sdxl_base_v1-0", "SDXL", "ldm",
              (TextEncoderNames("lora_te1", "clip_l", 12), TextEncoderNames("lora_te2", "clip_g", 32)),
              pooled_text=True)


FLUX_BLOCKS = "blocks:DoubleStreamBlock,SingleStreamBlock"      # kohya's lora_flux targets (ComfyUI's classes too)
FLUX_DEV = Family("flux1", "Flux.1 dev", "comfy", (), latent_channels=16, key="flux1_dev", flow_sampling="flux_shift",
                  dit_blocks=FLUX_BLOCKS, architecture_name="flux-1-dev", guidance_input=True,
                  implementation="https://github.com/black-forest-labs/flux")
FLUX_SCHNELL = Family("flux1", "Flux.1 schnell", "comfy", (), latent_channels=16, key="flux1_schnell",
                      flow_sampling="flux_shift", dit_blocks=FLUX_BLOCKS, architecture_name="flux-1-schnell",
                      implementation="https://github.com/black-forest-labs/flux")
CHROMA = Family("chroma", "Chroma", "comfy", (), latent_channels=16, flow_sampling="flux_shift",
                dit_blocks=FLUX_BLOCKS, architecture_name="chroma",
                implementation="https://huggingface.co/lodestones/Chroma")
# kohya's SD3 model types (library/sd3_utils.py: "medium", "5-medium", "5-large"), its defaults for SD3.5 LoRAs:
# logit-normal timesteps with the model's shift 3.0
SD3_MEDIUM = Family("medium", "SD3 Medium", "comfy", (), latent_channels=16, key="sd3_medium",
                    flow_sampling="logit_normal", dit_blocks="sd3", architecture_name="stable-diffusion-3-medium")
SD35_MEDIUM = Family("5-medium", "SD3.5 Medium", "comfy", (), latent_channels=16, key="sd35_medium",
                     flow_sampling="logit_normal", dit_blocks="sd3", architecture_name="stable-diffusion-3-5-medium")
SD35_LARGE = Family("5-large", "SD3.5 Large", "comfy", (), latent_channels=16, key="sd35_large",
                    flow_sampling="logit_normal", dit_blocks="sd3", architecture_name="stable-diffusion-3-5-large")
QWEN_IMAGE = Family("qwen_image", "Qwen-Image", "comfy", (), latent_channels=16, flow_sampling="shift",
                    dit_blocks="blocks:QwenImageTransformerBlock", architecture_name="qwen-image")
WAN21 = Family("wan21", "Wan 2.1", "comfy", (), latent_channels=16, flow_sampling="shift",
               dit_blocks="blocks:WanAttentionBlock", architecture_name="wan-2.1")


def generic_flow_family(name: str, latent_channels: int = 16) -> Family:
    """Any other flow-matching model ComfyUI loads: LoRA on every Linear of its repeated blocks, the shift its
    ComfyUI sampling declares."""
    slug = name.lower()
    return Family(slug, name, "comfy", (), latent_channels=latent_channels, flow_sampling="shift",
                  dit_blocks="repeated", architecture_name=slug)


FAMILIES = {family.key: family for family in (SD1, SD2, SDXL, FLUX_DEV, FLUX_SCHNELL, CHROMA, SD3_MEDIUM,
                                               SD35_MEDIUM, SD35_LARGE, QWEN_IMAGE, WAN21)}


def family_by_key(key: str) -> Family:
    """The record of TrainableModel.base_model_version; a generic family's when it is not a known one."""
    return FAMILIES.get(key) or generic_flow_family(key)
