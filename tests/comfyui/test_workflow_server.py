"""The six-node graph queued on a real ComfyUI server, as a user's workflow runs."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import torch
from safetensors import safe_open

from tests.helpers import make_kohya_folder, make_messy_folder, write_image

from . import harness

# the plan's warm-up passes (trainer/preflight.py WARMUP_PASSES) call the model before step one
WARMUP_PASSES = 3
from .server import ComfyServer

NODE_IDS = {
    "LoRALoadDatasetFolder": ("Load Dataset Folder", [], ["LORA_DATASET"]),
    "LoRABucketCacheLatents": ("Bucket & Cache Latents", ["LORA_DATASET", "VAE"], ["LORA_LATENTS"]),
    "LoRAConfigure": ("Configure LoRA", [], ["LORA_NETWORK"]),
    "LoRAOptimizer": ("Optimizer", [], ["LORA_OPTIMIZER"]),
    "LoRATrain": ("Train", ["MODEL", "CLIP", "LORA_LATENTS", "LORA_NETWORK", "LORA_OPTIMIZER"],
                  ["MODEL", "CLIP", "TRAINED_LORA", "IMAGE", "STRING"]),
    "LoRASaveSafetensors": ("Save Safetensors", ["TRAINED_LORA"], []),
    "LoRADatasetFromImages": ("Dataset from Images", ["IMAGE"], ["LORA_DATASET"]),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = harness.missing_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("comfy_base")
    make_kohya_folder(str(base / "input" / "dogs"), {"3_sks dog": [(64, 64), (96, 64), (64, 64)]},
                      {"3_sks dog/0": "a photo of sks dog, (grass)"})
    os.makedirs(base / "input" / "empty_dataset")
    make_messy_folder(str(base / "input" / "messy"))
    make_kohya_folder(str(base / "input" / "reg"), {"1_dog": [(64, 64)] * 4})
    make_kohya_folder(str(base / "input" / "growing"), {"2_sks dog": [(64, 64)] * 2})
    graph_set = make_kohya_folder(str(base / "input" / "graphset"), {"3_sks dog": [(64, 64)] * 3},
                                  {"3_sks dog/0": "a photo of sks dog", "3_sks dog/1": "sks dog on grass"})
    for index in range(3):                       # the same files where ComfyUI's LoadImage lists them
        shutil.copy(os.path.join(graph_set, "3_sks dog", f"{index}.png"), base / "input" / f"graphset_{index}.png")
    running = ComfyServer(str(base)).start()
    yield running
    running.stop()


def training_graph(output_name: str, folder: str = "dogs", epochs: int = 2, save_precision: str = "fp32",
                   resume_from: str = "", regularization_folder: str = "", prior_loss_weight: float = 1.0) -> dict:
    return {
        "1": {"class_type": "TinySD15Loader", "inputs": {"seed": 1}},
        "2": {"class_type": "LoRALoadDatasetFolder",
              "inputs": {"folder": folder, "caption_extension": ".txt",
                         "regularization_folder": regularization_folder}},
        "3": {"class_type": "LoRABucketCacheLatents",
              "inputs": {"dataset": ["2", 0], "vae": ["1", 2], "resolution": 64, "min_bucket_reso": 64,
                         "max_bucket_reso": 128, "bucket_reso_steps": 64, "bucket_no_upscale": False,
                         "vae_batch_size": 2, "cache": "memory", "resize_interpolation": "auto",
                         "transparency": "on white"}},
        "4": {"class_type": "LoRAConfigure", "inputs": {"algorithm": "LoRA", "rank": 4, "alpha": 2.0}},
        "5": {"class_type": "LoRAOptimizer",
              "inputs": {"optimizer_type": "AdamW", "learning_rate": 1e-3, "weight_decay": 0.01, "beta1": 0.9,
                         "beta2": 0.999, "lr_scheduler": "cosine", "lr_warmup": 0.1, "max_grad_norm": 1.0}},
        "6": {"class_type": "LoRATrain",
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "latents": ["3", 0], "network": ["4", 0],
                         "optimizer": ["5", 0], "output_name": output_name, "epochs": epochs, "max_steps": 0,
                         "batch_size": 2, "train_seed": 7, "precision": "fp32", "save_every_n_epochs": 0,
                         "resume_from": resume_from, "prior_loss_weight": prior_loss_weight}},
        "7": {"class_type": "LoRASaveSafetensors",
              "inputs": {"lora": ["6", 2], "file_name": "", "precision": save_precision}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["6", 3]}},
        # preview: sample with the trained MODEL and CLIP in the same graph
        "9": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["6", 1], "text": "a photo of sks dog"}},
        "10": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "11": {"class_type": "KSampler",
               "inputs": {"model": ["6", 0], "positive": ["9", 0], "negative": ["9", 0], "latent_image": ["10", 0],
                          "seed": 0, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
                          "denoise": 1.0}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}},
    }


def execution_error(entry: dict) -> dict:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return data
    return {}


def error_message(entry: dict) -> str:
    return execution_error(entry).get("exception_message", "")


def test_object_info_lists_the_six_nodes(server):
    info = server.get("/object_info")
    for node_id, (display, input_types, output_types) in NODE_IDS.items():
        assert node_id in info, f"{node_id} missing from /object_info; log:\n{server.read_log()[-3000:]}"
        node = info[node_id]
        assert node["display_name"] == display and node["category"] == "LoRA Trainer"
        required = [spec[0] for spec in node["input"]["required"].values()]
        for wire in input_types:
            assert wire in required, (node_id, wire, required)
        assert node["output"] == output_types
    pack_lines = [line for line in server.read_log().splitlines() if "comfyui-lora-trainer" in line]
    assert pack_lines and not any("IMPORT FAILED" in line for line in pack_lines), pack_lines
    templates = server.get("/workflow_templates")
    assert "train_sd15_lora" in templates.get("comfyui-lora-trainer", []), templates


def test_graph_trains_saves_and_previews_through_the_executor(server):
    prompt_id = server.queue(training_graph("dogs_lora"))
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", (error_message(entry), server.read_log()[-4000:])

    lora_path = os.path.join(server.base_dir, "models", "loras", "dogs_lora.safetensors")
    assert os.path.isfile(lora_path), os.listdir(os.path.dirname(lora_path))
    with safe_open(lora_path, "pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata()
        ups = [handle.get_tensor(k) for k in keys if k.endswith("lora_up.weight")]
    modules = {k.split(".", 1)[0] for k in keys}
    assert len(modules) == 16 * 5 + 4 and len(keys) == 3 * len(modules)   # tiny UNet: 5 transformers
    assert all(f"{m}.alpha" in keys for m in modules)
    assert any(float(u.abs().max()) > 0 for u in ups), "LoRA weights did not move"
    assert metadata["ss_network_module"] == "networks.lora" and metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "2.0"
    assert metadata["ss_steps"] == "10" and metadata["ss_num_train_images"] == "9"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"

    with open(os.path.join(server.base_dir, "output", "lora-trainer", "dogs_lora", "run.json")) as handle:
        run = json.load(handle)
    assert run["status"] == "finished" and len(run["losses"]) == 10
    assert all(math.isfinite(x) for x in run["losses"])

    outputs = entry["outputs"]
    assert outputs["8"]["images"] and outputs["13"]["images"]     # loss graph and KSampler preview
    assert "trained 10 step(s)" in outputs["6"]["text"][0]


def test_plan_only_shows_the_plan_and_skips_save_and_sampling_without_an_error(server):
    """Train's plan_only: its summary is the plan (steps, saves, estimate, warnings); the other outputs are
    ExecutionBlockers, so Save, the loss-graph preview and the KSampler after it are skipped, and nothing is
    written."""
    graph = training_graph("planned_only")
    graph["6"]["inputs"].update(plan_only=True, save_every_n_epochs=1)
    prompt_id = server.queue(graph)
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", (error_message(entry), server.read_log()[-4000:])
    outputs = entry["outputs"]
    plan = outputs["6"]["text"][0]
    assert "plan only: nothing was trained or written" in plan
    assert "= 10 step(s)" in plan and "planned_only-000001.safetensors" in plan and "estimate:" in plan
    assert "warning(s) before step one" in plan or "no warnings" in plan
    assert not outputs.get("8", {}).get("images") and not outputs.get("13", {}).get("images")
    loras = os.path.join(server.base_dir, "models", "loras")
    assert not [name for name in os.listdir(loras) if name.startswith("planned_only")]
    assert not os.path.exists(os.path.join(server.base_dir, "output", "lora-trainer", "planned_only"))


def test_live_route_serves_the_run_so_far_and_only_from_memory(server):
    """GET /lora_trainer/live has every step of the run the page would chart; the preview route answers only for
    a node that has a preview in memory, whatever path-like text the request carries."""
    graph = training_graph("live_route")
    graph["6"]["inputs"].update(vae=["1", 2], sample_every_n_steps=5, sample_prompts="sks dog --w 64 --h 64 --s 1")
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    with open(os.path.join(server.base_dir, "output", "lora-trainer", "live_route", "run.json")) as handle:
        losses = json.load(handle)["losses"]
    run = server.get("/lora_trainer/live")["runs"]["6"]
    assert run["run"] == "live_route" and run["steps"] == list(range(1, 11)) and run["total"] == 10
    assert run["losses"] == pytest.approx(losses, rel=1e-6) and run["epochs"] == 2 and run["preview_step"] == 10
    assert run["preview_count"] == 2 and run["status"] == "finished"
    with urllib.request.urlopen(server.url + "/api/lora_trainer/live/preview?node=6") as response:
        assert response.headers["Content-Type"] == "image/jpeg" and response.read()[:2] == b"\xff\xd8"
    for node in ("7", "../../../etc/passwd", "/etc/passwd", "6/../6", ""):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url + "/lora_trainer/live/preview?node=" + urllib.parse.quote(node))
        assert refused.value.code == 404, node


SERVER_CASES = {"LoRA": {}, "LoCon": dict(algorithm="LoCon"), "LoHa": dict(algorithm="LoHa"),
                "LoKr": dict(algorithm="LoKr", decompose_both=True), "DyLoRA": dict(algorithm="DyLoRA", dylora_unit=2),
                "DoRA": dict(dora=True), "both": dict(train="both")}


@pytest.mark.parametrize("algorithm", list(SERVER_CASES))
def test_saved_file_loads_in_loraloader_and_matches_train_output(server, algorithm):
    graph = training_graph(f"match_{algorithm}")
    graph["4"]["inputs"].update(conv_rank=2, conv_alpha=1.0, **SERVER_CASES[algorithm])
    first = server.wait(server.queue(graph))
    assert first["status"]["status_str"] == "success", error_message(first)
    log_before = len(server.read_log())

    # same graph again (Train is cached, so its MODEL is the one above) plus LoraLoader on the saved file
    graph.update({
        "20": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                      "lora_name": f"match_{algorithm}.safetensors",
                                                      "strength_model": 1.0, "strength_clip": 1.0}},
        "21": {"class_type": "ComparePredictions",
               "inputs": {"model_a": ["6", 0], "model_b": ["20", 0], "reference": ["1", 0]}},
    })
    second = server.wait(server.queue(graph))
    assert second["status"]["status_str"] == "success", error_message(second)
    cached = [data for kind, data in second["status"]["messages"] if kind == "execution_cached"]
    assert cached and "6" in cached[0]["nodes"], "Train re-ran instead of being cached"
    text = second["outputs"]["21"]["text"][0]
    print(text)
    values = dict(part.split("=") for part in text.split())
    assert float(values["max_abs_diff"]) <= 1e-5, text
    assert float(values["lora_effect"]) > 1e-4, text
    new_log = server.read_log()[log_before:]
    assert "lora key not loaded" not in new_log and "NOT LOADED" not in new_log, new_log


def test_bad_dataset_folder_stops_with_an_actionable_error(server):
    entry = server.wait(server.queue(training_graph("never", folder="empty_dataset")))
    assert entry["status"]["status_str"] == "error"
    error = execution_error(entry)
    message = error["exception_message"]
    assert "empty_dataset" in message and "Expected layout" in message and "10_sks dog" in message, message
    # the error dialog's title: the short class name, not the pack's import path
    assert error["exception_type"] == "DatasetError", error["exception_type"]
    assert error["node_type"] == "LoRALoadDatasetFolder", error


def test_a_messy_folder_trains_on_exactly_its_good_images_and_shows_each_skip(server):
    entry = server.wait(server.queue(training_graph("messy_lora", folder="messy", epochs=1)))
    assert entry["status"]["status_str"] == "success", (error_message(entry), server.read_log()[-3000:])
    with safe_open(os.path.join(server.base_dir, "models", "loras", "messy_lora.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_num_train_images"] == str(11 * 4 + 1 * 2)          # good images x repeats
    assert json.loads(metadata["ss_dataset_dirs"]) == {"4_sks dog": {"n_repeats": 4, "img_count": 11},
                                                      "2_café chien": {"n_repeats": 2, "img_count": 1}}
    dataset_text, cache_text = entry["outputs"]["2"]["text"][0], entry["outputs"]["3"]["text"][0]
    for name in ("zero.png", "fake.jpg", "broken link.png", "nested", "0_zero repeats", "3_only bad"):
        assert name in dataset_text, dataset_text
    assert "latin.txt is not UTF-8" in dataset_text and "1 empty caption file(s)" in dataset_text
    assert "truncated.png" in cache_text and "truncated or corrupt" in cache_text, cache_text


def test_regularization_folder_trains_balanced_with_its_prior_loss_weight(server):
    graph = training_graph("reg_lora", epochs=1, regularization_folder="reg", prior_loss_weight=0.5)
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "success", (error_message(entry), server.read_log()[-3000:])
    with safe_open(os.path.join(server.base_dir, "models", "loras", "reg_lora.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_num_train_images"] == "9" and metadata["ss_num_reg_images"] == "4"
    assert json.loads(metadata["ss_reg_dataset_dirs"]) == {"1_dog": {"n_repeats": 1, "img_count": 4}}
    assert metadata["ss_prior_loss_weight"] == "0.5"
    assert metadata["ss_num_batches_per_epoch"] == "9"            # 9 train + 9 balanced reg samples, batch 2
    assert "balanced to 9 sample(s) from 4 image(s)" in entry["outputs"]["2"]["text"][0]


def test_two_dataset_folders_chained_train_together_with_overridden_repeats(server):
    graph = training_graph("two_sets_lora", epochs=1)
    graph["14"] = {"class_type": "LoRALoadDatasetFolder",
                   "inputs": {"folder": "reg", "caption_extension": ".txt", "repeats": "dog=2", "add_to": ["2", 0]}}
    graph["3"]["inputs"]["dataset"] = ["14", 0]
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "success", (error_message(entry), server.read_log()[-3000:])
    with safe_open(os.path.join(server.base_dir, "models", "loras", "two_sets_lora.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["ss_dataset_dirs"]) == {"3_sks dog": {"n_repeats": 3, "img_count": 3},
                                                      "1_dog": {"n_repeats": 2, "img_count": 4}}
    assert metadata["ss_num_train_images"] == str(3 * 3 + 4 * 2)


def test_dataset_from_images_trains_the_same_lora_as_the_same_folder(server):
    """Images through ComfyUI's LoadImage and captions as a STRING give the LoRA the folder gives (fp32, one seed)."""
    from_folder = training_graph("folder_twin", folder="graphset", epochs=1)
    from_graph = training_graph("graph_twin", epochs=1)
    for index in range(3):
        from_graph[f"2{index}"] = {"class_type": "LoadImage", "inputs": {"image": f"graphset_{index}.png"}}
    from_graph["23"] = {"class_type": "ImageBatch", "inputs": {"image1": ["20", 0], "image2": ["21", 0]}}
    from_graph["24"] = {"class_type": "ImageBatch", "inputs": {"image1": ["23", 0], "image2": ["22", 0]}}
    from_graph["2"] = {"class_type": "LoRADatasetFromImages",
                       "inputs": {"images": ["24", 0], "captions": "a photo of sks dog\nsks dog on grass\nsks dog",
                                  "name": "sks dog", "repeats": 3}}
    tensors = {}
    for graph, name in ((from_folder, "folder_twin"), (from_graph, "graph_twin")):
        entry = server.wait(server.queue(graph))
        assert entry["status"]["status_str"] == "success", (error_message(entry), server.read_log()[-3000:])
        with safe_open(os.path.join(server.base_dir, "models", "loras", f"{name}.safetensors"), "pt") as handle:
            tensors[name] = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata()
    assert tensors["folder_twin"].keys() == tensors["graph_twin"].keys()
    assert all(torch.equal(tensors["folder_twin"][k], tensors["graph_twin"][k]) for k in tensors["folder_twin"])
    assert any(float(t.abs().max()) > 0 for k, t in tensors["graph_twin"].items() if k.endswith("lora_up.weight"))
    assert json.loads(metadata["ss_dataset_dirs"]) == {"3_sks dog": {"n_repeats": 3, "img_count": 3}}


