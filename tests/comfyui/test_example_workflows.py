"""The shipped example workflows (example_workflows/*.json, ComfyUI's templates for this pack) against a live
server: every node and widget value valid, a note and a thumbnail each, all listed, and the training ones
queued end to end with ComfyUI's loader swapped for the test's tiny models."""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import urllib.request

import pytest
from safetensors import safe_open

from tests.helpers import make_kohya_folder

from . import harness

# the plan's warm-up passes (trainer/preflight.py WARMUP_PASSES) call the model before step one
WARMUP_PASSES = 3
from .server import PACK_FOLDER_NAME, ComfyServer

WORKFLOW_DIR = os.path.join(harness.REPO_ROOT, "example_workflows")
WORKFLOWS = sorted(os.path.splitext(os.path.basename(path))[0]
                   for path in glob.glob(os.path.join(WORKFLOW_DIR, "*.json")))
REBUILD = "rebuild with scripts/build_example_workflow.py"

SEEDS = ("seed", "noise_seed")           # the frontend adds a control_after_generate value after these
SEED_CONTROLS = ("fixed", "increment", "decrement", "randomize")
FRONTEND_ONLY = ("Note", "MarkdownNote")   # drawn by the frontend, never queued
# file-choice inputs list a models folder: the server must find a file of each name there when it starts
MODEL_FOLDERS = {"CheckpointLoaderSimple": "checkpoints", "LoraLoader": "loras", "UNETLoader": "diffusion_models",
                 "DualCLIPLoader": "text_encoders", "TripleCLIPLoader": "text_encoders", "CLIPLoader": "text_encoders",
                 "VAELoader": "vae"}
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt")
TITLE_HEIGHT = 30                        # the frontend draws a node's title bar above its pos

def load_workflow(name: str) -> dict:
    with open(os.path.join(WORKFLOW_DIR, f"{name}.json"), encoding="utf-8") as handle:
        return json.load(handle)


def model_files_named_in(workflow: dict) -> list[tuple[str, str]]:
    """(models folder, file name) for every model file a loader of the workflow picks."""
    return [(MODEL_FOLDERS[node["type"]], value) for node in workflow["nodes"] if node["type"] in MODEL_FOLDERS
            for value in node["widgets_values"] if isinstance(value, str) and value.endswith(MODEL_EXTENSIONS)]


def install_placeholder_models(base: str) -> None:
    for name in WORKFLOWS:
        for folder, file_name in model_files_named_in(load_workflow(name)):
            path = os.path.join(base, "models", folder, file_name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "wb").close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = harness.missing_reason()
    if reason:
        pytest.skip(reason)
    base = str(tmp_path_factory.mktemp("examples_base"))
    install_placeholder_models(base)
    make_kohya_folder(os.path.join(base, "input", "dogs"), {"3_sks dog": [(64, 64), (96, 64), (64, 64)]},
                      {"3_sks dog/0": "a photo of sks dog"})
    make_kohya_folder(os.path.join(base, "input", "reg"), {"1_dog": [(64, 64)] * 2})
    shutil.copytree(os.path.join(base, "input", "dogs"), os.path.join(base, "input", "dogs_sdxl"))
    shutil.copytree(os.path.join(base, "input", "dogs"), os.path.join(base, "input", "dogs_flow"))
    running = ComfyServer(base).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def info(server) -> dict:
    return server.get("/object_info")


# ------------------------------------------------------------------------------------- the files as the frontend

