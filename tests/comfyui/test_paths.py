"""Every node input that becomes a path, in real ComfyUI: resolved, checked against ComfyUI's folders, and refused
with an actionable message (what, where, how to fix) before anything is read or written."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import make_kohya_folder


def load_folder(folder, caption_extension=".txt", **inputs):
    from comfyui_lora_trainer.nodes.load_dataset import LoRALoadDatasetFolder

    return LoRALoadDatasetFolder.execute(folder=folder, caption_extension=caption_extension, **inputs).result[0]


@pytest.fixture
def outside(comfy_folders, tmp_path):
    """A good dataset beside ComfyUI's input folder (not in it)."""
    return make_kohya_folder(str(tmp_path / "outside"), {"1_a": [(64, 64)]})


def test_a_relative_dataset_folder_cannot_climb_out_of_the_input_folder(pack, comfy_folders, outside):
    from comfyui_lora_trainer.trainer.errors import DatasetError

    for climbing in ("../outside", "../../etc", "sub/../../outside"):
        with pytest.raises(DatasetError, match="climbs out of ComfyUI's input folder") as error:
            load_folder(climbing)
        assert comfy_folders["input"] in str(error.value) and "absolute path" in str(error.value)
    with pytest.raises(DatasetError, match="climbs out"):
        load_folder("lora_dataset", regularization_folder="../outside")
    # the same folder by its absolute path is any folder the user names (DESIGN.md)
    assert load_folder(outside).root == outside


def test_a_dataset_folder_that_cannot_be_used_names_the_resolved_path_and_the_input_folder(pack, comfy_folders):
    from comfyui_lora_trainer.nodes.load_dataset import LoRALoadDatasetFolder
    from comfyui_lora_trainer.trainer.errors import DatasetError

    open(os.path.join(comfy_folders["input"], "a file"), "w").close()
    for typed, message in [("missing", "does not exist"), ("a file", "is a file, not a folder"),
                           ("x\x00y", "NUL character"), ("y" * 300, "255 bytes"), ("  ", "No dataset folder given")]:
        with pytest.raises(DatasetError, match=message) as error:
            load_folder(typed)
        if typed in ("missing", "a file"):
            assert os.path.join(comfy_folders["input"], typed) in str(error.value)
            assert f"ComfyUI's input folder, {comfy_folders['input']}" in str(error.value)
        # ComfyUI asks for the fingerprint before running: it must not raise, so execute shows the message
        assert math.isnan(LoRALoadDatasetFolder.fingerprint_inputs(folder=typed, caption_extension=".txt"))


def test_a_linked_dataset_in_the_input_folder_is_read_where_it_points(pack, comfy_folders, outside):
    from comfyui_lora_trainer.nodes.load_dataset import LoRALoadDatasetFolder

    os.symlink(outside, os.path.join(comfy_folders["input"], "linked"))
    os.symlink(os.path.join(outside, "1_a"), os.path.join(outside, "2_linked subset"))
    dataset = load_folder("linked")
    assert dataset.root == outside and {s.name for s in dataset.subsets} == {"1_a", "2_linked subset"}
    before = LoRALoadDatasetFolder.fingerprint_inputs(folder="linked", caption_extension=".txt")
    with open(os.path.join(outside, "1_a", "0.txt"), "w", encoding="utf-8") as handle:
        handle.write("a new caption\n")                 # an edit inside the linked sub-folder re-runs the node
    assert LoRALoadDatasetFolder.fingerprint_inputs(folder="linked", caption_extension=".txt") != before


def test_a_caption_extension_is_a_suffix_not_a_path(pack, comfy_folders):
    from comfyui_lora_trainer.trainer.errors import DatasetError

    make_kohya_folder(os.path.join(comfy_folders["input"], "set"), {"1_a": [(64, 64)]})
    os.makedirs(os.path.join(comfy_folders["input"], "set", "1_a", "0."))  # makes 0./../.. walkable on Linux
    for bad in ("/../../x", "/../../../secret.txt", ".txt\\..\\..\\x"):
        with pytest.raises(DatasetError, match="caption_extension .* holds a path"):
            load_folder("set", caption_extension=bad)
    assert load_folder("set", caption_extension="caption").caption_extension == ".caption"


@pytest.fixture
def latents(comfy, pack, tiny, comfy_folders):
    from comfyui_lora_trainer.nodes.comfy_model import ComfyVAEEncoder
    from comfyui_lora_trainer.trainer.dataset import load_dataset_folder
    from comfyui_lora_trainer.trainer.dataset.buckets import BucketSettings
    from comfyui_lora_trainer.trainer.latent_cache import cache_latents

    root = make_kohya_folder(os.path.join(comfy_folders["input"], "set"), {"1_sks dog": [(64, 64)]})
    with torch.inference_mode():
        model, clip, vae = tiny.sd15_model(seed=1), tiny.sd1_clip(seed=2), tiny.vae(seed=3)
        with torch.inference_mode(False):
            cached = cache_latents(load_dataset_folder(root), ComfyVAEEncoder(vae), BucketSettings((64, 64), 64, 64))
    return model, clip, cached


