import math
import os

import pytest
import safetensors.torch
import torch
from torch import nn

from trainer.errors import ConfigError, SaveError
from trainer.lora_file import TrainedLora, checked_file_name, read_metadata, save_lora, unused_path
from trainer.networks import LoRAModule, LoRANetwork, NetworkConfig
from trainer.optim import OptimizerConfig, build_optimizer, lr_multiplier


def test_lora_module_math_matches_kohya():
    torch.manual_seed(0)
    linear = nn.Linear(16, 24)
    network = LoRANetwork({"lora_unet_l": linear}, NetworkConfig(rank=4, alpha=1.0))
    module = network.lora_modules["lora_unet_l"]
    assert module.scale == 0.25 and torch.count_nonzero(module.up.weight) == 0
    assert module.down.weight.abs().max() <= 1 / math.sqrt(16)      # kaiming_uniform(a=sqrt(5)) bound
    nn.init.normal_(module.up.weight)
    x = torch.randn(3, 16)
    expected = linear(x) + (x @ module.down.weight.T @ module.up.weight.T) * 0.25
    with network.attached({"lora_unet_l": linear}):
        assert torch.allclose(linear(x), expected, atol=1e-6)
    assert torch.allclose(linear(x) + x @ module.delta_weight().T, expected, atol=1e-6)


def test_conv_lora_keeps_kernel_on_down_and_1x1_up():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    module = LoRAModule(conv, rank=2, alpha=2)
    assert module.down.weight.shape == (2, 8, 3, 3) and module.up.weight.shape == (16, 2, 1, 1)
    nn.init.normal_(module.up.weight)
    x = torch.randn(1, 8, 5, 5)
    merged = nn.functional.conv2d(x, module.delta_weight(), padding=1)
    assert torch.allclose(module(x), merged, atol=1e-5)


def test_alpha_zero_means_rank_and_state_dict_has_alpha():
    config = NetworkConfig(rank=8, alpha=0)
    assert config.effective_alpha == 8 and config.scale == 1
    network = LoRANetwork({"lora_unet_a": nn.Linear(4, 4)}, config)
    tensors = network.kohya_state_dict(torch.float16)
    assert set(tensors) == {"lora_unet_a.lora_down.weight", "lora_unet_a.lora_up.weight", "lora_unet_a.alpha"}
    assert tensors["lora_unet_a.alpha"].dim() == 0 and tensors["lora_unet_a.alpha"].dtype == torch.float16
    with pytest.raises(ConfigError, match="choose one of LoRA, LoCon, LoHa, LoKr, DyLoRA"):
        NetworkConfig(algorithm="OFT").validated()


def test_locon_gives_3x3_convolutions_their_own_rank_and_records_kohyas_network_args():
    config = NetworkConfig("LoCon", rank=8, alpha=4, conv_rank=2, conv_alpha=1).validated()
    assert config.rank_and_alpha_for(nn.Conv2d(4, 4, 3)) == (2, 1.0)
    assert config.rank_and_alpha_for(nn.Conv2d(4, 4, 1)) == (8, 4.0)       # 1x1 and Linear: network_dim
    assert config.rank_and_alpha_for(nn.Linear(4, 4)) == (8, 4.0)
    assert NetworkConfig(rank=8).rank_and_alpha_for(nn.Conv2d(4, 4, 3)) == (8, 1.0)   # LoRA: no conv rank
    assert config.network_args() == {"conv_dim": "2", "conv_alpha": "1.0"} and NetworkConfig().network_args() == {}
    assert "conv rank 2, conv alpha 1" in config.describe()


def test_alpha_above_rank_is_allowed_with_a_visible_warning():
    config = NetworkConfig(rank=4, alpha=16).validated()
    assert config.scale == 4 and "greater than rank 4" in config.warnings()[0]
    assert "warning: alpha 16 is greater than rank 4" in config.describe()
    assert NetworkConfig(rank=16, alpha=8).warnings() == []


def test_hooks_leave_when_the_block_ends():
    linear = nn.Linear(4, 4)
    network = LoRANetwork({"lora_unet_a": linear}, NetworkConfig(rank=2))
    with network.attached({"lora_unet_a": linear}):
        assert len(linear._forward_hooks) == 1
    assert not linear._forward_hooks


@pytest.mark.parametrize("scheduler, step, expected", [
    ("constant", 0, 1.0), ("constant_with_warmup", 0, 0.0), ("constant_with_warmup", 5, 0.5),
    ("constant_with_warmup", 50, 1.0), ("cosine", 10, 1.0), ("cosine", 55, 0.5), ("cosine", 100, 0.0),
])
def test_schedules_follow_transformers_formulas(scheduler, step, expected):
    assert lr_multiplier(scheduler, step, warmup_steps=10, total_steps=100) == pytest.approx(expected, abs=1e-9)