def widget_inputs(definition: dict, linked: set[str]) -> list[str]:
    """The inputs a node shows as widgets, in the order of a saved workflow's widgets_values."""
    specs = {**definition["input"]["required"], **definition["input"].get("optional", {})}
    order = definition["input_order"]["required"] + definition["input_order"].get("optional", [])
    return [name for name in order if name not in linked and (
        isinstance(specs[name][0], list) or specs[name][0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"))
        and not (len(specs[name]) > 1 and specs[name][1].get("forceInput"))]


def has_seed_control(name: str, spec: list) -> bool:
    return spec[0] == "INT" and (name in SEEDS or (len(spec) > 1 and bool(spec[1].get("control_after_generate"))))


def widget_slots(definition: dict, linked: set[str]) -> list[str]:
    """One name per widgets_values entry: a seed's control_after_generate value is named '<seed>:control'."""
    specs = {**definition["input"]["required"], **definition["input"].get("optional", {})}
    slots = []
    for name in widget_inputs(definition, linked):
        slots.append(name)
        if has_seed_control(name, specs[name]):
            slots.append(f"{name}:control")
    return slots


def linked_inputs(node: dict) -> set[str]:
    return {entry["name"] for entry in node["inputs"] if entry.get("link") is not None}


def workflow_to_prompt(workflow: dict, info: dict) -> dict:
    """A saved (UI) workflow as the API prompt the frontend queues for it."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        inputs = {entry["name"]: [str(links[entry["link"]][1]), links[entry["link"]][2]]
                  for entry in node["inputs"] if entry.get("link") is not None}
        for slot, value in zip(widget_slots(info[node["type"]], set(inputs)), node["widgets_values"]):
            if not slot.endswith(":control"):
                inputs[slot] = value
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def value_problem(spec: list, value) -> str | None:
    """Why `value` is not a valid value of the widget input `spec`, or None."""
    kind, settings = spec[0], (spec[1] if len(spec) > 1 else {})
    options = kind if isinstance(kind, list) else settings.get("options") if kind == "COMBO" else None
    if options is not None:
        return None if value in options else f"{value!r} is not one of {options[:12]}"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a bool"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a str"
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, int if kind == "INT" else (int, float)):
            return f"{value!r} is not an {kind}"
        if not settings.get("min", value) <= value <= settings.get("max", value):
            return f"{value!r} is outside [{settings.get('min')}, {settings.get('max')}]"
    return None


def node_problems(node: dict, definition: dict) -> list[str]:
    specs = {**definition["input"]["required"], **definition["input"].get("optional", {})}
    slots = widget_slots(definition, linked_inputs(node))
    label = f"node {node['id']} ({node['type']})"
    if len(slots) != len(node["widgets_values"]):
        return [f"{label}: {len(node['widgets_values'])} widget values for the widgets {slots}; {REBUILD}"]
    problems = []
    for slot, value in zip(slots, node["widgets_values"]):
        if slot.endswith(":control"):
            problem = None if value in SEED_CONTROLS else f"{value!r} is not a seed control"
        else:
            problem = value_problem(specs[slot], value)
        if problem:
            problems.append(f"{label}.{slot}: {problem}")
    for entry in node["inputs"]:
        if entry["name"] not in specs:
            problems.append(f"{label}: no input {entry['name']!r}")
        elif specs[entry["name"]][0] != entry["type"]:
            problems.append(f"{label}.{entry['name']}: socket type {entry['type']}, the node's is "
                            f"{specs[entry['name']][0]}")
    return problems


def link_problems(workflow: dict, info: dict) -> list[str]:
    """Each wire: from an output of its type to an input of the same type, recorded on both ends."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    problems = []
    for link_id, source, slot, target, target_slot, wire in workflow["links"]:
        source_node, target_node = nodes[source], nodes[target]
        output_type = info[source_node["type"]]["output"][slot]
        target_input = target_node["inputs"][target_slot]
        if not output_type == wire == target_input["type"]:
            problems.append(f"link {link_id}: {source_node['type']} gives {output_type}, the link says {wire}, "
                            f"{target_node['type']}.{target_input['name']} takes {target_input['type']}")
        if target_input["link"] != link_id or link_id not in source_node["outputs"][slot]["links"]:
            problems.append(f"link {link_id}: not recorded on both of its ends")
    return problems


@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_workflow_matches_the_servers_node_definitions(info, name):
    """Every node type is known, every widget value lines up with its widget and is valid (combos: in the
    options, the placeholder models included), and every wire connects equal types."""
    workflow = load_workflow(name)
    problems = [f"node {node['id']}: type {node['type']!r} unknown to the server" for node in workflow["nodes"]
                if node["type"] not in FRONTEND_ONLY and node["type"] not in info]
    assert not problems, problems
    for node in workflow["nodes"]:
        if node["type"] not in FRONTEND_ONLY:
            problems += node_problems(node, info[node["type"]])
    problems += link_problems(workflow, info)
    assert not problems, "\n".join(problems)


def test_the_examples_cover_what_the_pack_promises():
    types = {name: {node["type"] for node in load_workflow(name)["nodes"]} for name in WORKFLOWS}
    assert {"train_sd15_lora", "train_sdxl_lora", "train_locon_with_regularization", "dadaptation_lr_finder",
            "resume_training", "compare_epochs", "train_flux_lora", "train_sd35_lora",
            "train_qwen_image_lora"} <= set(WORKFLOWS)
    assert {"LoRALoadDatasetFolder", "LoRABucketCacheLatents", "LoRAConfigure", "LoRAOptimizer", "LoRATrain",
            "LoRASaveSafetensors", "CheckpointLoaderSimple", "KSampler"} <= types["train_sd15_lora"]
    assert {"LoraLoader", "ImageStitch", "KSampler", "SaveImage"} <= types["compare_epochs"]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_workflow_has_a_note_saying_what_to_change(name):
    notes = [node["widgets_values"][0] for node in load_workflow(name)["nodes"] if node["type"] in FRONTEND_ONLY]
    assert notes and all(isinstance(text, str) and len(text) > 80 for text in notes), notes
    assert "checkpoint" in " ".join(notes).lower(), notes


@pytest.mark.parametrize("name", WORKFLOWS)
def test_nodes_do_not_overlap(name):
    boxes = [(node["id"], node["pos"][0], node["pos"][1] - TITLE_HEIGHT, node["pos"][0] + node["size"][0],
              node["pos"][1] + node["size"][1]) for node in load_workflow(name)["nodes"]]
    overlapping = [(a[0], b[0]) for index, a in enumerate(boxes) for b in boxes[index + 1:]
                   if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]]
    assert not overlapping, overlapping


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_workflow_has_a_small_jpeg_thumbnail_the_server_serves(server, name):
    from PIL import Image

    path = os.path.join(WORKFLOW_DIR, f"{name}.jpg")
    assert os.path.isfile(path), f"no thumbnail {path}: run scripts/make_template_thumbnails.py"
    with open(path, "rb") as handle:
        data = handle.read()
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
        assert image.format == "JPEG" and 200 <= image.width <= 800 and 150 <= image.height <= 600, image.size
    assert len(data) <= 60_000, len(data)
    # the template browser's address for a custom node's thumbnail
    url = f"{server.url}/api/workflow_templates/{PACK_FOLDER_NAME}/{name}.jpg"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.read() == data


def test_the_server_lists_every_example_workflow_as_a_template(server):
    assert sorted(server.get("/workflow_templates").get(PACK_FOLDER_NAME, [])) == WORKFLOWS


# ------------------------------------------------------------------------------ queued with the tiny models

def execution_error(entry: dict) -> str:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message')}"
    return ""


def tiny_prompt(name: str, info: dict, output_name: str, loader: str = "TinySD15Loader", seed: int = 1,
                folder: str = "dogs", **train) -> dict:
    """The workflow as the frontend queues it, with the tiny models, the small dataset, 64-pixel images and
    2-step previews swapped in; `train` overrides Train's inputs (epochs 1 unless given)."""
    prompt = workflow_to_prompt(load_workflow(name), info)
    swap_in_tiny_loader(prompt, loader, seed)
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "EmptySD3LatentImage":
            inputs.update(width=64, height=64)
        elif kind == "LoRALoadDatasetFolder":
            inputs.update(folder=folder, regularization_folder="reg" if inputs["regularization_folder"] else "")
        elif kind == "LoRABucketCacheLatents":
            inputs.update(resolution=64, min_bucket_reso=64, max_bucket_reso=128)
        elif kind == "LoRATrain":
            inputs.update({"output_name": output_name, "epochs": 1, **train})
        elif kind == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        elif kind == "KSampler":
            inputs["steps"] = 2
    return prompt


# a loader's outputs -> the tiny loader's output slot (MODEL 0, CLIP 1, VAE 2)
LOADER_SLOTS = {"CheckpointLoaderSimple": (0, 1, 2), "UNETLoader": (0,), "DualCLIPLoader": (1,),
                "TripleCLIPLoader": (1,), "CLIPLoader": (1,), "VAELoader": (2,)}


def swap_in_tiny_loader(prompt: dict, loader: str, seed: int) -> None:
    """The template's model loaders (one Load Checkpoint, or the flow families' separate diffusion-model, CLIP
    and VAE loaders) become one tiny-model loader, each wire rerouted to its output."""
    loaders = {key: node["class_type"] for key, node in prompt.items() if node["class_type"] in LOADER_SLOTS}
    main = next(key for key, kind in loaders.items() if kind in ("CheckpointLoaderSimple", "UNETLoader"))
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and value[0] in loaders:
                node["inputs"][name] = [main, LOADER_SLOTS[loaders[value[0]]][value[1]]]
    for key in loaders:
        if key != main:
            del prompt[key]
    prompt[main] = {"class_type": loader, "inputs": {"seed": seed}}


def node_of(prompt: dict, class_type: str) -> tuple[str, dict]:
    return next((key, node) for key, node in prompt.items() if node["class_type"] == class_type)


def run(server, prompt: dict) -> dict:
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", (execution_error(entry), server.read_log()[-3000:])
    return entry


def saved_picture_sizes(server, entry: dict, node_id: str) -> list[tuple[int, int]]:
    from PIL import Image

    sizes = []
    for image in entry["outputs"][node_id]["images"]:
        with Image.open(os.path.join(server.base_dir, "output", image["subfolder"], image["filename"])) as picture:
            sizes.append(picture.size)
    return sizes


def lora_metadata(server, name: str) -> dict:
    with safe_open(os.path.join(server.base_dir, "models", "loras", f"{name}.safetensors"), "pt") as handle:
        return handle.metadata()


def test_sd15_template_trains_on_cpu_with_its_default_precision(server, info):
    """The template as a user queues it, with tiny models and a tiny dataset swapped in: no bf16 error."""
    prompt = tiny_prompt("train_sd15_lora", info, "template_lora")
    train_id, train = node_of(prompt, "LoRATrain")
    assert train["inputs"]["precision"] == "auto"                # the template's own default, unchanged
    entry = run(server, prompt)
    summary = entry["outputs"][train_id]["text"][0]
    assert "precision auto: fp32 (no CUDA GPU)" in summary, summary
    assert lora_metadata(server, "template_lora")["ss_base_model_version"] == "sd_v1"
    assert entry["outputs"][node_of(prompt, "SaveImage")[0]]["images"]


def test_locon_with_regularization_trains_both_sets_and_previews_trigger_and_class(server, info):
    prompt = tiny_prompt("train_locon_with_regularization", info, "locon_reg")
    entry = run(server, prompt)
    metadata = lora_metadata(server, "locon_reg")
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "4.0"}, metadata
    assert metadata["ss_network_dim"] == "16" and metadata["ss_network_alpha"] == "8.0"
    assert metadata["ss_num_reg_images"] == "2" and metadata["ss_prior_loss_weight"] == "1.0"
    stitch = node_of(prompt, "ImageStitch")[1]["inputs"]
    spacing = stitch["spacing_width"]
    # one picture: the trigger prompt and the class prompt side by side
    assert saved_picture_sizes(server, entry, node_of(prompt, "SaveImage")[0]) == [(2 * 64 + spacing, 64)]


