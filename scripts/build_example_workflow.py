"""Writes example_workflows/train_sd15_lora.json, the template ComfyUI lists for this pack.

The graph is declared once here (nodes, widget values, wires) and written in the frontend's workflow
format, so positions, ids and links stay consistent. Run: python scripts/build_example_workflow.py
tests/comfyui/test_workflow_server.py checks the file against a live server's /object_info.
"""

from __future__ import annotations

import json
import os

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example_workflows",
                   "train_sd15_lora.json")

# id: (type, title, position, size, widget values, {input name: (source id, output slot)})
NODES = {
    1: ("CheckpointLoaderSimple", None, (40, 80), (330, 100), ["v1-5-pruned-emaonly.safetensors"], {}),
    2: ("LoRALoadDatasetFolder", None, (40, 260), (330, 520),
        ["lora_dataset", ".txt", "", "", False, 0, "", ",", "", 0.0, 0, 0.0, "", "", False, False, False, False],
        {}),
    3: ("LoRABucketCacheLatents", None, (420, 260), (330, 330),
        [512, 256, 1024, 64, False, 1, "memory", "auto", "on white", True],
        {"dataset": (2, 0), "vae": (1, 2)}),
    4: ("LoRAConfigure", None, (420, 660), (330, 250),
        ["LoRA", 8, 1.0, 1, 1.0, 0.0, 0.0, 0.0, "unet", False, -1, False, 1, "(none)"], {}),
    5: ("LoRAOptimizer", None, (420, 960), (330, 600),
        ["AdamW8bit", 0.0001, -1.0, -1.0, -1.0, "cosine", 0.1, 1.0, 0.0001, 0.0, -1.0, -1.0, "default", "default",
         "default", "default", "", 0, 1, 1.0], {}),
    6: ("LoRATrain", None, (800, 80), (360, 360),
        ["my_lora", 10, 0, 1, 42, "auto", 0, "", 1.0, 1, False, "75", 0.0, 0, 0,
         "l2", "snr", 0.1, 1.0, 0.0, False, False, 0.0, 0.0, False, 0.0, 0, 0.3, 0.0, False, 0, 1000, False,
         0.0, -1, 0, 1, "", 0, 0, "euler", "normal"],
        {"model": (1, 0), "clip": (1, 1), "latents": (3, 0), "network": (4, 0), "optimizer": (5, 0), "vae": (1, 2)}),
    7: ("LoRASaveSafetensors", None, (1220, 80), (320, 150), ["", "fp16", ""], {"lora": (6, 2)}),
    8: ("PreviewImage", "Loss graph", (1220, 240), (320, 260), [], {"images": (6, 3)}),
    9: ("CLIPTextEncode", "Preview prompt", (1220, 560), (400, 160), ["a photo of sks dog"], {"clip": (6, 1)}),
    10: ("CLIPTextEncode", "Negative prompt", (1220, 760), (400, 160), ["blurry, lowres"], {"clip": (6, 1)}),
    11: ("EmptyLatentImage", None, (1220, 960), (320, 110), [512, 512, 1], {}),
    12: ("KSampler", "Preview with the trained LoRA", (1680, 80), (320, 480),
         [0, "fixed", 25, 7.0, "euler", "normal", 1.0],
         {"model": (6, 0), "positive": (9, 0), "negative": (10, 0), "latent_image": (11, 0)}),
    13: ("VAEDecode", None, (2040, 80), (210, 50), [], {"samples": (12, 0), "vae": (1, 2)}),
    14: ("SaveImage", None, (2040, 200), (360, 400), ["lora_preview"], {"images": (13, 0)}),
}

# output names and types of each node type used above, in slot order
OUTPUTS = {
    "CheckpointLoaderSimple": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "LoRALoadDatasetFolder": [("dataset", "LORA_DATASET")],
    "LoRABucketCacheLatents": [("latents", "LORA_LATENTS")],
    "LoRAConfigure": [("network", "LORA_NETWORK")],
    "LoRAOptimizer": [("optimizer", "LORA_OPTIMIZER")],
    "LoRATrain": [("model", "MODEL"), ("clip", "CLIP"), ("lora", "TRAINED_LORA"), ("loss_graph", "IMAGE"),
                  ("summary", "STRING")],
    "LoRASaveSafetensors": [],
    "PreviewImage": [],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "EmptyLatentImage": [("LATENT", "LATENT")],
    "KSampler": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "SaveImage": [],
}

NOTE = ("1. Put your images in ComfyUI/input/lora_dataset/10_sks dog/ (10 = repeats, 'sks dog' = caption for "
        "images without a .txt).\n2. Pick an SD1.5 checkpoint.\n3. Queue. The LoRA lands in models/loras as "
        "my_lora.safetensors; the KSampler previews it.")


def build() -> dict:
    links, link_id = [], 0
    inputs_of: dict[int, list] = {node_id: [] for node_id in NODES}
    outputs_links: dict[tuple[int, int], list[int]] = {}
    for node_id, (_, _, _, _, _, wires) in NODES.items():
        for name, (source, slot) in wires.items():
            link_id += 1
            wire_type = OUTPUTS[NODES[source][0]][slot][1]
            links.append([link_id, source, slot, node_id, len(inputs_of[node_id]), wire_type])
            inputs_of[node_id].append({"name": name, "type": wire_type, "link": link_id})
            outputs_links.setdefault((source, slot), []).append(link_id)
    nodes = []
    for order, (node_id, (node_type, title, pos, size, widgets, _)) in enumerate(NODES.items()):
        node = {
            "id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "flags": {}, "order": order,
            "mode": 0, "inputs": inputs_of[node_id],
            "outputs": [{"name": name, "type": wire_type, "links": outputs_links.get((node_id, slot), []),
                         "slot_index": slot} for slot, (name, wire_type) in enumerate(OUTPUTS[node_type])],
            "properties": {"Node name for S&R": node_type}, "widgets_values": widgets,
        }
        if title:
            node["title"] = title
        nodes.append(node)
    nodes.append({"id": 15, "type": "Note", "pos": [40, 820], "size": [330, 200], "flags": {}, "order": len(nodes),
                  "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [NOTE]})
    return {"last_node_id": 15, "last_link_id": link_id, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


if __name__ == "__main__":
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as handle:
        json.dump(build(), handle, indent=1)
        handle.write("\n")
    print(f"wrote {OUT}")
