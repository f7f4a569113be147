"""Writes example_workflows/*.json, the templates ComfyUI's template browser lists for this pack.

Each graph is declared once below: its nodes in columns (left to right, each stacked top-down, so nothing
overlaps), titles, sizes, the widget values that differ from the node's defaults, and its wires. The widget
order and every other value come from a live server's /object_info, so the files line up with the nodes as
they are now; re-run this after a node gains or loses an input. Run it with the oldest ComfyUI the pack
supports (newer ones add outputs, e.g. SaveImage's IMAGE, that older frontends would show as extra sockets):

    COMFYUI_PATH=~/ComfyUI ~/ComfyUI/.venv/bin/python scripts/build_example_workflow.py

Then scripts/make_template_thumbnails.py draws each one's <name>.jpg. tests/comfyui/test_example_workflows.py
checks the files against a live server's /object_info and queues some of them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "example_workflows")

SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
# the file names ComfyUI's own Flux.1 dev, SD3.5 and Qwen-Image example workflows load
FLUX_FILES = {"unet": "flux1-dev.safetensors", "clip_l": "clip_l.safetensors", "t5": "t5xxl_fp16.safetensors",
              "vae": "ae.safetensors"}
SD35_FILES = {"ckpt": "sd3.5_medium.safetensors", "clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors",
              "t5": "t5xxl_fp16.safetensors"}
QWEN_FILES = {"unet": "qwen_image_fp8_e4m3fn.safetensors", "clip": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
              "vae": "qwen_image_vae.safetensors"}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_NAMES = ("seed", "noise_seed")        # older frontends add the seed control by name, newer by a flag
SEED_CONTROL = "fixed"                     # a template should sample the same picture every queue

# body sizes (the title bar is drawn above `pos`), from the frontend's computeSize() in frontends 1.27 and 1.49
# with this pack's web/ views, rounded up; image nodes get room for their picture. make_template_thumbnails.py
# names any node the frontend needs more room for.
SIZES = {
    "CheckpointLoaderSimple": (350, 100), "LoRALoadDatasetFolder": (350, 580), "LoRABucketCacheLatents": (330, 470),
    "LoRAConfigure": (330, 370), "LoRAOptimizer": (330, 546), "LoRATrain": (400, 1588),
    "LoRASaveSafetensors": (400, 200), "PreviewImage": (400, 420), "CLIPTextEncode": (400, 200),
    "EmptyLatentImage": (330, 110), "KSampler": (330, 262), "VAEDecode": (210, 50), "SaveImage": (400, 430),
    "LoraLoader": (330, 126), "ImageStitch": (300, 150), "UNETLoader": (350, 110), "DualCLIPLoader": (350, 130),
    "TripleCLIPLoader": (350, 130), "CLIPLoader": (350, 110), "VAELoader": (350, 60),
    "EmptySD3LatentImage": (330, 110), "FluxGuidance": (330, 60),
}
TITLE_HEIGHT, ROW_GAP, COLUMN_GAP, MARGIN = 30, 40, 60, 40
# ImageStitch (core, in every supported ComfyUI) puts two pictures side by side in one; ImageBatch would only
# batch them, and newer ComfyUI marks it deprecated
SIDE_BY_SIDE = {"direction": "right", "match_image_size": True, "spacing_width": 8, "spacing_color": "white"}


@dataclass
class Node:
    """One node of a declaration. `wires` maps an input to "<source key>.<output name>"; `values` holds the
    widget values that differ from the node's defaults; `top` pins the node's y (rows across columns)."""

    key: str
    type: str
    values: dict = field(default_factory=dict)
    wires: dict = field(default_factory=dict)
    title: str | None = None
    size: tuple[int, int] | None = None
    top: int | None = None


def note(key: str, text: str, size: tuple[int, int] = (400, 300), top: int | None = None) -> Node:
    return Node(key, "Note", {"text": text}, size=size, top=top)


# ---------------------------------------------------------------------------------------------- the training graph

@dataclass
class Preview:
    """KSampler previews with the trained MODEL and CLIP: one per (prompt title, text, sampler title), side by
    side in one saved picture when there are several."""

    prompts: list[tuple[str, str, str]]
    size: int
    filename_prefix: str = "lora_preview"
    sampler: dict = field(default_factory=lambda: {"seed": 0, "steps": 25, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal"})
    latent: str = "EmptyLatentImage"        # flow models: EmptySD3LatentImage (16 channels)
    guidance: float | None = None           # Flux dev: FluxGuidance on the prompt


@dataclass
class Loaders:
    """Where MODEL, CLIP and VAE come from: one Load Checkpoint, or separate loaders (Flux, Qwen-Image...)."""

    nodes: list[Node]
    model: str = "ckpt.MODEL"
    clip: str = "ckpt.CLIP"
    vae: str = "ckpt.VAE"


def checkpoint_loaders(checkpoint: str) -> Loaders:
    return Loaders([Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": checkpoint})])


SD15_PREVIEW = [("Preview prompt", "a photo of sks dog", "Preview with the trained LoRA")]


def training_columns(notes: list[Node], checkpoint: str | Loaders, dataset: dict | None = None,
                     cache: dict | None = None, network: dict | None = None, optimizer: dict | None = None,
                     train: dict | None = None, preview: Preview | None = None,
                     save: bool = True) -> list[list[Node]]:
    """Checkpoint (or the family's loaders) -> dataset -> bucket & cache -> Configure LoRA + Optimizer -> Train ->
    save, the loss graph and the previews."""
    loaders = checkpoint if isinstance(checkpoint, Loaders) else checkpoint_loaders(checkpoint)
    columns = [
        notes + loaders.nodes + [Node("dataset", "LoRALoadDatasetFolder", dataset or {})],
        [Node("cache", "LoRABucketCacheLatents", cache or {}, {"dataset": "dataset.dataset", "vae": loaders.vae}),
         Node("network", "LoRAConfigure", network or {}),
         Node("optimizer", "LoRAOptimizer", optimizer or {})],
        [Node("train", "LoRATrain", train or {},
              {"model": loaders.model, "clip": loaders.clip, "latents": "cache.latents", "network": "network.network",
               "optimizer": "optimizer.optimizer", "vae": loaders.vae})],
    ]
    results = [Node("save", "LoRASaveSafetensors", {"precision": "fp16"}, {"lora": "train.lora"})] if save else []
    results.append(Node("loss", "PreviewImage", wires={"images": "train.loss_graph"}, title="Loss graph",
                        size=(400, 420) if preview is not None else (640, 560)))
    columns.append(results)
    if preview is not None:
        prompts, samplers, combined = preview_columns(preview, loaders.vae)
        results += prompts
        columns += [samplers] + ([combined] if combined else [])
    return columns


def preview_columns(preview: Preview, vae: str = "ckpt.VAE") -> tuple[list[Node], list[Node], list[Node]]:
    """The prompt nodes (under the loss graph), the samplers with their decoders, and the column that puts the
    pictures side by side (empty for one picture, which is saved under its decoder)."""
    prompts, samplers = [], []
    for index, (prompt_title, text, sampler_title) in enumerate(preview.prompts):
        prompts.append(Node(f"positive{index}", "CLIPTextEncode", {"text": text}, {"clip": "train.clip"}, prompt_title))
        positive = f"positive{index}.CONDITIONING"
        if preview.guidance is not None:
            prompts.append(Node(f"guidance{index}", "FluxGuidance", {"guidance": preview.guidance},
                                {"conditioning": positive}))
            positive = f"guidance{index}.CONDITIONING"
        samplers += [
            Node(f"sampler{index}", "KSampler", dict(preview.sampler),
                 {"model": "train.model", "positive": positive,
                  "negative": "negative.CONDITIONING", "latent_image": "latent.LATENT"}, sampler_title),
            Node(f"decode{index}", "VAEDecode", wires={"samples": f"sampler{index}.LATENT", "vae": vae}),
        ]
    prompts += [
        Node("negative", "CLIPTextEncode", {"text": "blurry, lowres" if preview.guidance is None else ""},
             {"clip": "train.clip"}, "Negative prompt"),
        Node("latent", preview.latent, {"width": preview.size, "height": preview.size}),
    ]
    combined, picture = [], "decode0.IMAGE"
    for index in range(1, len(preview.prompts)):
        combined.append(Node(f"stitch{index}", "ImageStitch", SIDE_BY_SIDE,
                             {"image1": picture, "image2": f"decode{index}.IMAGE"}, "Side by side"))
        picture = f"stitch{index}.IMAGE"
    saver = Node("image", "SaveImage", {"filename_prefix": preview.filename_prefix}, {"images": picture})
    (combined or samplers).append(saver)
    return prompts, samplers, combined


DATASET_NOTE = ("Dataset: put your images in ComfyUI/input/lora_dataset/10_sks dog/ (or set Load Dataset Folder's "
                "folder): 10 = repeats per epoch, 'sks dog' = the caption of images without a .txt beside them.")


def train_sd15_lora() -> list[list[Node]]:
    text = ("Train an SD1.5 LoRA.\n\n1. Load Checkpoint: pick your SD1.5 checkpoint.\n2. " + DATASET_NOTE +
            "\n3. Change Train's output_name if you like (default my_lora).\n4. Queue. The LoRA lands in "
            "models/loras/my_lora.safetensors; the loss graph and a KSampler preview with the LoRA show at the right.")
    return training_columns([note("note", text)], SD15_CHECKPOINT, preview=Preview(SD15_PREVIEW, 512))


def train_sdxl_lora() -> list[list[Node]]:
    text = ("Train an SDXL LoRA (SDXL base 1.0 and its fine-tunes; not the refiner).\n\n1. Load Checkpoint: pick "
            "your SDXL checkpoint.\n2. " + DATASET_NOTE + " SDXL trains at 1024: images of about a megapixel "
            "(buckets 512..2048).\n3. Settings as kohya users train SDXL: rank 16 / alpha 8, AdamW8bit at 1e-4, "
            "gradient checkpointing, latents cached to disk (.npz beside the images, reused next time), precision "
            "auto (bf16 on GPUs that have it). Out of memory: lower batch_size or rank.\n4. Queue. The LoRA lands "
            "in models/loras/my_sdxl_lora.safetensors; the KSampler previews it at "
            "1024x1024.")
    return training_columns(
        [note("note", text, (400, 380))], SDXL_CHECKPOINT,
        cache={"resolution": 1024, "min_bucket_reso": 512, "max_bucket_reso": 2048, "cache": "disk"},
        network={"rank": 16, "alpha": 8.0},
        optimizer={"optimizer_type": "AdamW8bit", "learning_rate": 1e-4, "lr_scheduler": "cosine"},
        train={"output_name": "my_sdxl_lora", "gradient_checkpointing": True, "precision": "auto"},
        preview=Preview(SD15_PREVIEW, 1024, "sdxl_lora_preview"))


# what FLOW_SETTINGS says, for each flow template: 1024 buckets cached on disk, kohya's usual LoRA and optimizer
FLOW_TRAINING = dict(cache={"resolution": 1024, "min_bucket_reso": 512, "max_bucket_reso": 2048, "cache": "disk"},
                     network={"rank": 16, "alpha": 16.0},
                     optimizer={"optimizer_type": "AdamW8bit", "learning_rate": 1e-4, "lr_scheduler": "constant"})
FLOW_SETTINGS = ("Settings as kohya trains {family} LoRAs: rank 16 / alpha 16, AdamW8bit at 1e-4, gradient "
                 "checkpointing, bf16, timestep_sampling auto ({sampling}); the text encoders are only used to "
                 "encode the captions once, then leave the GPU.")


def train_flux_lora() -> list[list[Node]]:
    text = ("Train a Flux.1 dev LoRA (kohya's key names: loads in ComfyUI, Forge and kohya).\n\n1. Load Diffusion "
            f"Model: {FLUX_FILES['unet']} (weight_dtype fp8_e4m3fn fits a 24 GB card; the LoRA trains in full "
            f"precision on top), DualCLIPLoader: {FLUX_FILES['clip_l']} + {FLUX_FILES['t5']} (type flux), Load "
            f"VAE: {FLUX_FILES['vae']}.\n2. " + DATASET_NOTE + " Flux trains at 1024 (buckets 512..2048).\n3. "
            + FLOW_SETTINGS.format(family="Flux", sampling="flux_shift, the resolution-dependent shift")
            + " guidance_scale 1.0 while training, as kohya's docs advise; the preview samples at guidance 3.5, "
            "cfg 1.\n4. Queue. The LoRA lands in models/loras/my_flux_lora.safetensors.")
    loaders = Loaders([Node("unet", "UNETLoader", {"unet_name": FLUX_FILES["unet"], "weight_dtype": "fp8_e4m3fn"}),
                       Node("clip", "DualCLIPLoader", {"clip_name1": FLUX_FILES["clip_l"],
                                                       "clip_name2": FLUX_FILES["t5"], "type": "flux"}),
                       Node("vae", "VAELoader", {"vae_name": FLUX_FILES["vae"]})],
                      model="unet.MODEL", clip="clip.CLIP", vae="vae.VAE")
    return training_columns(
        [note("note", text, (400, 480))], loaders,
        **FLOW_TRAINING,
        train={"output_name": "my_flux_lora", "gradient_checkpointing": True, "precision": "bf16"},
        preview=Preview(SD15_PREVIEW, 1024, "flux_lora_preview", guidance=3.5, latent="EmptySD3LatentImage",
                        sampler={"seed": 0, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}))


def train_sd35_lora() -> list[list[Node]]:
    text = ("Train an SD3.5 LoRA (Medium or Large; kohya's key names).\n\n1. Load Checkpoint: "
            f"{SD35_FILES['ckpt']} (or sd3.5_large), TripleCLIPLoader: {SD35_FILES['clip_l']} + "
            f"{SD35_FILES['clip_g']} + {SD35_FILES['t5']}.\n2. " + DATASET_NOTE + " SD3.5 trains at 1024.\n3. "
            + FLOW_SETTINGS.format(family="SD3.5", sampling="logit-normal with the model's shift 3.0")
            + "\n4. Queue. The LoRA lands in models/loras/my_sd35_lora.safetensors; the preview samples at cfg 4.5.")
    loaders = Loaders([Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD35_FILES["ckpt"]}),
                       Node("clip", "TripleCLIPLoader", {"clip_name1": SD35_FILES["clip_l"],
                                                         "clip_name2": SD35_FILES["clip_g"],
                                                         "clip_name3": SD35_FILES["t5"]})],
                      clip="clip.CLIP")
    return training_columns(
        [note("note", text, (400, 400))], loaders,
        **FLOW_TRAINING,
        train={"output_name": "my_sd35_lora", "gradient_checkpointing": True, "precision": "bf16"},
        preview=Preview(SD15_PREVIEW, 1024, "sd35_lora_preview", latent="EmptySD3LatentImage",
                        sampler={"seed": 0, "steps": 28, "cfg": 4.5, "sampler_name": "euler",
                                 "scheduler": "sgm_uniform"}))


def train_qwen_image_lora() -> list[list[Node]]:
    text = ("Train a Qwen-Image LoRA (lora_unet_ names of ComfyUI's and musubi-tuner's module paths, which ComfyUI "
            "loads).\n\n1. Load Diffusion Model: " + QWEN_FILES["unet"] + ", Load CLIP: " + QWEN_FILES["clip"]
            + " (type qwen_image), Load VAE: " + QWEN_FILES["vae"] + ".\n2. " + DATASET_NOTE
            + " Qwen-Image trains at 1024 (about 1328 natively). Its 20 B weights are 19 GiB in fp8: the computed"
            " training floor at 1024 is 23.7 GiB, so use a 32 GB card (benchmarks/RESULTS.md).\n3. "
            + FLOW_SETTINGS.format(family="Qwen-Image", sampling="shift, the model's own")
            + "\n4. Queue. The LoRA lands in models/loras/my_qwen_image_lora.safetensors.")
    loaders = Loaders([Node("unet", "UNETLoader", {"unet_name": QWEN_FILES["unet"], "weight_dtype": "default"}),
                       Node("clip", "CLIPLoader", {"clip_name": QWEN_FILES["clip"], "type": "qwen_image"}),
                       Node("vae", "VAELoader", {"vae_name": QWEN_FILES["vae"]})],
                      model="unet.MODEL", clip="clip.CLIP", vae="vae.VAE")
    return training_columns(
        [note("note", text, (400, 400))], loaders,
        **FLOW_TRAINING,
        train={"output_name": "my_qwen_image_lora", "gradient_checkpointing": True, "precision": "bf16"},
        preview=Preview(SD15_PREVIEW, 1024, "qwen_image_lora_preview", latent="EmptySD3LatentImage",
                        sampler={"seed": 0, "steps": 20, "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple"}))


def train_locon_with_regularization() -> list[list[Node]]:
    text = ("Train a LoCon (LoRA on the attention layers and the 3x3 convolutions, at its own conv rank / conv "
            "alpha) with regularization images, as DreamBooth does.\n\n1. Load Checkpoint: pick your SD1.5 "
            "checkpoint.\n2. " + DATASET_NOTE)
    regularization = ("Regularization images keep the class ('dog') from turning into your subject: put pictures "
                      "of the class made by the same base model in ComfyUI/input/lora_reg/1_dog/ (the folder set "
                      "in Load Dataset Folder's regularization_folder). 1 = repeats, 'dog' = the class word as the "
                      "caption (no trigger word). As kohya does, they are balanced against the training images "
                      "(as many reg samples per epoch as training samples) and weighted by Train's "
                      "prior_loss_weight (1.0).\n\nThe preview samples the trigger and the bare class side by side: "
                      "the second should still be an ordinary dog.")
    trigger_and_class = SD15_PREVIEW + [("Class prompt (should stay a dog)", "a photo of dog",
                                         "Class prompt with the LoRA")]
    return training_columns(
        [note("note", text, (400, 260)), note("reg_note", regularization, (400, 330))], SD15_CHECKPOINT,
        dataset={"regularization_folder": "lora_reg"},
        network={"algorithm": "LoCon", "rank": 16, "alpha": 8.0, "conv_rank": 8, "conv_alpha": 4.0},
        train={"output_name": "my_locon", "prior_loss_weight": 1.0},
        preview=Preview(trigger_and_class, 512, "locon_preview"))


def dadaptation_lr_finder() -> list[list[Node]]:
    text = ("Find a learning rate with DAdaptation (a short run; keep its LoRA or not).\n\nDAdaptAdam estimates "
            "the step size itself: learning_rate stays 1.0 and the scheduler constant. The run is 300 steps "
            "(epochs 0 = a length in steps).\n\n1. Load Checkpoint and dataset folder: the same as for your real "
            "training.\n2. Queue and watch the green effective-lr line (d x lr) on the Train node's chart and on "
            "the loss graph: it climbs, then levels off.\n3. The loss graph's header names its peak and a third of "
            "it (the dashed line). Put that third into learning_rate of an AdamW / AdamW8bit Optimizer in the "
            "training workflow (train_sd15_lora), constant or cosine, as the kohya_ss guide advises.")
    return training_columns(
        [note("note", text, (400, 400))], SD15_CHECKPOINT,
        optimizer={"optimizer_type": "DAdaptAdam", "learning_rate": 1.0, "text_encoder_lr": 1.0,
                   "lr_scheduler": "constant", "lr_warmup": 0.0},
        train={"output_name": "lr_finder", "epochs": 0, "max_steps": 300},
        save=False)


def resume_training() -> list[list[Node]]:
    text = ("Resume a stopped run exactly where it stopped.\n\nA run that was cancelled (Cancel), failed (an error, "
            "out of memory) or killed (ComfyUI closed, a crash) keeps a saved state in "
            "ComfyUI/output/lora-trainer/<run name>/state-<step>/: written when it is cancelled or stops on an error, "
            "and at each intermediate save (save_every_n_epochs / save_every_n_steps), which is all a killed run "
            "has.\n\n1. Train's resume_from: the run's name (here my_lora; its tooltip lists the runs that can "
            "resume).\n2. Keep every other setting as the run had it: checkpoint, dataset, bucket, network, "
            "optimizer, epochs / max_steps, batch size, seed, precision. Train names any that differ. Only the "
            "output name and how often it saves may change.\n3. Queue: it continues at the saved step and ends "
            "with the LoRA the uninterrupted run would have made (models/loras/my_lora.safetensors).\n\nA finished "
            "run cannot resume: to train it further, start a new run with Configure LoRA's continue_from.")
    return training_columns([note("note", text, (400, 560))], SD15_CHECKPOINT, train={"resume_from": "my_lora"},
                            preview=Preview(SD15_PREVIEW, 512))


EPOCH_FILES = ("my_lora-000002", "my_lora-000004", "my_lora-000006", "my_lora-000008", "my_lora")
COMPARE_NOTE = (
    "Compare the epochs of one run: the same prompt and seed with each saved LoRA, side by side in one picture, "
    "left to right: the base model without a LoRA, then each epoch.\n\n1. In the training workflow set Train's "
    "save_every_n_epochs (here 2, with epochs 10): the run my_lora then writes models/loras/"
    "my_lora-000002.safetensors, -000004, -000006, -000008 and, at the end, my_lora.safetensors.\n2. Load "
    "Checkpoint: the checkpoint you trained on.\n3. Each Load LoRA: one of your run's files, in epoch order (press "
    "R to refresh the lists after training).\n4. The prompt: the same text in every Prompt node (each is encoded "
    "with its own LoRA's CLIP).\n5. Queue.")


def comparison_row(index: int, file_name: str | None, label: str, top: int) -> list[Node | None]:
    """One picture of the comparison: [LoRA loader (None for the base model), prompt, sampler, decode, stitch
    onto the pictures before it (None for the first)]."""
    model, clip = ("ckpt.MODEL", "ckpt.CLIP") if file_name is None else (f"lora{index}.MODEL", f"lora{index}.CLIP")
    loader = None if file_name is None else Node(
        f"lora{index}", "LoraLoader", {"lora_name": f"{file_name}.safetensors"},
        {"model": "ckpt.MODEL", "clip": "ckpt.CLIP"}, f"Load LoRA: {label}", top=top)
    prompt = Node(f"prompt{index}", "CLIPTextEncode", {"text": "a photo of sks dog"}, {"clip": clip},
                  f"Prompt ({label})", top=top)
    sampler = Node(f"sampler{index}", "KSampler",
                   {"seed": 42, "steps": 25, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"},
                   {"model": model, "positive": f"prompt{index}.CONDITIONING", "negative": "negative.CONDITIONING",
                    "latent_image": "latent.LATENT"}, f"Sample: {label}", top=top)
    decode = Node(f"decode{index}", "VAEDecode", wires={"samples": f"sampler{index}.LATENT", "vae": "ckpt.VAE"},
                  top=top)
    so_far = "decode0.IMAGE" if index == 1 else f"stitch{index - 1}.IMAGE"
    stitch = None if index == 0 else Node(f"stitch{index}", "ImageStitch", SIDE_BY_SIDE,
                                          {"image1": so_far, "image2": f"decode{index}.IMAGE"}, f"+ {label}", top=top)
    return [loader, prompt, sampler, decode, stitch]


def compare_epochs() -> list[list[Node]]:
    labels = [f"epoch {int(name.rsplit('-', 1)[1])}" if "-" in name else "final" for name in EPOCH_FILES]
    rows = [(None, "base model (no LoRA)")] + list(zip(EPOCH_FILES, labels))
    row_pitch = SIZES["KSampler"][1] + TITLE_HEIGHT + ROW_GAP
    cells = [comparison_row(index, file_name, label, MARGIN + TITLE_HEIGHT + index * row_pitch)
             for index, (file_name, label) in enumerate(rows)]
    middle = [[row[column] for row in cells if row[column] is not None] for column in range(5)]
    left = [note("note", COMPARE_NOTE, (400, 470)),
            Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD15_CHECKPOINT}),
            Node("negative", "CLIPTextEncode", {"text": "blurry, lowres"}, {"clip": "ckpt.CLIP"}, "Negative prompt"),
            Node("latent", "EmptyLatentImage", {"width": 512, "height": 512})]
    save = Node("image", "SaveImage", {"filename_prefix": "compare_epochs"}, {"images": f"stitch{len(rows) - 1}.IMAGE"},
                "Epochs side by side", size=(720, 560))
    return [left, *middle, [save]]


WORKFLOWS = {
    "train_sd15_lora": train_sd15_lora,
    "train_sdxl_lora": train_sdxl_lora,
    "train_locon_with_regularization": train_locon_with_regularization,
    "dadaptation_lr_finder": dadaptation_lr_finder,
    "resume_training": resume_training,
    "compare_epochs": compare_epochs,
    "train_flux_lora": train_flux_lora,
    "train_sd35_lora": train_sd35_lora,
    "train_qwen_image_lora": train_qwen_image_lora,
}


# ---------------------------------------------------------------------------------- from a declaration to the file

def widget_names(definition: dict) -> list[str]:
    """The inputs a node type shows as widgets, in the order of a workflow's widgets_values."""
    specs = {**definition["input"]["required"], **definition["input"].get("optional", {})}
    order = definition["input_order"]["required"] + definition["input_order"].get("optional", [])
    return [name for name in order if (isinstance(specs[name][0], list) or specs[name][0] in WIDGET_TYPES)
            and not (len(specs[name]) > 1 and specs[name][1].get("forceInput"))]


def socket_names(definition: dict) -> list[str]:
    """The inputs a node type shows as sockets (everything that is not a widget), in order."""
    order = definition["input_order"]["required"] + definition["input_order"].get("optional", [])
    widgets = set(widget_names(definition))
    return [name for name in order if name not in widgets]


def has_seed_control(name: str, spec: list) -> bool:
    return spec[0] == "INT" and (name in SEED_NAMES or (len(spec) > 1 and bool(spec[1].get("control_after_generate"))))


def default_value(spec: list):
    options = spec[0] if isinstance(spec[0], list) else (spec[1].get("options") if spec[0] == "COMBO" else None)
    settings = spec[1] if len(spec) > 1 else {}
    if "default" in settings:
        return settings["default"]
    if options is not None:
        return options[0] if options else None         # a file list may be empty: the declaration names one
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec[0])