def test_dadaptation_lr_finder_runs_its_steps_and_draws_the_loss_graph(server, info):
    prompt = tiny_prompt("dadaptation_lr_finder", info, "lr_finder_tiny", epochs=0, max_steps=6)
    optimizer = node_of(prompt, "LoRAOptimizer")[1]["inputs"]
    assert (optimizer["optimizer_type"], optimizer["learning_rate"], optimizer["lr_scheduler"]) == (
        "DAdaptAdam", 1.0, "constant")
    entry = run(server, prompt)
    summary = entry["outputs"][node_of(prompt, "LoRATrain")[0]]["text"][0]
    assert "trained 6 step(s)" in summary and "DAdaptAdam" in summary, summary
    assert entry["outputs"][node_of(prompt, "PreviewImage")[0]]["images"]


def test_sdxl_template_trains_a_tiny_sdxl_with_its_settings(server, info):
    prompt = tiny_prompt("train_sdxl_lora", info, "sdxl_tiny", loader="TinySDXLLoader", folder="dogs_sdxl")
    train = node_of(prompt, "LoRATrain")[1]["inputs"]
    assert train["gradient_checkpointing"] is True
    assert node_of(prompt, "LoRABucketCacheLatents")[1]["inputs"]["cache"] == "disk"
    run(server, prompt)
    metadata = lora_metadata(server, "sdxl_tiny")
    assert metadata["ss_base_model_version"].startswith("sdxl"), metadata["ss_base_model_version"]
    assert metadata["ss_network_dim"] == "16" and metadata["ss_network_alpha"] == "8.0"
    assert any(name.endswith(".npz") for name in os.listdir(os.path.join(server.base_dir, "input", "dogs_sdxl",
                                                                          "3_sks dog")))