def train(latents, **settings):
    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    model, clip, cached = latents
    resume_from = settings.pop("resume_from", "")
    with torch.inference_mode():
        return run_training(model, clip, cached, NetworkConfig(rank=2, alpha=2), OptimizerConfig(learning_rate=1e-3),
                            TrainSettings(**{"output_name": "paths", "epochs": 1, **settings}),
                            resume_from=resume_from)


def test_train_takes_one_plain_run_name_and_writes_nothing_for_a_bad_one(latents, comfy_folders):
    from comfyui_lora_trainer.trainer.errors import ConfigError

    for bad, message in [("../escape", "is a path"), ("people/anna", "is a path"), ("/tmp/x", "is a path"),
                         ("cache", "taken by the trainer"), ("con", "device name"), ("", "empty")]:
        with pytest.raises(ConfigError, match=f"output_name .*{message}"):
            train(latents, output_name=bad)
    assert os.listdir(comfy_folders["loras"]) == []
    assert not os.path.exists(os.path.join(comfy_folders["output"], "lora-trainer"))
    assert not os.path.exists(os.path.join(os.path.dirname(comfy_folders["loras"]), "escape-interrupted.safetensors"))


def test_resume_from_names_a_run_folder_directly_under_the_run_data_folder(latents, comfy_folders):
    from comfyui_lora_trainer.nodes.comfy_host import run_data_folder
    from comfyui_lora_trainer.trainer.errors import ConfigError

    runs = os.path.join(comfy_folders["output"], "lora-trainer")
    os.makedirs(runs)
    os.symlink(comfy_folders["input"], os.path.join(runs, "linked"))
    for bad, message in [("..", "resume_from '..' is a path"), ("../../input", "is a path"),
                         ("/tmp", "is a path"), ("linked", "not a run folder of this trainer")]:
        with pytest.raises(ConfigError, match=message) as error:
            train(latents, resume_from=bad)
        assert "Runs that can resume: none" in str(error.value)
    with pytest.raises(ConfigError, match="run name '../x' is a path"):
        run_data_folder("../x")


def test_save_keeps_sub_folders_inside_the_loras_folder_and_refuses_the_rest(pack, comfy_folders, monkeypatch,
                                                                              tmp_path):
    from comfyui_lora_trainer.nodes.save_safetensors import LoRASaveSafetensors
    from comfyui_lora_trainer.trainer.errors import SaveError
    from comfyui_lora_trainer.trainer.lora_file import TrainedLora

    monkeypatch.setattr(LoRASaveSafetensors, "hidden", SimpleNamespace(prompt=None, extra_pnginfo=None, unique_id="1"),
                        raising=False)
    lora = TrainedLora("run", {"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, {}, 1, 1)
    loras = comfy_folders["loras"]
    LoRASaveSafetensors.execute(lora, "people/anna", "fp16")
    assert os.path.isfile(os.path.join(loras, "people", "anna.safetensors"))
    os.makedirs(comfy_folders["output"])
    os.symlink(comfy_folders["output"], os.path.join(loras, "linked"))
    for bad, message in [("../escape", "climbs out of the loras folder"), (str(tmp_path / "x"), "absolute path"),
                         ("people/../../x", "climbs out"), ("nul", "device name"), ("x\x00", "NUL"),
                         ("linked/x", "resolves outside")]:
        with pytest.raises(SaveError, match=message):
            LoRASaveSafetensors.execute(lora, bad, "fp16")
    beside = os.path.dirname(loras)
    assert not os.path.exists(os.path.join(beside, "escape.safetensors"))
    assert not os.path.exists(tmp_path / "x.safetensors")
    assert os.listdir(comfy_folders["output"]) == []


def test_continue_from_takes_only_a_file_comfyui_lists_in_its_loras_folders(pack, comfy_folders, tmp_path):
    import folder_paths

    from comfyui_lora_trainer.nodes.configure_lora import LoRAConfigure
    from comfyui_lora_trainer.trainer.errors import ConfigError

    loras = comfy_folders["loras"]
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"x")
    open(os.path.join(loras, "notes.txt"), "w").close()            # in the folder, but no LoRA ComfyUI lists
    for bad in ("../../secret.safetensors", str(secret), "notes.txt", "../" * 8 + "etc/passwd"):
        with pytest.raises(ConfigError, match="is not one of the LoRA files in ComfyUI's loras folders"):
            LoRAConfigure.execute(continue_from=bad)
    # a file linked into the loras folder is the user's own: ComfyUI lists and loads it, so does continue_from
    os.symlink(secret, os.path.join(loras, "shared.safetensors"))
    folder_paths.filename_list_cache.pop("loras", None)         # listed at once, whatever the mtime
    config = LoRAConfigure.execute(continue_from="shared.safetensors").result[0]
    assert config.continue_from == os.path.join(loras, "shared.safetensors")
