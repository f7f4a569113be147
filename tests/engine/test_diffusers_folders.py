"""Diffusers-format model folders through the command line: SD2.x and SDXL folders (tiny ones, saved with
save_pretrained) are told apart, train a few steps, and save a LoRA under kohya's names for their family with
the family in its metadata; the SDXL name map matches kohya's for the full-size SDXL UNet."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.reference_data import kohya_modules
from trainer.cli.main import main

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SDXL_POOLED_DIM, SDXL_TIME_DIM = 32, 8        # the UNet's added embedding takes pooled + 6 size numbers


def byte_level_chars() -> list[str]:
    """The 256 characters byte-level BPE writes bytes as: printable Latin-1 bytes as themselves, the rest moved
    past 255 so that every token is visible text."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    moved = iter(range(256, 512))
    return [chr(byte) if byte in printable else chr(next(moved)) for byte in range(256)]


def write_tokenizer(folder: str) -> None:
    """A CLIP tokenizer made offline: every byte as its own token (with and without the word end) and no merges,
    enough to turn any caption into ids."""
    byte_chars = byte_level_chars()
    tokens = [*byte_chars, *(f"{char}</w>" for char in byte_chars), "<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab, "w", encoding="utf-8") as handle:
        json.dump({token: index for index, token in enumerate(tokens)}, handle)
    with open(merges, "w", encoding="utf-8") as handle:
        handle.write("#version: 0.2\n")
    transformers.CLIPTokenizer(vocab, merges, model_max_length=77).save_pretrained(folder)


def text_config(hidden: int, **extra) -> "transformers.CLIPTextConfig":
    return transformers.CLIPTextConfig(vocab_size=514, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=77, bos_token_id=512,
                                       eos_token_id=513, pad_token_id=513, **extra)


def save_common(folder: str, pipeline: str, prediction_type: str) -> None:
    torch.manual_seed(1)
    diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                            norm_num_groups=32, block_out_channels=(32, 32, 32, 32),
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(os.path.join(folder, "vae"))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w", encoding="utf-8") as handle:
        json.dump({"_class_name": "DDPMScheduler", "prediction_type": prediction_type}, handle)
    with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as handle:
        json.dump({"_class_name": pipeline}, handle)


def sd2_folder(folder: str) -> str:
    """SD2.x-shaped: context 1024, linear projections, the reference UNet's first two down / last two up levels."""
    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(
        sample_size=8, layers_per_block=2, block_out_channels=(32, 64), norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024, attention_head_dim=8, use_linear_projection=True,
    ).save_pretrained(os.path.join(folder, "unet"))
    transformers.CLIPTextModel(text_config(1024)).save_pretrained(os.path.join(folder, "text_encoder"))
    write_tokenizer(os.path.join(folder, "tokenizer"))
    save_common(folder, "StableDiffusionPipeline", "v_prediction")
    return folder


def sdxl_folder(folder: str) -> str:
    """SDXL-shaped: SDXL's three levels and block types, one transformer per block, context 768 + 1280."""
    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(
        sample_size=8, layers_per_block=2, block_out_channels=(32, 32, 64), norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2048, attention_head_dim=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_DIM,
        projection_class_embeddings_input_dim=SDXL_POOLED_DIM + 6 * SDXL_TIME_DIM,
    ).save_pretrained(os.path.join(folder, "unet"))
    transformers.CLIPTextModel(text_config(768)).save_pretrained(os.path.join(folder, "text_encoder"))
    transformers.CLIPTextModelWithProjection(text_config(1280, projection_dim=SDXL_POOLED_DIM)).save_pretrained(
        os.path.join(folder, "text_encoder_2"))
    write_tokenizer(os.path.join(folder, "tokenizer"))
    write_tokenizer(os.path.join(folder, "tokenizer_2"))
    save_common(folder, "StableDiffusionXLPipeline", "epsilon")
    return folder


RUN = """
[model]
path = "{model}"
device = "cpu"
[output]
loras_folder = "{out}/loras"
runs_folder = "{out}/runs"
[dataset]
folder = "{repo}/samples/demo_dataset"
[buckets]
resolution = 64
min_bucket_reso = 64
max_bucket_reso = 128
[network]
algorithm = "{algorithm}"
rank = 2
train = "both"
[optimizer]
optimizer_type = "AdamW"
learning_rate = 1e-3
[training]
output_name = "folder"
epochs = 0
max_steps = 2
batch_size = 2
precision = "fp32"
[save]
precision = "fp32"
"""


def train(tmp_path, model: str, algorithm: str) -> tuple[set[str], dict]:
    out = tmp_path / "out"
    config = tmp_path / "run.toml"
    config.write_text(RUN.format(model=model, out=out, repo=REPO_ROOT, algorithm=algorithm), encoding="utf-8")
    assert main(["train", str(config)]) == 0
    path = out / "loras" / "folder.safetensors"
    with safetensors_torch.safe_open(str(path), "pt") as handle:
        names = {key.split(".")[0] for key in handle.keys()}
        return names, handle.metadata()


@pytest.mark.parametrize("family, make, reference, version, v2, prefixes, downsampler", [
    ("SD2", sd2_folder, "sd2", "sd_v2", "True", {"lora_unet", "lora_te"},
     "lora_unet_down_blocks_0_downsamplers_0_conv"),
    ("SDXL", sdxl_folder, "sdxl", "sdxl_base_v1-0", "False", {"lora_unet", "lora_te1", "lora_te2"},
     "lora_unet_input_blocks_3_0_op"),
], ids=["SD2", "SDXL"])
def test_a_folder_trains_and_saves_kohya_names_for_its_family(tmp_path, family, make, reference, version, v2,
                                                              prefixes, downsampler):
    model = make(str(tmp_path / "model"))
    names, metadata = train(tmp_path, model, "LoCon")
    kohya = set(kohya_modules(reference, with_conv=True)) | set(kohya_modules(f"{reference}_te"))
    assert names - kohya == set()                          # every key is one kohya has for this family
    assert {"_".join(name.split("_")[:2]) for name in names} == prefixes and downsampler in names
    assert metadata["ss_base_model_version"] == version and metadata["ss_v2"] == v2
    if family == "SD2":
        assert metadata["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"     # v_prediction scheduler


def test_the_sdxl_name_map_gives_kohya_names_for_the_full_sdxl_unet():
    from trainer.diffusers_adapter import diffusers_trainable
    from trainer.families import SDXL

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(
            sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
        trainable = diffusers_trainable(unet, None, SDXL)
    for with_conv in (False, True):
        kohya = kohya_modules("sdxl", with_conv=with_conv)
        targets = trainable.targets_for(with_conv)
        assert set(targets) == set(kohya)
        assert all(type(targets[name]).__name__ == layer_type for name, (layer_type, _) in kohya.items())


def test_an_sdxl_unet_in_a_plain_pipeline_folder_is_refused(tmp_path):
    from trainer.cli.models import folder_family
    from trainer.errors import ModelError

    folder = sdxl_folder(str(tmp_path / "model"))
    with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as handle:
        json.dump({"_class_name": "StableDiffusionPipeline"}, handle)
    unet_config = diffusers.UNet2DConditionModel.load_config(os.path.join(folder, "unet"))
    with pytest.raises(ModelError, match="context width 2048"):
        folder_family(folder, type("Config", (), unet_config))
