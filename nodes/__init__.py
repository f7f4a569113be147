"""ComfyUI side of the pack: one module per node; the only code that imports ComfyUI."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .bucket_cache import LoRABucketCacheLatents
from .configure_lora import LoRAConfigure
from .dataset_from_images import LoRADatasetFromImages
from .load_dataset import LoRALoadDatasetFolder
from .optimizer import LoRAOptimizer
from .save_safetensors import LoRASaveSafetensors
from .train import LoRATrain

NODE_CLASSES: list[type[io.ComfyNode]] = [
    LoRALoadDatasetFolder,
    LoRADatasetFromImages,
    LoRABucketCacheLatents,
    LoRAConfigure,
    LoRAOptimizer,
    LoRATrain,
    LoRASaveSafetensors,
]


class LoRATrainerExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)

