"""DoRA, LoRA+ and text-encoder LoRA: the math, the optimizer groups, and training the text encoder."""

from __future__ import annotations

import os
import zlib

import pytest
import torch
from torch import nn

from tests.engine.conftest import CONTEXT_DIM, tiny_unet
from tests.helpers import make_kohya_folder
from trainer.dataset import load_dataset_folder
from trainer.dataset.buckets import BucketSettings
from trainer.diffusers_adapter import FunctionCaptionEncoder, diffusers_sd1_trainable
from trainer.errors import ConfigError
from trainer.latent_cache import cache_latents
from trainer.loop import train_lora
from trainer.networks import DoRAModule, LoRANetwork, NetworkConfig
from trainer.optim import OptimizerConfig
from trainer.plan import TrainSettings


def comfyui_input_axis_dora(weight, down, up, alpha, dora_scale, strength=1.0):
    """ComfyUI's reading of a LoRA with dora_scale (1, in, ...) (comfy/weight_adapter/base.py weight_decompose,
    written out from its formula): W0 + s * (m * (W0 + dW) / (||W0 + dW||_columns + eps) - W0)."""
    rank = down.shape[0]
    if weight.dim() == 2:
        diff = up @ down
    else:
        diff = nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    calc = weight + diff * (alpha / rank)
    norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True)
    norm = norm.reshape(calc.shape[1], *[1] * (calc.dim() - 1)).transpose(0, 1) + torch.finfo(torch.float32).eps
    return weight + strength * (calc * (dora_scale / norm) - weight)


@pytest.mark.parametrize("layer", [nn.Linear(12, 10), nn.Conv2d(6, 8, 3, padding=1), nn.Conv2d(6, 8, 1)],
                         ids=["linear", "conv3x3", "conv1x1"])
def test_dora_is_what_comfyui_reads_from_its_file(layer):
    torch.manual_seed(0)
    module = DoRAModule(layer, rank=4, alpha=2.0)
    fan_in = layer.weight.shape[1]
    assert tuple(module.dora_scale.shape) == (1, fan_in, *[1] * (layer.weight.dim() - 2))
    assert module.delta_weight().abs().max() < 1e-5, "a fresh DoRA must start from the model itself"
    with torch.no_grad():
        module.up.weight.normal_(std=0.3)
        module.dora_scale.mul_(torch.rand_like(module.dora_scale) + 0.5)
    saved = module.saved_parameters()
    assert set(saved) == {"lora_down.weight", "lora_up.weight", "dora_scale"}
    expected = comfyui_input_axis_dora(layer.weight.detach(), saved["lora_down.weight"].detach(),
                                       saved["lora_up.weight"].detach(), 2.0, saved["dora_scale"].detach())
    torch.testing.assert_close(layer.weight.detach() + module.delta_weight().detach(), expected, atol=1e-5, rtol=0)
    x = torch.randn(2, 12) if isinstance(layer, nn.Linear) else torch.randn(2, 6, 5, 5)
    functional = nn.functional.linear if isinstance(layer, nn.Linear) else (
        lambda inp, w, b: nn.functional.conv2d(inp, w, b, padding=layer.padding))
    torch.testing.assert_close(layer(x) + module(x), functional(x, expected, layer.bias), atol=1e-5, rtol=0)
    module.multiplier = 0.5                 # ComfyUI's strength: W0 + s * (W' - W0)
    half = comfyui_input_axis_dora(layer.weight.detach(), saved["lora_down.weight"].detach(),
                                   saved["lora_up.weight"].detach(), 2.0, saved["dora_scale"].detach(), 0.5)
    torch.testing.assert_close(layer.weight.detach() + module.delta_weight().detach() * 0.5, half, atol=1e-5,
                               rtol=0)


def test_dora_trains_its_magnitude_and_says_so_in_the_metadata():
    layer = nn.Linear(8, 8)
    config = NetworkConfig(rank=2, dora=True).validated()
    network = LoRANetwork({"lora_unet_a": layer}, config)
    with torch.no_grad():
        network.lora_modules["lora_unet_a"].up.weight.normal_()
    with network.attached({"lora_unet_a": layer}):
        layer(torch.randn(3, 8)).square().sum().backward()
    assert network.lora_modules["lora_unet_a"].dora_scale.grad.abs().max() > 0
    assert config.network_module == "lycoris.kohya"
    assert config.network_args() == {"algo": "lora", "dora_wd": "True", "wd_on_output": "False"}
    with pytest.raises(ConfigError, match="DoRA is offered with LoRA and LoCon"):
        NetworkConfig(algorithm="LoHa", dora=True).validated()
    with pytest.raises(ConfigError, match="LoRA with DoRA takes module_dropout"):
        NetworkConfig(dora=True, rank_dropout=0.1).validated()


