"""The six-node graph on flow-matching models, queued on a real ComfyUI server: each tiny family (Flux.1 dev,
SD3.5 Medium, Chroma, Qwen-Image, Wan 2.1) trains through the executor, the file is saved under kohya's or the
generic names, and a KSampler after Train samples with the LoRA in the same graph."""

from __future__ import annotations

import os

import pytest
from safetensors import safe_open

from tests.helpers import make_kohya_folder

from . import harness
from .server import ComfyServer

LOADERS = {"flux": "TinyFluxLoader", "sd3": "TinySD3Loader", "chroma": "TinyChromaLoader",
           "qwen_image": "TinyQwenImageLoader", "wan21": "TinyWan21Loader"}
VERSIONS = {"flux": "flux1", "sd3": "5-medium", "chroma": "chroma", "qwen_image": "qwen_image", "wan21": "wan21"}
ARCHITECTURES = {"flux": "flux-1-dev/lora", "sd3": "stable-diffusion-3-5-medium/lora", "chroma": "chroma/lora",
                 "qwen_image": "qwen-image/lora", "wan21": "wan-2.1/lora"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = harness.missing_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("comfy_flow")
    make_kohya_folder(str(base / "input" / "dogs"), {"2_sks dog": [(64, 64), (96, 64), (64, 64)]},
                      {"2_sks dog/0": "a photo of sks dog"})
    running = ComfyServer(str(base)).start()
    yield running
    running.stop()


def empty_latent(family: str) -> dict:
    if family == "wan21":                       # Wan samples videos: one frame
        return {"class_type": "EmptyHunyuanLatentVideo",
                "inputs": {"width": 64, "height": 64, "length": 1, "batch_size": 1}}
    return {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}


def flow_graph(family: str, output_name: str) -> dict:
    return {
        "1": {"class_type": LOADERS[family], "inputs": {"seed": 1}},
        "2": {"class_type": "LoRALoadDatasetFolder", "inputs": {"folder": "dogs", "caption_extension": ".txt"}},
        "3": {"class_type": "LoRABucketCacheLatents",
              "inputs": {"dataset": ["2", 0], "vae": ["1", 2], "resolution": 64, "min_bucket_reso": 64,
                         "max_bucket_reso": 128, "bucket_reso_steps": 64, "bucket_no_upscale": False,
                         "vae_batch_size": 2, "cache": "memory", "resize_interpolation": "auto",
                         "transparency": "on white"}},
        "4": {"class_type": "LoRAConfigure", "inputs": {"algorithm": "LoRA", "rank": 4, "alpha": 4.0}},
        "5": {"class_type": "LoRAOptimizer",
              "inputs": {"optimizer_type": "AdamW", "learning_rate": 1e-3, "weight_decay": 0.01, "beta1": 0.9,
                         "beta2": 0.999, "lr_scheduler": "constant", "lr_warmup": 0.0, "max_grad_norm": 1.0}},
        "6": {"class_type": "LoRATrain",
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "latents": ["3", 0], "network": ["4", 0],
                         "optimizer": ["5", 0], "output_name": output_name, "epochs": 1, "max_steps": 0,
                         "batch_size": 1, "train_seed": 7, "precision": "fp32", "save_every_n_epochs": 0,
                         "gradient_checkpointing": True, "timestep_sampling": "auto", "guidance_scale": 1.0}},
        "7": {"class_type": "LoRASaveSafetensors", "inputs": {"lora": ["6", 2], "file_name": "", "precision": "fp32"}},
        "9": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["6", 1], "text": "a photo of sks dog"}},
        "10": empty_latent(family),
        "11": {"class_type": "KSampler",
               "inputs": {"model": ["6", 0], "positive": ["9", 0], "negative": ["9", 0], "latent_image": ["10", 0],
                          "seed": 0, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                          "denoise": 1.0}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}},
    }


def error_message(entry: dict) -> str:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return data.get("exception_message", "")
    return ""


@pytest.mark.parametrize("family", list(LOADERS))
def test_each_flow_family_trains_saves_and_samples_through_the_executor(server, family):
    entry = server.wait(server.queue(flow_graph(family, f"flow_{family}")))
    assert entry["status"]["status_str"] == "success", (error_message(entry), server.read_log()[-4000:])
    path = os.path.join(server.base_dir, "models", "loras", f"flow_{family}.safetensors")
    with safe_open(path, "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
        ups = [handle.get_tensor(k) for k in keys if k.endswith("lora_up.weight")]
    modules = {k.split(".", 1)[0] for k in keys}
    assert all(m.startswith("lora_unet_") and f"{m}.alpha" in keys for m in modules)
    assert len(keys) == 3 * len(modules) and any(float(u.abs().max()) > 0 for u in ups)
    assert metadata["ss_base_model_version"] == VERSIONS[family]
    assert metadata["modelspec.architecture"] == ARCHITECTURES[family]
    assert metadata["ss_steps"] == "6" and metadata["ss_model_prediction_type"] == "raw"
    assert metadata["ss_timestep_sampling"] == {"flux": "flux_shift", "chroma": "flux_shift",
                                                "sd3": "logit_normal"}.get(family, "shift")
    assert "lora key not loaded" not in server.read_log()
    assert entry["outputs"]["13"]["images"], "the KSampler after Train gave no image"