def test_warmup_is_a_share_of_steps_and_constant_with_warmup_is_upgraded():
    config = OptimizerConfig(scheduler="constant", warmup_ratio=0.1).validated()
    assert config.warmup_steps(95) == 9 and config.effective_scheduler() == "constant_with_warmup"
    param = nn.Parameter(torch.zeros(1))
    optimizer, scheduler = build_optimizer(config, [param], total_steps=95)
    assert optimizer.param_groups[0]["lr"] == 0.0           # first warmup step
    with pytest.raises(ConfigError, match="share"):
        OptimizerConfig(warmup_ratio=1.5).validated()


def make_lora(run_name="run"):
    tensors = {"lora_unet_x.lora_down.weight": torch.randn(2, 4), "lora_unet_x.lora_up.weight": torch.randn(4, 2),
               "lora_unet_x.alpha": torch.tensor(1.0)}
    return TrainedLora(run_name, tensors, {"ss_network_module": "networks.lora", "modelspec.title": run_name}, 5, 1)


def test_save_is_atomic_numbered_and_hashed(tmp_path):
    first = save_lora(make_lora(), str(tmp_path), "my_lora", "fp16")
    second = save_lora(make_lora(), str(tmp_path), "my_lora.safetensors", "bf16")
    assert first.endswith("my_lora.safetensors") and second.endswith("my_lora_2.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_lora.safetensors", "my_lora_2.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(first).st_mode & 0o777 == 0o666 & ~umask      # not mkstemp's private 0600
    metadata = read_metadata(first)
    assert len(metadata["sshs_model_hash"]) == 64 and len(metadata["sshs_legacy_hash"]) == 8
    loaded = safetensors.torch.load_file(first)
    assert loaded["lora_unet_x.lora_down.weight"].dtype == torch.float16
    # the model hash covers tensor bytes only: the same tensors with other metadata hash the same
    lora = make_lora()
    a = save_lora(lora, str(tmp_path), "a", "fp32")
    b = save_lora(TrainedLora("other", lora.tensors, {"ss_output_name": "x"}, 1, 1), str(tmp_path), "b", "fp32")
    assert read_metadata(a)["sshs_model_hash"] == read_metadata(b)["sshs_model_hash"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial")]


def test_names_cannot_leave_the_loras_folder(tmp_path):
    assert checked_file_name(" chars/my_lora.safetensors ") == "chars/my_lora"
    for bad in ("../evil", "/etc/passwd", "a/../../b", "C:\\x", ""):
        with pytest.raises(SaveError):
            unused_path(str(tmp_path), bad)
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(SaveError, match="outside"):
        unused_path(str(tmp_path), "link/x")


def test_two_layers_with_one_kohya_name_are_an_error_not_an_overwrite():
    from trainer.errors import ModelError
    from trainer.kohya_names import block_targets

    class Transformer2DModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.a_b, self.a = nn.Linear(2, 2), nn.Module()
            self.a.b = nn.Linear(2, 2)                        # "a.b" and "a_b" both become ..._a_b

    root = nn.Module()
    root.block = Transformer2DModel()
    with pytest.raises(ModelError, match="both be saved as lora_unet_block_a_b"):
        block_targets(root, ("Transformer2DModel",))


def test_dropouts_follow_kohyas_math_and_the_given_generator():
    torch.manual_seed(0)
    linear = nn.Linear(16, 16)
    config = NetworkConfig(rank=8, alpha=8, rank_dropout=0.5).validated()
    network = LoRANetwork({"lora_unet_l": linear}, config)
    module = network.lora_modules["lora_unet_l"]
    nn.init.normal_(module.up.weight)
    x = torch.randn(4, 3, 16)                                       # (batch, tokens, features)
    network.dropouts.generator = torch.Generator().manual_seed(1)
    out = module(x)
    network.dropouts.generator = torch.Generator().manual_seed(1)
    keep = (torch.rand((4, 8), generator=network.dropouts.generator) >= 0.5).unsqueeze(1)
    expected = module.up(module.down(x) * keep) * (1.0 / 0.5)         # kohya: scale / (1 - p)
    assert torch.allclose(out, expected, atol=1e-6)
    network.eval()                                                 # never outside training
    assert torch.allclose(module(x), module.up(module.down(x)), atol=1e-6)

    skipping = LoRANetwork({"lora_unet_l": linear}, NetworkConfig(rank=2, module_dropout=0.5))
    skipping.dropouts.generator = torch.Generator().manual_seed(2)
    nn.init.normal_(skipping.lora_modules["lora_unet_l"].up.weight)
    with skipping.attached({"lora_unet_l": linear}):
        skipped = [torch.equal(linear(x), linear.forward.__func__(linear, x)) for _ in range(200)]
    assert 70 < sum(skipped) < 130                                  # about half the calls leave the layer alone
    with pytest.raises(ConfigError, match="rank_dropout is 1.0"):
        NetworkConfig(rank_dropout=1.0).validated()
    assert NetworkConfig(rank_dropout=0.1, module_dropout=0.2).network_args() == {
        "rank_dropout": "0.1", "module_dropout": "0.2"}


def continue_case(tmp_path, saved_config, targets, conv_names=frozenset()):
    network = LoRANetwork(targets, saved_config)
    for module in network.lora_modules.values():
        nn.init.normal_(module.up.weight)
    path = save_lora(TrainedLora("c", network.kohya_state_dict(), {}, 1, 1), str(tmp_path), "c", "fp32")
    return network, path


def test_continue_from_a_file_loads_its_weights_or_says_what_does_not_fit(tmp_path):
    from trainer.networks.continue_from import continue_from_file

    layers = {"lora_unet_a": nn.Linear(8, 8), "lora_unet_b": nn.Linear(8, 8)}
    conv = {"lora_unet_c": nn.Conv2d(4, 4, 3, padding=1)}
    saved, path = continue_case(tmp_path, NetworkConfig(rank=4, alpha=2), layers)
    fresh = LoRANetwork(layers, NetworkConfig(rank=4, alpha=2, continue_from=path))
    continue_from_file(fresh, path, set(conv))
    assert all(torch.equal(fresh.kohya_state_dict()[k], saved.kohya_state_dict()[k]) for k in saved.kohya_state_dict())

    cases = [
        (LoRANetwork(layers, NetworkConfig(rank=8, alpha=2)), "has rank 4 at lora_unet_a, this network 8; set"),
        (LoRANetwork(layers, NetworkConfig(rank=4, alpha=4)), "has alpha 2 at lora_unet_a, this network 4"),
        (LoRANetwork({**layers, **conv}, NetworkConfig("LoCon", rank=4, alpha=2)), "is a plain LoRA file"),
        (LoRANetwork({"lora_unet_other": nn.Linear(8, 8)}, NetworkConfig(rank=4, alpha=2)), "another model"),
    ]
    for network, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            continue_from_file(network, path, set(conv))
    _, locon_path = continue_case(tmp_path / "locon", NetworkConfig("LoCon", rank=4, alpha=2), {**layers, **conv})
    with pytest.raises(ConfigError, match="is a LoCon file"):
        continue_from_file(LoRANetwork(layers, NetworkConfig(rank=4, alpha=2)), locon_path, set(conv))
    loha = tmp_path / "loha.safetensors"
    safetensors.torch.save_file({"lora_unet_a.hada_w1_a": torch.zeros(2, 2)}, str(loha))
    with pytest.raises(ConfigError, match="is a LoHa file and this network is LoRA; set Configure LoRA's algorithm to "
                                          "LoHa"):
        continue_from_file(LoRANetwork(layers, NetworkConfig(rank=4, alpha=2)), str(loha), set())
    with pytest.raises(ConfigError, match="does not exist"):
        continue_from_file(fresh, str(tmp_path / "nowhere.safetensors"), set())


def test_checkpoint_hashes_are_kohyas_and_the_file_names_its_implementation(tmp_path):
    import hashlib

    import trainer
    from trainer.lora_file import checkpoint_hashes, model_spec

    data = os.urandom(0x180000)
    path = tmp_path / "base.safetensors"
    path.write_bytes(data)
    hashes = checkpoint_hashes(str(path))
    assert hashes == {"ss_sd_model_name": "base.safetensors",
                      "ss_sd_model_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8],
                      "ss_new_sd_model_hash": hashlib.sha256(data).hexdigest()}
    import datetime
    spec = model_spec("sd_v1", "t", (512, 512), "epsilon", datetime.datetime(2026, 12, 1))
    assert spec["modelspec.implementation_version"] == f"comfyui-lora-trainer/{trainer.__version__}"



def test_loha_math_init_and_keys_are_lycoris():
    from trainer.networks import LoHaModule

    torch.manual_seed(0)
    linear, conv = nn.Linear(12, 10), nn.Conv2d(4, 6, 3, padding=1, stride=2)
    network = LoRANetwork({"lora_unet_l": linear, "lora_unet_c": conv}, NetworkConfig("LoHa", rank=4, alpha=2))
    loha = network.lora_modules["lora_unet_l"]
    assert isinstance(loha, LoHaModule) and torch.count_nonzero(loha.delta_weight()) == 0   # starts at the model
    for module in network.lora_modules.values():
        nn.init.normal_(module.hada_w2_a)
    x = torch.randn(2, 12)
    expected = ((loha.hada_w1_a @ loha.hada_w1_b) * (loha.hada_w2_a @ loha.hada_w2_b)) * 0.5
    with network.attached({"lora_unet_l": linear, "lora_unet_c": conv}):
        assert torch.allclose(linear(x), nn.functional.linear(x, linear.weight + expected, linear.bias), atol=1e-5)
        image = torch.randn(1, 4, 9, 9)
        merged = conv.weight + network.lora_modules["lora_unet_c"].delta_weight()
        assert torch.allclose(conv(image), nn.functional.conv2d(image, merged, conv.bias, 2, 1), atol=1e-5)
    tensors = network.kohya_state_dict()
    assert set(tensors) == {f"lora_unet_{n}.{k}" for n in "lc" for k in
                            ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha")}
    assert tensors["lora_unet_c.hada_w1_b"].shape == (4, 4 * 3 * 3)
    config = NetworkConfig("LoHa", rank=4, alpha=2)
    assert config.network_args() == {"algo": "loha"}
    with pytest.raises(ConfigError, match="LoHa takes module_dropout here"):
        NetworkConfig("LoHa", rank_dropout=0.1).validated()