def test_parameter_groups_follow_kohya_with_loraplus_and_a_frozen_part():
    targets = {"lora_te_text_model_encoder_layers_0_mlp_fc1": nn.Linear(4, 4), "lora_unet_b": nn.Linear(4, 4)}
    network = LoRANetwork(targets, NetworkConfig(rank=2, train_on="both"))
    groups = network.parameter_groups(1e-4, 5e-5, loraplus_ratio=16)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"textencoder", "textencoder plus", "unet", "unet plus"}
    assert by_name["unet plus"]["lr"] == pytest.approx(16e-4) and by_name["textencoder"]["lr"] == 5e-5
    ups = {id(m.up.weight) for m in network.lora_modules.values()}
    assert all(id(p) in ups for g in groups if g["name"].endswith("plus") for p in g["params"])
    # kohya drops a group whose lr is 0: that part's LoRA stays as it is
    assert {g["name"] for g in network.parameter_groups(1e-4, 0.0)} == {"unet"}


class TinyClipCaptions:
    """A real transformers CLIP text model on hashed word ids (no tokenizer files needed)."""

    def __init__(self):
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(5)
        config = CLIPTextConfig(vocab_size=1024, hidden_size=CONTEXT_DIM, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                pad_token_id=1)
        self.model = CLIPTextModel(config).eval()

    def __call__(self, caption: str) -> torch.Tensor:
        ids = [zlib.crc32(word.encode()) % 1000 + 2 for word in caption.split()][:75]
        ids = [0] + ids + [1] * (76 - len(ids))
        return self.model(torch.tensor([ids])).last_hidden_state


@pytest.mark.parametrize("train_on", ["text_encoder", "both"])
def test_the_text_encoder_trains_under_kohyas_names_and_stays_frozen_itself(tmp_path, tiny_vae_encoder, train_on):
    clip = TinyClipCaptions()
    model = diffusers_sd1_trainable(tiny_unet(), FunctionCaptionEncoder(clip), text_encoder=clip.model)
    root = make_kohya_folder(str(tmp_path / "data"), {"2_sks dog": [(64, 64), (64, 64)]},
                             {"2_sks dog/0": "a photo of sks dog", "2_sks dog/1": "sks dog on grass"})
    cache = cache_latents(load_dataset_folder(root), tiny_vae_encoder, BucketSettings((64, 64), 64, 128, 64))
    clip_before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    result = train_lora(model, cache, NetworkConfig(rank=2, train_on=train_on),
                        OptimizerConfig(learning_rate=1e-3, text_encoder_lr=1e-3, scheduler="constant",
                                        warmup_ratio=0.0), TrainSettings(epochs=2, batch_size=2, seed=1))
    te_modules = {k.split(".")[0] for k in result.tensors if k.startswith("lora_te_")}
    assert len(te_modules) == 2 * 6 and "lora_te_text_model_encoder_layers_1_mlp_fc2" in te_modules
    assert any(k.startswith("lora_unet_") for k in result.tensors) == (train_on == "both")
    moved = [k for k, v in result.tensors.items() if k.startswith("lora_te_") and k.endswith("lora_up.weight")
             and v.abs().max() > 0]
    assert moved, "the text encoder's LoRA did not train"
    for key, value in clip.model.state_dict().items():
        assert torch.equal(value, clip_before[key]), key
    assert all(p.requires_grad for p in clip.model.parameters()), "the text encoder's flags were not given back"


def saved_network(tmp_path, config: NetworkConfig, targets: dict, name: str = "c"):
    from trainer.lora_file import TrainedLora, save_lora

    network = LoRANetwork(targets, config)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return network, save_lora(TrainedLora(name, network.kohya_state_dict(), {}, 1, 1), str(tmp_path), name, "fp32")