@pytest.mark.parametrize("name, loader, version", [("train_flux_lora", "TinyFluxLoader", "flux1"),
                                                   ("train_sd35_lora", "TinySD3Loader", "5-medium"),
                                                   ("train_qwen_image_lora", "TinyQwenImageLoader", "qwen_image")])
def test_flow_templates_train_their_tiny_family_and_sample_with_it(server, info, name, loader, version):
    """The Flux.1 dev, SD3.5 and Qwen-Image templates, their loaders swapped for the family's tiny models (fp32 on
    the CPU: the templates' bf16 and 8-bit AdamW are for GPUs)."""
    prompt = tiny_prompt(name, info, f"{name}_tiny", loader=loader, folder="dogs_flow", precision="fp32")
    optimizer = node_of(prompt, "LoRAOptimizer")[1]["inputs"]
    assert optimizer["optimizer_type"] == "AdamW8bit"
    optimizer["optimizer_type"] = "AdamW"
    assert node_of(prompt, "LoRATrain")[1]["inputs"]["gradient_checkpointing"] is True
    entry = run(server, prompt)
    metadata = lora_metadata(server, f"{name}_tiny")
    assert metadata["ss_base_model_version"] == version and metadata["ss_model_prediction_type"] == "raw"
    assert entry["outputs"][node_of(prompt, "SaveImage")[0]]["images"]


