"""Our LoRA / LoCon files through kohya sd-scripts' own loader (networks/lora.py), as a dev-only oracle.

Skipped, with the reason, where there is no sd-scripts checkout ($SD_SCRIPTS_PATH, default ~/sd-scripts; CI
has none): see tests/oracles/kohya_sd_scripts.py. The module-name tests against the committed reference files
(tests/reference) never need sd-scripts.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.engine.conftest import HashedWordEncoder, tiny_unet
from tests.oracles import kohya_sd_scripts as kohya
from tests.reference_data import kohya_modules
from trainer.diffusers_adapter import FunctionCaptionEncoder, diffusers_sd1_trainable
from trainer.networks import LoRANetwork, NetworkConfig

ALGORITHMS = ["LoRA", "LoCon"]


@pytest.fixture
def oracle():
    reason = kohya.missing_reason()
    if reason:
        pytest.skip(reason)
    return kohya


def config_for(algorithm: str) -> NetworkConfig:
    return NetworkConfig(algorithm=algorithm, rank=4, alpha=2, conv_rank=2, conv_alpha=1)


def randomize_up_weights(network: LoRANetwork, seed: int = 1) -> None:
    """The up weights start at zero (no update); random ones make every module count."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.lora_modules.values():
            module.up.weight.copy_(torch.randn(module.up.weight.shape, generator=generator) * 0.1)


def save(network: LoRANetwork, path) -> dict[str, torch.Tensor]:
    tensors = network.kohya_state_dict()
    save_file(tensors, str(path))
    return tensors


def assert_kohya_trains_the_same_modules(tensors, expected: dict[str, tuple[int, float]]) -> None:
    """The file has exactly the modules kohya's own training network has, with its ranks and alphas."""
    in_file = {key.split(".")[0] for key in tensors}
    assert sorted(in_file) == sorted(expected)
    for name, (rank, alpha) in expected.items():
        assert tensors[f"{name}.lora_down.weight"].shape[0] == rank, name
        assert float(tensors[f"{name}.alpha"]) == alpha, name


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_kohyas_loader_takes_our_sd15_file_whole_and_gives_our_unet_output(oracle, algorithm, tmp_path):
    unet = tiny_unet()
    kohya_unet = copy.deepcopy(unet)                   # the same weights, for kohya's loader to patch
    model = diffusers_sd1_trainable(unet, FunctionCaptionEncoder(HashedWordEncoder()))
    config = config_for(algorithm)
    targets = model.targets_for(config.uses_convolutions)
    network = LoRANetwork(targets, config)
    randomize_up_weights(network)
    tensors = save(network, tmp_path / "ours.safetensors")

    conv = config.uses_convolutions
    assert_kohya_trains_the_same_modules(tensors, oracle.kohya_training_modules(
        kohya_unet, lora_dim=4, alpha=2, conv_dim=2 if conv else None, conv_alpha=1 if conv else None))
    loaded = oracle.load_and_apply(str(tmp_path / "ours.safetensors"), kohya_unet)
    assert loaded.unused_keys == [] and loaded.missing_keys == []
    assert sorted(loaded.module_names) == sorted(network.lora_modules)

    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    timesteps = torch.tensor([10, 700])
    with torch.no_grad():
        base = unet(sample, timesteps, encoder_hidden_states=context).sample
        with network.attached(targets):
            ours = unet(sample, timesteps, encoder_hidden_states=context).sample
        theirs = kohya_unet(sample, timesteps, encoder_hidden_states=context).sample
    assert (ours - base).abs().max() > 1e-3            # the update is really there
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def layer_from_row(layer_type: str, shape: tuple) -> nn.Module:
    """A plain layer on the meta device (no memory) shaped like a reference row."""
    with torch.device("meta"):
        if layer_type == "Linear":
            return nn.Linear(*shape)
        fan_in, fan_out, kernel = shape
        return nn.Conv2d(fan_in, fan_out, kernel)


def sdxl_network_file(algorithm: str, path: str) -> tuple[LoRANetwork, dict]:
    """Our network on plain meta-device layers shaped as kohya's SDXL reference rows, saved to `path`."""
    rows = kohya_modules("sdxl", with_conv=config_for(algorithm).uses_convolutions)
    network = LoRANetwork({name: layer_from_row(*row) for name, row in rows.items()}, config_for(algorithm))
    randomize_up_weights(network)                      # its own modules are small and on the CPU
    save(network, path)
    return network, rows