def widgets_values(node: Node, definition: dict | None) -> list:
    if node.type == "Note":
        return [node.values["text"]]
    specs = {**definition["input"]["required"], **definition["input"].get("optional", {})}
    names = widget_names(definition)
    unknown = set(node.values) - set(names)
    if unknown:
        raise ValueError(f"{node.key} ({node.type}): no widget named {sorted(unknown)}; widgets are {names}")
    values = []
    for name in names:
        value = node.values[name] if name in node.values else default_value(specs[name])
        if value is None:
            raise ValueError(f"{node.key} ({node.type}): {name} has no default, the declaration must give one")
        values.append(value)
        if has_seed_control(name, specs[name]):
            values.append(SEED_CONTROL)
    return values


def place(columns: list[list[Node]]) -> dict[str, tuple[list[int], list[int]]]:
    """Each node's pos and size: columns left to right, nodes stacked down a column (or at their `top`)."""
    placed, x = {}, MARGIN
    for column in columns:
        y = MARGIN + TITLE_HEIGHT
        for node in column:
            size = list(node.size or SIZES[node.type])
            if node.top is not None:
                if node.top < y:
                    raise ValueError(f"{node.key}: top {node.top} would overlap the node above it (free from {y})")
                y = node.top
            placed[node.key] = ([x, y], size)
            y += size[1] + TITLE_HEIGHT + ROW_GAP
        x += max(placed[node.key][1][0] for node in column) + COLUMN_GAP
    return placed