@pytest.mark.parametrize("config", [NetworkConfig("LoKr", rank=2), NetworkConfig("LoKr", rank=2, decompose_both=True),
                                    NetworkConfig("DyLoRA", rank=4, dylora_unit=2), NetworkConfig(rank=2, dora=True),
                                    NetworkConfig(rank=2, train_on="both")],
                         ids=["LoKr", "LoKr decompose_both", "DyLoRA", "DoRA", "text encoder"])
def test_each_algorithm_continues_from_its_own_file_exactly(tmp_path, config):
    from trainer.networks.continue_from import continue_from_file

    targets = {"lora_te_text_model_encoder_layers_0_mlp_fc1": nn.Linear(16, 24), "lora_unet_a": nn.Linear(16, 24),
               "lora_unet_b": nn.Conv2d(8, 16, 1)}
    if config.train_on == "unet":
        targets.pop("lora_te_text_model_encoder_layers_0_mlp_fc1")
    saved, path = saved_network(tmp_path, config, targets)
    fresh = LoRANetwork(targets, config)
    continue_from_file(fresh, path, set())
    for key, value in saved.kohya_state_dict().items():
        assert torch.equal(fresh.kohya_state_dict()[key], value), key


def test_continuing_another_kind_of_file_says_which_setting_to_change(tmp_path):
    from trainer.networks.continue_from import continue_from_file

    targets = {"lora_unet_a": nn.Linear(16, 24)}
    _, lokr = saved_network(tmp_path, NetworkConfig("LoKr", rank=2), targets, "lokr")
    _, dora = saved_network(tmp_path, NetworkConfig(rank=2, dora=True), targets, "dora")
    _, plain = saved_network(tmp_path, NetworkConfig(rank=2), targets, "plain")
    both_targets = {"lora_te_text_model_encoder_layers_0_mlp_fc1": nn.Linear(16, 24), **targets}
    _, both = saved_network(tmp_path, NetworkConfig(rank=2, train_on="both"), both_targets, "both")
    cases = [
        (NetworkConfig(rank=2), lokr, "is a LoKr file and this network is LoRA; set Configure LoRA's algorithm to "
                                      "LoKr"),
        (NetworkConfig(rank=2), dora, "is a DoRA file and this network is LoRA; switch Configure LoRA's dora on"),
        (NetworkConfig(rank=2, dora=True), plain, "this network is LoRA with DoRA; set Configure LoRA's algorithm to "
                                                  "LoRA with dora off"),
        (NetworkConfig(rank=2), both, "set Configure LoRA's train to both"),
    ]
    for config, path, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            continue_from_file(LoRANetwork(targets, config), path, set())


def test_fp16_files_are_half_the_size_and_metadata_names_each_algorithm(tmp_path):
    from trainer.lora_file import TrainedLora, save_lora

    network = LoRANetwork({"lora_unet_a": nn.Linear(256, 256), "lora_unet_b": nn.Linear(256, 256)},
                          NetworkConfig(rank=64))
    lora = TrainedLora("s", network.kohya_state_dict(), {"ss_output_name": "s"}, 1, 1)
    full = os.path.getsize(save_lora(lora, str(tmp_path), "full", "fp32"))
    half = os.path.getsize(save_lora(lora, str(tmp_path), "half", "fp16"))
    assert abs(half / full - 0.5) < 0.02, (half, full)
    expected = {
        NetworkConfig("LoKr", rank=4, decompose_both=True): ("lycoris.kohya", {"algo": "lokr", "factor": "-1",
                                                                               "decompose_both": "True"}),
        NetworkConfig("LoHa", rank=4): ("lycoris.kohya", {"algo": "loha"}),
        NetworkConfig("DyLoRA", rank=4, dylora_unit=2): ("networks.dylora", {"unit": "2"}),
        NetworkConfig("LoCon", rank=4, conv_rank=2, dora=True): (
            "lycoris.kohya", {"algo": "locon", "dora_wd": "True", "wd_on_output": "False", "conv_dim": "2",
                              "conv_alpha": "1.0"}),
        NetworkConfig(rank=4): ("networks.lora", {}),
    }
    for config, (module, args) in expected.items():
        assert (config.validated().network_module, config.network_args()) == (module, args), config