def assert_kohya_merges_our_deltas(oracle, path: str, network: LoRANetwork, names) -> None:
    compared = set()
    for name, delta in oracle.merged_deltas(path, oracle.sdxl_unet_on_meta(), only=names):
        with torch.no_grad():
            ours = network.lora_modules[name].delta_weight()
        assert delta.shape == ours.shape, name
        difference = float((delta - ours).abs().max())
        assert difference <= 1e-5, f"{name}: kohya's merged delta differs from ours by {difference}"
        compared.add(name)
    assert compared == set(names)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_kohyas_sdxl_unet_takes_our_sdxl_file_whole_with_our_delta_weights(oracle, algorithm, tmp_path):
    """kohya's own full-size SdxlUNet2DConditionModel on the meta device takes every key of the file, with the
    ranks its training would use; the weight kohya's merge adds equals our module's delta_weight, checked here
    on one module per distinct layer shape (all modules: the slow test below)."""
    path = str(tmp_path / "ours.safetensors")
    network, rows = sdxl_network_file(algorithm, path)
    conv = config_for(algorithm).uses_convolutions
    assert_kohya_trains_the_same_modules(network.kohya_state_dict(), oracle.kohya_training_modules(
        oracle.sdxl_unet_on_meta(), lora_dim=4, alpha=2, conv_dim=2 if conv else None,
        conv_alpha=1 if conv else None))
    loaded = oracle.load_and_apply(path, oracle.sdxl_unet_on_meta())
    assert loaded.unused_keys == [] and loaded.missing_keys == []
    assert sorted(loaded.module_names) == sorted(rows)
    one_per_shape = {}
    for name, row in rows.items():
        one_per_shape.setdefault(row, name)
    assert_kohya_merges_our_deltas(oracle, path, network, set(one_per_shape.values()))


@pytest.mark.slow
def test_kohyas_merge_of_every_sdxl_locon_module_equals_our_delta_weight(oracle, tmp_path):
    """All 788 modules (LoCon's file has LoRA's 722 too), one full-size delta at a time (~35 s)."""
    path = str(tmp_path / "ours.safetensors")
    network, rows = sdxl_network_file("LoCon", path)
    assert_kohya_merges_our_deltas(oracle, path, network, set(rows))


def test_the_oracle_reports_what_kohya_does_not_take(oracle, tmp_path):
    """A renamed module and a missing alpha are reported, so a clean report above means something."""
    unet = tiny_unet()
    targets = diffusers_sd1_trainable(unet, FunctionCaptionEncoder(HashedWordEncoder())).targets_for(False)
    network = LoRANetwork(targets, config_for("LoRA"))
    tensors = network.kohya_state_dict()
    first, second = list(network.lora_modules)[:2]
    for suffix in ("lora_down.weight", "lora_up.weight", "alpha"):
        tensors[f"lora_unet_not_a_layer.{suffix}"] = tensors.pop(f"{first}.{suffix}")
    del tensors[f"{second}.alpha"]
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    loaded = oracle.load_and_apply(str(tmp_path / "bad.safetensors"), unet)
    assert loaded.unused_keys == [f"lora_unet_not_a_layer.{s}" for s in ("alpha", "lora_down.weight", "lora_up.weight")]
    assert loaded.missing_keys == [f"{second}.alpha"]


def test_kohya_names_text_encoder_modules_with_text_model_as_transformers_4_did(oracle, tmp_path):
    """transformers 5 dropped CLIPTextModel's `text_model` level; the oracle gives kohya the 4.x path, so the
    names are the reference ones (`lora_te_text_model_encoder_layers_...`) and the 5.x-style ones are refused."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=2, vocab_size=100, bos_token_id=0,
                                                eos_token_id=2))
    modules = oracle.kohya_training_modules(nn.Module(), [text_encoder], lora_dim=2, alpha=1)
    reference = list(kohya_modules("sd15_te"))
    assert list(modules) == reference[:12]             # layers 0 and 1, in kohya's order
    linears = {"lora_te_text_model_" + path.replace(".", "_"): layer for path, layer in text_encoder.named_modules()
               if isinstance(layer, nn.Linear)}
    tensors = {}
    for name in modules:
        layer = linears[name]
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, layer.in_features)
        tensors[f"{name}.lora_up.weight"] = torch.randn(layer.out_features, 2)
        tensors[f"{name}.alpha"] = torch.tensor(1.0)
    save_file(tensors, str(tmp_path / "te.safetensors"))
    assert oracle.load_and_apply(str(tmp_path / "te.safetensors"), nn.Module(), [text_encoder]).unused_keys == []
    save_file({key.replace("_text_model_", "_"): value for key, value in tensors.items()},
              str(tmp_path / "te5.safetensors"))
    loaded = oracle.load_and_apply(str(tmp_path / "te5.safetensors"), nn.Module(), [copy.deepcopy(text_encoder)])
    assert len(loaded.unused_keys) == len(tensors) and loaded.module_names == []


def test_the_committed_reference_files_have_kohyas_counts():
    """tests/reference, made by scripts/make_kohya_reference.py from kohya's code (no sd-scripts needed here)."""
    counts = {model: (len(kohya_modules(model)), len(kohya_modules(model, with_conv=True)))
              for model in ("sd15", "sd2", "sdxl", "sd15_te", "sd2_te", "sdxl_te")}
    assert counts == {"sd15": (192, 278), "sd2": (192, 278), "sdxl": (722, 788), "sd15_te": (72, 72),
                      "sd2_te": (138, 138), "sdxl_te": (264, 264)}
    assert all(layer_type == "Linear" for name, (layer_type, _) in kohya_modules("sd2").items()
               if name.endswith(("_proj_in", "_proj_out")))
    text_encoders = list(kohya_modules("sdxl_te"))
    assert [name.split("_text_model_encoder_layers_")[0] for name in text_encoders] == (
        ["lora_te1"] * 72 + ["lora_te2"] * 192)
    assert text_encoders[-1] == "lora_te2_text_model_encoder_layers_31_mlp_fc2"
    assert list(kohya_modules("sd2_te"))[-1] == "lora_te_text_model_encoder_layers_22_mlp_fc2"