def test_disk_cache_is_reused_by_the_next_queue_and_does_not_retrigger_the_dataset(server):
    graph = training_graph("disk_lora", folder="graphset", epochs=1)
    graph["3"]["inputs"]["cache"] = "disk"
    first = server.wait(server.queue(graph))
    assert first["status"]["status_str"] == "success", (error_message(first), server.read_log()[-3000:])
    assert "0 read from .npz files, 3 encoded and written" in first["outputs"]["3"]["text"][0]
    folder = os.path.join(server.base_dir, "input", "graphset", "3_sks dog")
    assert sorted(n for n in os.listdir(folder) if n.endswith(".npz")) == [
        f"{i}_0064x0064_sd.npz" for i in range(3)]
    graph["3"]["inputs"]["vae_batch_size"] = 3                  # re-runs the cache node, not the dataset node
    second = server.wait(server.queue(graph))
    assert second["status"]["status_str"] == "success", error_message(second)
    cached = [data for kind, data in second["status"]["messages"] if kind == "execution_cached"]
    assert "2" in cached[0]["nodes"], "writing .npz files made the dataset node run again"
    assert "3 read from .npz files, 0 encoded and written" in second["outputs"]["3"]["text"][0]


def test_shuffled_captions_train_with_comfyuis_clip_encoding_every_step(server):
    graph = training_graph("shuffle_lora", epochs=2)
    graph["2"]["inputs"].update(shuffle_caption=True, keep_tokens=1, caption_tag_dropout_rate=0.3)
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "success", (error_message(entry), server.read_log()[-3000:])
    with safe_open(os.path.join(server.base_dir, "models", "loras", "shuffle_lora.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_shuffle_caption"] == "True" and metadata["ss_keep_tokens"] == "1"
    assert metadata["ss_caption_tag_dropout_rate"] == "0.3"
    assert "captions: shuffle_caption=True, keep_tokens=1" in entry["outputs"]["2"]["text"][0]


def test_adding_an_image_to_the_folder_re_runs_the_dataset_and_everything_after_it(server):
    graph = training_graph("growing_lora", folder="growing", epochs=1)
    first = server.wait(server.queue(graph))
    assert first["status"]["status_str"] == "success", error_message(first)
    again = server.wait(server.queue(graph))                    # nothing changed: all of it from the cache
    assert "2" in [data for kind, data in again["status"]["messages"] if kind == "execution_cached"][0]["nodes"]
    write_image(os.path.join(server.base_dir, "input", "growing", "2_sks dog", "new.png"), (64, 64), seed=5)
    third = server.wait(server.queue(graph))
    assert third["status"]["status_str"] == "success", error_message(third)
    cached = [data for kind, data in third["status"]["messages"] if kind == "execution_cached"][0]["nodes"]
    assert "2" not in cached and "6" not in cached             # the dataset and Train ran again
    assert "3 image(s)" in third["outputs"]["2"]["text"][0]


def test_configure_lora_continues_from_a_file_in_the_loras_folder(server):
    first = server.wait(server.queue(training_graph("start_lora", epochs=1)))
    assert first["status"]["status_str"] == "success", error_message(first)
    graph = training_graph("continued_lora", epochs=1)
    graph["4"]["inputs"]["continue_from"] = "start_lora.safetensors"
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "success", (error_message(entry), server.read_log()[-3000:])
    assert "continuing from start_lora.safetensors" in entry["outputs"]["6"]["text"][0]
    graph["4"]["inputs"]["rank"] = 8                                # the file has rank 4
    refused = server.wait(server.queue(graph))
    assert refused["status"]["status_str"] == "error"
    assert "has rank 4" in error_message(refused) and execution_error(refused)["exception_type"] == "ConfigError"


def test_saved_file_carries_the_comment_the_workflow_and_an_honest_base_model(server):
    graph = training_graph("meta_lora", epochs=1)
    graph["7"]["inputs"]["comment"] = "first try, sks dog"
    workflow = {"nodes": [], "links": [], "note": "the workflow the frontend sends"}
    entry = server.wait(server.queue(graph, {"extra_pnginfo": {"workflow": workflow}}))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    with safe_open(os.path.join(server.base_dir, "models", "loras", "meta_lora.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_training_comment"] == "first try, sks dog"
    assert json.loads(metadata["workflow"]) == workflow
    assert json.loads(metadata["prompt"])["6"]["class_type"] == "LoRATrain"
    assert metadata["ss_sd_model_name"] == "unknown"            # the tiny loader names no checkpoint file
    assert metadata["modelspec.implementation_version"].startswith("comfyui-lora-trainer/")


def test_cancel_keeps_the_trained_lora_and_the_run_resumes(server):
    prompt_id = server.queue(training_graph("cancel_lora", epochs=12))        # 5 steps per epoch, 60 in all
    deadline = time.time() + 120
    while "cancel_lora: epoch 2/12" not in server.read_log():
        assert time.time() < deadline, server.read_log()[-3000:]
        time.sleep(0.1)
    server.post("/interrupt")
    entry = server.wait(prompt_id)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    loras = os.listdir(os.path.join(server.base_dir, "models", "loras"))
    assert "cancel_lora-interrupted.safetensors" in loras, loras
    run_folder = os.path.join(server.base_dir, "output", "lora-trainer", "cancel_lora")
    with open(os.path.join(run_folder, "run.json")) as handle:
        stopped = json.load(handle)
    assert stopped["status"] == "cancelled" and 10 <= stopped["step"] < 60
    assert os.path.isfile(os.path.join(stopped["state"], "state.json"))

    resumed = server.wait(server.queue(training_graph("ignored_when_resuming", epochs=12, resume_from="cancel_lora")))
    assert resumed["status"]["status_str"] == "success", error_message(resumed)
    summary = resumed["outputs"]["6"]["text"][0]
    assert f"run cancel_lora, resumed at step {stopped['step']}" in summary and "trained 60 step(s)" in summary
    assert "cancel_lora.safetensors" in os.listdir(os.path.join(server.base_dir, "models", "loras"))
    with open(os.path.join(run_folder, "run.json")) as handle:
        finished = json.load(handle)
    assert finished["status"] == "finished" and len(finished["losses"]) == 60
    assert finished["losses"][:stopped["step"]] == stopped["losses"]


def test_a_diverging_run_stops_with_its_causes_keeps_its_work_and_leaves_comfyui_usable(server):
    graph = training_graph("diverge", epochs=20)
    graph["5"]["inputs"].update(learning_rate=1e8, max_grad_norm=0.0)
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "error"
    error = execution_error(entry)
    message = error["exception_message"]
    assert error["exception_type"] == "TrainerError" and "became" in message, message
    assert "learning rate" in message and "max_grad_norm" in message and "resume" in message, message
    loras = os.listdir(os.path.join(server.base_dir, "models", "loras"))
    run_folder = os.path.join(server.base_dir, "output", "lora-trainer", "diverge")
    with open(os.path.join(run_folder, "run.json")) as handle:
        stopped = json.load(handle)
    if stopped["step"]:                         # it diverged after at least one good step: that work is kept
        assert "diverge-interrupted.safetensors" in loras and os.path.isfile(
            os.path.join(stopped["state"], "state.json"))
    assert stopped["status"].startswith("error")
    again = server.wait(server.queue(training_graph("after_divergence", epochs=1)))
    assert again["status"]["status_str"] == "success", error_message(again)


def test_out_of_memory_mid_run_keeps_the_work_says_what_to_change_and_leaves_comfyui_usable(server):
    graph = training_graph("oom_run", epochs=5)
    graph["1"]["inputs"]["seed"] = 91                    # a model of its own (the hook stays on it)
    graph["30"] = {"class_type": "RunsOutOfMemory", "inputs": {"model": ["1", 0], "at_forward": WARMUP_PASSES + 4}}
    graph["6"]["inputs"]["model"] = ["30", 0]
    for preview in ("9", "10", "11", "12", "13"):
        graph.pop(preview)
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "error"
    error = execution_error(entry)
    assert error["exception_type"] == "TrainerError", error
    assert "Out of memory at step 4" in error["exception_message"] and "batch_size" in error["exception_message"]
    assert "oom_run-interrupted.safetensors" in os.listdir(os.path.join(server.base_dir, "models", "loras"))
    with open(os.path.join(server.base_dir, "output", "lora-trainer", "oom_run", "run.json")) as handle:
        stopped = json.load(handle)
    assert stopped["status"].startswith("error") and stopped["step"] == 3
    assert os.path.isfile(os.path.join(stopped["state"], "state.json"))
    # out of memory already in a warm-up pass: the plan's "will not fit" stop, before training, nothing written
    graph = training_graph("oom_at_plan", epochs=1)
    graph["1"]["inputs"]["seed"] = 92
    graph["31"] = {"class_type": "RunsOutOfMemory", "inputs": {"model": ["1", 0], "at_forward": 1}}
    graph["6"]["inputs"]["model"] = ["31", 0]
    for preview in ("9", "10", "11", "12", "13"):
        graph.pop(preview)
    planned = server.wait(server.queue(graph))
    assert planned["status"]["status_str"] == "error"
    message = execution_error(planned)["exception_message"]
    assert "will not fit" in message and "ran out of memory" in message and "gradient_checkpointing on" in message
    assert not [name for name in os.listdir(os.path.join(server.base_dir, "models", "loras"))
                if name.startswith("oom_at_plan")]
    again = server.wait(server.queue(training_graph("after_oom", epochs=1)))
    assert again["status"]["status_str"] == "success", error_message(again)
