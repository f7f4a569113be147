"""The command line and the nodes are one trainer: every node input has its TOML key (same name, default and
choices), and a TOML run gives the same weights as the node graph with the same settings (fp32, CPU, one seed),
the TOML side loading its "checkpoint" through the command line's ComfyUI path."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

from tests.helpers import make_kohya_folder

# node -> the TOML sections its widgets are in
NODE_SECTIONS = {"LoRALoadDatasetFolder": ("dataset",), "LoRABucketCacheLatents": ("buckets",),
                 "LoRAConfigure": ("network",), "LoRAOptimizer": ("optimizer",),
                 "LoRATrain": ("training", "objective", "flow", "validation", "previews"),
                 "LoRASaveSafetensors": ("save",)}
# node input -> its TOML key, where the names differ (and why)
RENAMED = {"train_seed": "seed"}                 # the node avoids "seed" (the frontend's randomize-after-generate)
NOT_KEYS = {"resume_from"}                       # the `resume` command
NUMBER_DEFAULT, SWITCH_DEFAULT, FRESH = -1.0, "default", "(none)"


def node_classes(pack):
    from comfyui_lora_trainer.nodes.bucket_cache import LoRABucketCacheLatents
    from comfyui_lora_trainer.nodes.configure_lora import LoRAConfigure
    from comfyui_lora_trainer.nodes.load_dataset import LoRALoadDatasetFolder
    from comfyui_lora_trainer.nodes.optimizer import LoRAOptimizer
    from comfyui_lora_trainer.nodes.save_safetensors import LoRASaveSafetensors
    from comfyui_lora_trainer.nodes.train import LoRATrain

    return [LoRALoadDatasetFolder, LoRABucketCacheLatents, LoRAConfigure, LoRAOptimizer, LoRATrain,
            LoRASaveSafetensors]


def cli_default(node_input):
    """The node's default as the TOML states it: -1 / default are "left out", combos of numbers are numbers."""
    default = node_input.default
    if default in (NUMBER_DEFAULT, SWITCH_DEFAULT) and node_input.id not in ("lokr_factor", "validation_seed"):
        return None
    if node_input.id == "max_token_length":
        return int(default)
    return "" if default == FRESH else default


def test_every_node_input_has_its_key_with_the_nodes_default_and_choices(pack):
    from comfyui_lora_trainer.trainer.cli.options import KEYS_BY_SECTION

    checked = 0
    for node in node_classes(pack):
        schema = node.define_schema()
        keys = {name: key for section in NODE_SECTIONS[schema.node_id]
                for name, key in KEYS_BY_SECTION[section].items()}
        for node_input in schema.inputs:
            if not hasattr(node_input, "default") or node_input.id in NOT_KEYS:       # wires carry no setting
                continue
            name = RENAMED.get(node_input.id, node_input.id)
            assert name in keys, f"{schema.node_id}.{node_input.id} has no TOML key"
            key = keys[name]
            if node_input.id == "folder":
                assert key.default == "", "the TOML's folder is required: no ComfyUI input folder to be relative to"
            elif node_input.id == "resolution":
                assert key.default == node_input.default
            else:
                assert key.default == cli_default(node_input), f"{schema.node_id}.{node_input.id}"
            options = getattr(node_input, "options", None)
            if key.kind == "bool" and options:       # the node's default / true / false switch: left out, or a bool
                assert options == [SWITCH_DEFAULT, "true", "false"] and key.default is None
            elif options and node_input.id not in ("continue_from", "sample_sampler", "sample_scheduler"):
                assert tuple(str(c) for c in key.choices) == tuple(options), f"{schema.node_id}.{node_input.id}"
            checked += 1
    assert checked > 100


SETTINGS = {
    "dataset": dict(shuffle_caption=True, keep_tokens=1, flip_aug=True, caption_tag_dropout_rate=0.1),
    "buckets": dict(resolution=64, min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=64, vae_batch_size=2),
    "network": dict(algorithm="LoCon", rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0, train="both"),
    "optimizer": dict(optimizer_type="AdamW", learning_rate=1e-3, weight_decay=0.05, beta2=0.99,
                      lr_scheduler="cosine_with_restarts", lr_scheduler_num_cycles=2, lr_warmup=0.2,
                      text_encoder_lr=5e-4),
    "training": dict(output_name="same", epochs=2, batch_size=2, seed=7, precision="fp32"),
    "objective": dict(min_snr_gamma=5.0, noise_offset=0.05),
}


def toml_of(settings: dict, folder: str, checkpoint: str, output: str) -> str:
    from comfyui_lora_trainer.trainer.cli.options import toml_value

    lines = [f"[model]\npath = {toml_value(checkpoint)}\ndevice = \"cpu\"",
             f"[output]\nloras_folder = {toml_value(output + '/loras')}\nruns_folder = {toml_value(output + '/runs')}",
             "[save]\nprecision = \"fp32\""]
    for section, values in settings.items():
        lines.append(f"[{section}]" + "".join(f"\n{key} = {toml_value(value)}" for key, value in values.items())
                     + (f"\nfolder = {toml_value(folder)}" if section == "dataset" else ""))
    return "\n\n".join(lines) + "\n"


