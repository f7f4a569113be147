"""The pack's wire types. The strings are a public contract: saved workflows reference them."""

from comfy_api.latest import io

LoraDataset = io.Custom("LORA_DATASET")
LoraLatents = io.Custom("LORA_LATENTS")
LoraNetwork = io.Custom("LORA_NETWORK")
LoraOptimizer = io.Custom("LORA_OPTIMIZER")
TrainedLora = io.Custom("TRAINED_LORA")

CATEGORY = "LoRA Trainer"