def test_resume_workflow_continues_a_run_that_stopped_on_an_error(server, info):
    stopping = tiny_prompt("train_sd15_lora", info, "resume_me", seed=5)
    loader_id = node_of(stopping, "TinySD15Loader")[0]
    train_id, train = node_of(stopping, "LoRATrain")
    stopping["90"] = {"class_type": "RunsOutOfMemory",
                      "inputs": {"model": [loader_id, 0], "at_forward": WARMUP_PASSES + 4}}
    train["inputs"]["model"] = ["90", 0]
    stopped = server.wait(server.queue(stopping))
    assert stopped["status"]["status_str"] == "error" and "Out of memory" in execution_error(stopped)

    prompt = tiny_prompt("resume_training", info, "my_lora", seed=5)
    assert node_of(prompt, "LoRATrain")[1]["inputs"]["resume_from"] == "my_lora"   # the workflow's own value
    node_of(prompt, "LoRATrain")[1]["inputs"]["resume_from"] = "resume_me"
    entry = run(server, prompt)
    summary = entry["outputs"][node_of(prompt, "LoRATrain")[0]]["text"][0]
    assert "run resume_me, resumed at step 3" in summary and "trained 9 step(s)" in summary, summary
    assert os.path.isfile(os.path.join(server.base_dir, "models", "loras", "resume_me.safetensors"))


def test_compare_epochs_samples_every_saved_file_side_by_side(server, info):
    training = tiny_prompt("train_sd15_lora", info, "epochs_tiny", epochs=2, save_every_n_epochs=1)
    run(server, training)
    saved = ["epochs_tiny-000001.safetensors", "epochs_tiny.safetensors"]
    prompt = tiny_prompt("compare_epochs", info, "unused")
    loaders = [node for node in prompt.values() if node["class_type"] == "LoraLoader"]
    assert [node["inputs"]["lora_name"] for node in loaders] == [
        "my_lora-000002.safetensors", "my_lora-000004.safetensors", "my_lora-000006.safetensors",
        "my_lora-000008.safetensors", "my_lora.safetensors"]
    for index, node in enumerate(loaders):
        node["inputs"]["lora_name"] = saved[min(index, len(saved) - 1)]
    entry = run(server, prompt)
    pictures, spacing = 1 + len(loaders), node_of(prompt, "ImageStitch")[1]["inputs"]["spacing_width"]
    # one picture: the base model, then one per LoRA, side by side
    assert saved_picture_sizes(server, entry, node_of(prompt, "SaveImage")[0]) == [
        (pictures * 64 + (pictures - 1) * spacing, 64)]
    seeds = {node["inputs"]["seed"] for node in prompt.values() if node["class_type"] == "KSampler"}
    assert len(seeds) == 1, seeds