@pytest.mark.parametrize("config", [NetworkConfig(), NetworkConfig("LoCon", conv_rank=2), NetworkConfig("LoHa"),
                                    NetworkConfig("LoKr"), NetworkConfig("DyLoRA"), NetworkConfig(dora=True)],
                         ids=["LoRA", "LoCon", "LoHa", "LoKr", "DyLoRA", "DoRA"])
def test_wrapping_and_unwrapping_leaves_the_model_bit_identical(tiny_trainable, config):
    unet = tiny_trainable.frozen_root
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, CONTEXT_DIM)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=context).sample
    targets = tiny_trainable.targets_for(config.uses_convolutions)
    network = LoRANetwork(targets, config)
    with network.attached(targets):
        unet(x, t, encoder_hidden_states=context).sample.square().mean().backward()
    assert [name for name, _ in unet.named_modules() if "lora" in name.lower()] == []     # nothing added to it
    with torch.no_grad():
        after = unet(x, t, encoder_hidden_states=context).sample
    assert all(torch.equal(value, before[key]) for key, value in unet.state_dict().items())
    assert torch.equal(after, plain)


@pytest.mark.parametrize("original, bucket, flipped, expected", [
    ((1000, 500), (768, 384), False, ((500, 1000), (0, 0), (384, 768))),       # same aspect: nothing offset
    ((500, 1000), (512, 512), False, ((1000, 500), (0, 128), (512, 512))),     # narrower: fitted 256 wide
    ((300, 1000), (512, 512), False, ((1000, 300), (0, 179), (512, 512))),     # 153.6 wide: (512-153.6)//2
    ((300, 1000), (512, 512), True, ((1000, 300), (0, 179), (512, 512))),      # mirrored: 512 - 332.6
    ((1000, 300), (512, 384), True, ((300, 1000), (115, 0), (384, 512))),      # wider: fitted 153.6 high
])
def test_sdxl_size_conditioning_is_kohyas(original, bucket, flipped, expected):
    """kohya's get_crop_ltrb: the offset of the image fitted inside the bucket (Stability AI's convention), the
    left side mirrored for a flipped sample; sizes as (h, w)."""
    from trainer.conditioning import sdxl_size_condition

    condition = sdxl_size_condition(original, bucket, flipped)
    assert (condition.original_hw, condition.crop_top_left, condition.target_hw) == expected


def test_max_norm_regularization_is_kohyas_scale_weight_norms():
    """kohya's apply_max_norm_regularization: norm of up @ down * alpha / rank, clamped below at c / 2; above c,
    up and down are each scaled by sqrt(c / norm)."""
    torch.manual_seed(0)
    targets = {"lora_unet_a": nn.Linear(16, 16), "lora_unet_b": nn.Conv2d(4, 8, 3), "lora_unet_c": nn.Conv2d(4, 8, 1)}
    network = LoRANetwork(targets, NetworkConfig("LoCon", rank=4, alpha=2, conv_rank=2))
    with torch.no_grad():
        network.lora_modules["lora_unet_a"].up.weight.normal_(std=2.0)      # far above the limit
        network.lora_modules["lora_unet_b"].up.weight.normal_(std=1e-3)     # far below: untouched
        network.lora_modules["lora_unet_c"].up.weight.normal_(std=0.5)
    before = {name: (m.up.weight.clone(), m.down.weight.clone(), m.delta_weight().detach().norm())
              for name, m in network.lora_modules.items()}
    scaled, mean_norm, max_norm = network.apply_max_norm(1.0)
    norms = []
    for name, module in network.lora_modules.items():
        up, down, norm = before[name]
        ratio = min(max(float(norm), 0.5), 1.0) / max(float(norm), 0.5)
        torch.testing.assert_close(module.up.weight, up * ratio ** 0.5)
        torch.testing.assert_close(module.down.weight, down * ratio ** 0.5)
        norms.append(float(norm) * ratio)
    assert scaled == sum(float(before[n][2]) > 1.0 for n in before) >= 1
    assert max_norm == pytest.approx(max(norms)) and max_norm <= 1.0 + 1e-6
    assert mean_norm == pytest.approx(sum(norms) / 3)
    with pytest.raises(ConfigError, match="scale_weight_norms"):
        from trainer.loop import train_lora
        from trainer.plan import TrainSettings as Settings

        train_lora(None, None, NetworkConfig("LoHa"), OptimizerConfig(), Settings(scale_weight_norms=1.0))