# kohya keys a run of ours has no value for, and why
NOT_WRITTEN = {"ss_datasets": "kohya writes it instead of the per-folder keys for --dataset_config runs",
               "ss_vae_name": "only with a separate --vae", "ss_vae_hash": "only with a separate --vae",
               "ss_new_vae_hash": "only with a separate --vae"}


def test_our_metadata_has_every_key_kohya_writes_and_kohyas_own_hashes(oracle, tmp_path, tiny_trainable,
                                                                          tiny_vae_encoder):
    import hashlib
    import io

    import safetensors.torch

    from tests.engine.test_train_loop import small_cache
    from trainer.loop import train_lora
    from trainer.lora_file import new_session_id, with_save_hashes
    from trainer.metadata import training_metadata
    from trainer.optim import OptimizerConfig
    from trainer.plan import TrainSettings

    cache = small_cache(tmp_path, tiny_vae_encoder)
    network, optimizer = NetworkConfig(rank=2, train_on="unet"), OptimizerConfig(loraplus_lr_ratio=16)
    result = train_lora(tiny_trainable, cache, network, optimizer, TrainSettings(epochs=1))
    metadata = training_metadata(run_name="m", session_id=new_session_id(), cache=cache, network=network,
                                 optimizer=optimizer, settings=result.settings, plan=result.plan,
                                 progress=result.progress, base_model_version="sd_v1", prediction_type="epsilon",
                                 precision="fp32")
    missing = oracle.training_metadata_keys() - set(metadata) - set(NOT_WRITTEN)
    assert not missing, f"kohya writes these and we do not: {sorted(missing)}"
    assert all(isinstance(value, str) for value in metadata.values())

    hashes = oracle.kohya_functions("library/train_util.py", ("precalculate_safetensors_hashes",
                                                               "addnet_hash_legacy", "addnet_hash_safetensors"),
                                    {"hashlib": hashlib, "BytesIO": io.BytesIO, "safetensors": safetensors})
    generator = torch.Generator().manual_seed(0)
    big = {**result.tensors, "lora_unet_big.lora_down.weight": torch.randn(64, 8192, generator=generator)}
    ours = with_save_hashes(big, metadata)                 # over 1 MiB, so the legacy hash sees real bytes
    theirs = hashes["precalculate_safetensors_hashes"](big, {**metadata, "modelspec.title": "not hashed"})
    assert (ours["sshs_model_hash"], ours["sshs_legacy_hash"]) == theirs


@pytest.mark.parametrize("algorithm", ["LoRA", "DyLoRA"])
def test_kohyas_loader_takes_our_unet_and_text_encoder_file_and_gives_our_outputs(oracle, algorithm, tmp_path):
    """A file that trains both parts (DyLoRA's is a plain LoRA file too): kohya takes every key, and its UNet and
    text encoder compute what ours do."""
    from tests.engine.test_network_variants import TinyClipCaptions

    clip = TinyClipCaptions()
    unet = tiny_unet()
    kohya_unet, kohya_clip = copy.deepcopy(unet), copy.deepcopy(clip.model)
    model = diffusers_sd1_trainable(unet, FunctionCaptionEncoder(clip), text_encoder=clip.model)
    config = NetworkConfig(algorithm=algorithm, rank=4, alpha=2, train_on="both")
    targets = model.targets_for(False, True, True)
    network = LoRANetwork(targets, config).eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    save(network, tmp_path / "both.safetensors")
    loaded = oracle.load_and_apply(str(tmp_path / "both.safetensors"), kohya_unet, [kohya_clip])
    assert loaded.unused_keys == [] and loaded.missing_keys == []
    assert sorted(loaded.module_names) == sorted(network.lora_modules)

    ids = torch.randint(2, 1000, (1, 77), generator=generator)
    sample, timesteps = torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([300])
    with torch.no_grad():
        with network.attached(targets):
            ours_text = clip.model(ids).last_hidden_state
            ours = unet(sample, timesteps, encoder_hidden_states=ours_text).sample
        theirs_text = kohya_clip(ids).last_hidden_state
        theirs = kohya_unet(sample, timesteps, encoder_hidden_states=theirs_text).sample
        plain_text = clip.model(ids).last_hidden_state
    assert (ours_text - plain_text).abs().max() > 1e-3
    torch.testing.assert_close(theirs_text, ours_text, rtol=0, atol=1e-5)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