def wire(nodes: list[Node], ids: dict[str, int], info: dict) -> tuple[list[list], dict, dict]:
    """The links ([id, source id, slot, target id, target slot, type]), each output's link ids and each wired
    input's link id."""
    by_key = {node.key: node for node in nodes}
    links, outgoing, incoming = [], {}, {}
    for node in nodes:
        sockets = socket_names(info[node.type]) if node.type != "Note" else []
        for name, source in node.wires.items():
            if name not in sockets:
                raise ValueError(f"{node.key} ({node.type}): no socket input {name!r}; sockets are {sockets}")
            source_key, output_name = source.split(".")
            source_info = info[by_key[source_key].type]
            slot = source_info["output_name"].index(output_name)
            link_id = len(links) + 1
            links.append([link_id, ids[source_key], slot, ids[node.key], sockets.index(name),
                          source_info["output"][slot]])
            outgoing.setdefault((source_key, slot), []).append(link_id)
            incoming[(node.key, name)] = link_id
    return links, outgoing, incoming


def sockets_and_outputs(node: Node, definition: dict, outgoing: dict, incoming: dict) -> dict:
    specs = {**definition["input"]["required"], **definition["input"].get("optional", {})}
    return {
        "inputs": [{"name": name, "type": specs[name][0], "link": incoming.get((node.key, name))}
                   for name in socket_names(definition)],
        "outputs": [{"name": name, "type": kind, "links": outgoing.get((node.key, slot), []), "slot_index": slot}
                    for slot, (name, kind) in enumerate(zip(definition["output_name"], definition["output"]))],
        "properties": {"Node name for S&R": node.type},
    }


