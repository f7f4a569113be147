"""A saved file loads into diffusers (its kohya converter + PEFT) and gives the trained network's output."""

import copy
import re

import pytest
import safetensors.torch
import torch

from trainer.lora_file import TrainedLora, save_lora
from trainer.networks import LoRANetwork, NetworkConfig

pytest.importorskip("peft", reason="diffusers needs peft to load LoRAs; `bash scripts/setup.sh` installs it")


@pytest.mark.parametrize("algorithm", ["LoRA", "LoCon"])
def test_saved_lora_loads_in_diffusers_with_no_key_left(tmp_path, tiny_trainable, algorithm):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    unet = tiny_trainable.frozen_root
    torch.manual_seed(0)
    config = NetworkConfig(algorithm, rank=4, alpha=2, conv_rank=2, conv_alpha=1)
    targets = tiny_trainable.targets_for(config.uses_convolutions)
    network = LoRANetwork(targets, config)
    for module in network.lora_modules.values():
        torch.nn.init.normal_(module.up.weight, std=0.1)       # as if trained
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad(), network.attached(targets):
        trained = unet(x, t, encoder_hidden_states=context).sample

    path = save_lora(TrainedLora("d", network.kohya_state_dict(), {}, 1, 1), str(tmp_path), "d", "fp32")
    state = safetensors.torch.load_file(path)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(state))
    assert len(converted) == 2 * len(network.lora_modules) and len(alphas) == len(network.lora_modules)
    loaded = copy.deepcopy(unet)
    loaded.load_lora_adapter(converted, prefix="unet", network_alphas=alphas, adapter_name="trained")
    with torch.no_grad():
        out = loaded(x, t, encoder_hidden_states=context).sample
        base = unet(x, t, encoder_hidden_states=context).sample
    assert torch.allclose(out, trained, atol=1e-5)
    assert (base - trained).abs().max() > 1e-3


def test_text_encoder_keys_convert_too(tmp_path):
    """A file that trains UNet and text encoder: diffusers' converter takes every key of both parts."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    from tests.engine.conftest import tiny_unet
    from tests.engine.test_network_variants import TinyClipCaptions
    from trainer.diffusers_adapter import FunctionCaptionEncoder, diffusers_sd1_trainable

    clip = TinyClipCaptions()
    model = diffusers_sd1_trainable(tiny_unet(), FunctionCaptionEncoder(clip), text_encoder=clip.model)
    config = NetworkConfig(rank=4, train_on="both")
    network = LoRANetwork(model.targets_for(False, True, True), config)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(network.kohya_state_dict()))
    text = [k for k in converted if k.startswith("text_encoder.")]
    assert len(converted) == 2 * len(network.lora_modules) and len(alphas) == len(network.lora_modules)
    assert len(text) == 2 * 12 and any(".layers.1.mlp.fc2." in k for k in text)


@pytest.mark.parametrize("with_conv", [False, True], ids=["LoRA", "LoCon"])
def test_sdxl_names_map_onto_diffusers_sdxl_unet(with_conv):
    """kohya's SDXL names (SAI layout) through diffusers' SDXL loader path: every key converts, onto a module
    that diffusers' own SDXL UNet has (built on the meta device, full size)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from tests.reference_data import kohya_modules, lora_shapes

    sdxl_config = dict(sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280),
                       down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                       transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                       use_linear_projection=True, addition_embed_type="text_time",
                       addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, layers_per_block=2)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sdxl_config)
    state = {}
    for name, (layer_type, shape) in kohya_modules("sdxl", with_conv=with_conv).items():
        down, up = lora_shapes(layer_type, shape, rank=1)
        state.update({f"{name}.lora_down.weight": torch.zeros(down), f"{name}.lora_up.weight": torch.zeros(up),
                      f"{name}.alpha": torch.tensor(1.0)})
    count = len(state) // 3
    converted, alphas = StableDiffusionXLPipeline.lora_state_dict(dict(state), unet_config=unet.config)
    modules = dict(unet.named_modules())
    assert len(converted) == 2 * count and len(alphas) == count
    for key in converted:
        path = re.sub(r"(_lora|\.lora)?\.(down|up)\.weight$|\.lora_[AB]\.weight$", "", key[len("unet."):])
        # diffusers' legacy attention-processor names: attn1.processor.to_out -> attn1.to_out.0
        path = path.replace(".processor.", ".").replace(".to_out", ".to_out.0").replace(".0.0", ".0")
        assert key.startswith("unet.") and path in modules, key