def test_a_toml_run_gives_the_same_weights_as_the_node_graph(pack, tiny, comfy_folders, tmp_path, monkeypatch):
    import safetensors.torch

    from comfyui_lora_trainer.nodes.bucket_cache import LoRABucketCacheLatents
    from comfyui_lora_trainer.nodes.configure_lora import LoRAConfigure
    from comfyui_lora_trainer.nodes.load_dataset import LoRALoadDatasetFolder
    from comfyui_lora_trainer.nodes.optimizer import LoRAOptimizer
    from comfyui_lora_trainer.nodes.train import LoRATrain
    from comfyui_lora_trainer.trainer.cli import comfy_backend
    from comfyui_lora_trainer.trainer.cli.main import main

    folder = make_kohya_folder(str(tmp_path / "data"), {"3_sks dog": [(64, 64), (64, 64), (128, 64)]},
                               {"3_sks dog/0": "a photo of sks dog, grass, sun", "3_sks dog/2": "sks dog, beach"})

    def models():
        with torch.inference_mode():                      # as ComfyUI's executor runs loaders
            return tiny.sd15_model(seed=31), tiny.sd1_clip(seed=32), tiny.vae(seed=33)

    # the node graph, as the executor calls it
    for node in (LoRABucketCacheLatents, LoRATrain):
        monkeypatch.setattr(node, "hidden", SimpleNamespace(unique_id="1", prompt=None, extra_pnginfo=None),
                            raising=False)
    model, clip, vae = models()
    with torch.inference_mode():
        dataset = LoRALoadDatasetFolder.execute(folder=folder, caption_extension=".txt",
                                                **SETTINGS["dataset"]).result[0]
        buckets = SETTINGS["buckets"]
        latents = LoRABucketCacheLatents.execute(dataset, vae, buckets["resolution"], buckets["min_bucket_reso"],
                                                 buckets["max_bucket_reso"], buckets["bucket_reso_steps"], False,
                                                 buckets["vae_batch_size"], "memory").result[0]
        network = LoRAConfigure.execute(**SETTINGS["network"]).result[0]
        optimizer_values = {"weight_decay": -1.0, "beta1": -1.0, "beta2": -1.0, "lr_scheduler": "cosine",
                            "lr_warmup": 0.1, "max_grad_norm": 1.0, **SETTINGS["optimizer"]}
        optimizer = LoRAOptimizer.execute(**optimizer_values).result[0]
        training = SETTINGS["training"]
        outputs = LoRATrain.execute(model, clip, latents, network, optimizer, training["output_name"],
                                    training["epochs"], 0, training["batch_size"], training["seed"],
                                    training["precision"], 0, **SETTINGS["objective"]).result
    from_nodes = outputs[2].tensors

    # the TOML, its checkpoint loaded by the command line's ComfyUI path (the tiny models have no file)
    checkpoint = tmp_path / "tiny.safetensors"
    checkpoint.write_bytes(b"")
    monkeypatch.setattr(comfy_backend, "load_checkpoint", lambda path: models())
    config = tmp_path / "run.toml"
    config.write_text(toml_of(SETTINGS, folder, str(checkpoint), str(tmp_path / "cli")), encoding="utf-8")
    assert main(["train", str(config)]) == 0
    from_toml = safetensors.torch.load_file(str(tmp_path / "cli" / "loras" / "same.safetensors"))

    assert set(from_toml) == set(from_nodes) and len(from_nodes) > 100
    assert {key.split("_")[1] for key in from_nodes} == {"te", "unet"}
    assert any(value.abs().max() > 0 for key, value in from_nodes.items() if key.endswith("lora_up.weight"))
    differing = [key for key in from_nodes if not torch.equal(from_nodes[key].float(), from_toml[key])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def test_inspect_checks_a_file_against_comfyuis_key_map(pack, comfy_folders, tmp_path, capsys):
    from comfyui_lora_trainer.trainer.cli.main import main

    assert main(["demo", "--output", str(tmp_path / "demo")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "demo" / "demo_lora.safetensors")]) == 0
    shown = capsys.readouterr().out
    assert "ComfyUI LoraLoader (SD1.x key map): takes 48 of 48 modules (all)" in shown


def test_the_command_line_finds_this_comfyui(pack):
    from comfyui_lora_trainer.trainer.cli.comfy_backend import comfyui_checkout, inside_pack

    assert inside_pack() and os.path.isfile(os.path.join(comfyui_checkout(), "comfy", "model_patcher.py"))