def build(columns: list[list[Node]], info: dict) -> dict:
    """The workflow in the frontend's format (version 0.4): nodes with their sockets, widget values and links."""
    nodes = [node for column in columns for node in column]
    ids = {node.key: index for index, node in enumerate(nodes, start=1)}
    placed = place(columns)
    links, outgoing, incoming = wire(nodes, ids, info)
    serialized = []
    for order, node in enumerate(nodes):
        definition = info.get(node.type)                       # None for the frontend's own Note
        pos, size = placed[node.key]
        item = {"id": ids[node.key], "type": node.type, "pos": pos, "size": size, "flags": {}, "order": order,
                "mode": 0, "inputs": [], "outputs": [], "properties": {}}
        if definition is not None:
            item.update(sockets_and_outputs(node, definition, outgoing, incoming))
        item["widgets_values"] = widgets_values(node, definition)
        if node.title:
            item["title"] = node.title
        serialized.append(item)
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": serialized, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def live_object_info() -> dict:
    """/object_info of a throwaway server with this pack (tests/comfyui/server.py), in COMFYUI_PATH's checkout."""
    sys.path.insert(0, REPO_ROOT)
    from tests.comfyui.server import ComfyServer

    with tempfile.TemporaryDirectory(prefix="lora-trainer-workflows-") as base:
        server = ComfyServer(base).start()
        try:
            return server.get("/object_info")
        finally:
            server.stop()


def main() -> None:
    info = live_object_info()
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, declare in WORKFLOWS.items():
        path = os.path.join(OUT_DIR, f"{name}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(build(declare(), info), handle, indent=1)
            handle.write("\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
