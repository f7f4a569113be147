"""Training memory of the flow-matching families at full size, computed on a machine without a GPU.

Each part is counted on ComfyUI's own full-size model (comfy.supported_models.*, the configs ComfyUI derives from
the released checkpoints: tests/comfyui/tiny_models_pack/tiny_models.py FULL_SIZE_DITS) built on the meta device, so shapes and dtypes are real and no weights are allocated:

    weights      the DiT's parameters as stored: bf16, or fp8 (UNETLoader's weight_dtype fp8_e4m3fn)
    LoRA         rank 16 on the family's targets (the Train node's): fp32 weights, their gradients and AdamW's
                 two fp32 moments, 16 bytes a parameter
    activations  what one training forward keeps for the backward, in the bf16 compute dtype: the distinct
                 storages autograd saves (saved_tensors_hooks; ComfyUI's fp8 manual cast makes a bf16 copy of
                 each weight for its layer, and the backward keeps that copy: counted). With gradient
                 checkpointing of the DiT blocks (the Train node's): the blocks' inputs and what lies outside
                 them, plus the largest block's own activations, which its recomputation brings back. The
                 forward runs as training runs it (nodes/comfy_flow.py training_mode: each layer norm's input
                 copied, because ComfyUI's blocks add residuals in place).

Not counted: the backward's passing gradients and the attention / matmul workspaces, the CUDA context (about
0.5 GiB), allocator slack; and the text encoders and VAE, which the trainer releases from the device once latents
and captions are cached. A real peak is above this sum: it is the floor a setting needs, not a promise; where a
GPU is lent, benchmarks/gpu.sh measures the peak.

Run from the repository root with a ComfyUI checkout's Python:
    COMFYUI_PATH=~/ComfyUI ~/ComfyUI/.venv/bin/python -m benchmarks.flow_memory [--families flux_dev,sd35_large]
        [--sides 512,1024] [--batch 1] [--rank 16] [--markdown] [--smoke]
--smoke: the tests' tiny models at 64 px (seconds), to try the script.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from unittest import mock

import torch

GIB = 1024 ** 3
LORA_BYTES_PER_PARAMETER = 16
COMPUTE_DTYPE = torch.bfloat16
WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}

# each full-size DiT (tests/comfyui/tiny_models_pack/tiny_models.py FULL_SIZE_DITS): its text context's (length,
# width) for a short caption, the length ComfyUI's tokenizers pad to (Flux: T5 256; SD3: CLIP 77 + T5 77; Wan: umT5
# 512; Qwen-Image pads nothing: a 32-token caption), and its pooled vector's width
TEXT_INPUTS = {"flux_dev": ((256, 4096), 768), "sd35_large": ((154, 4096), 2048), "sd35_medium": ((154, 4096), 2048),
               "qwen_image": ((32, 3584), None), "wan21_14b": ((512, 4096), None)}
SMOKE = ("flux_dev", "sd35_medium", "qwen_image")     # the tests' tiny models of these


def smoke_inputs(tiny, family: str) -> tuple[str, tuple[int, int], int | None]:
    """The recipe name of a family's tiny model, its context's (length, width) and pooled width."""
    if family == "flux_dev":
        return "flux", (8, tiny.FLOW_T5["d_model"]), tiny.FLOW_CLIP["hidden_size"]
    if family == "sd35_medium":
        return "sd3", (8, tiny.SD3_CONTEXT_WIDTH), 2 * tiny.FLOW_CLIP["projection_dim"]
    return "qwen_image", (8, tiny.QWEN_TEXT["hidden_size"]), None


@dataclass(frozen=True)
class Row:
    family: str
    weights: str
    side: int
    batch: int
    checkpointing: bool
    weight_bytes: int
    lora_bytes: int
    activation_bytes: int

    @property
    def total(self) -> int:
        return self.weight_bytes + self.lora_bytes + self.activation_bytes


class SavedStorages:
    """The distinct storages one forward keeps for its backward, on the meta device: a meta tensor's storage has
    its size but no address, so storages are told apart by their StorageImpl (`_cdata`), which views share. The
    model's own parameters are not activations. Each storage is charged to the checkpointed block whose forward
    first kept it; a block's inputs are noted as it starts (what checkpointing keeps for the recomputation)."""

    def __init__(self, model: torch.nn.Module, blocks: list[torch.nn.Module]):
        self.excluded = {p.untyped_storage()._cdata for p in model.parameters()}
        self.blocks = blocks
        self.sizes: dict[int, int] = {}
        self.block_of: dict[int, int] = {}          # storage -> the block that kept it (absent: outside blocks)
        self.inputs: set[int] = set()               # storages that are some block's input
        self.inside: list[int] = []
        self.alive: list[torch.Tensor] = []         # held while counting, so no StorageImpl address is reused

    def _note(self, tensor) -> int | None:
        if not torch.is_tensor(tensor):
            return None
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.excluded:
            return None
        if key not in self.sizes:
            self.sizes[key] = storage.nbytes()
            self.alive.append(tensor)
            if self.inside:
                self.block_of[key] = self.inside[0]
        return key

    def pack(self, tensor):
        self._note(tensor)
        return tensor

    def block_starts(self, module, args, kwargs) -> None:
        if not self.inside:
            for value in (*args, *kwargs.values()):
                key = self._note(value)
                if key is not None:
                    self.inputs.add(key)
        self.inside.append(id(module))

    def block_ends(self, module, args, output) -> None:
        self.inside.pop()

    def count(self, forward) -> "SavedStorages":
        hooks = [hook for block in self.blocks
                 for hook in (block.register_forward_pre_hook(self.block_starts, with_kwargs=True),
                              block.register_forward_hook(self.block_ends))]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor):
                forward()
        finally:
            for hook in hooks:
                hook.remove()
        return self

    def without_checkpointing(self) -> int:
        return sum(self.sizes.values())

    def with_checkpointing(self) -> int:
        """What lies outside the blocks, the blocks' inputs, and the largest block's own activations."""
        per_block: dict[int, int] = {}
        kept = 0
        for key, size in self.sizes.items():
            if key in self.inputs or key not in self.block_of:
                kept += size
            else:
                per_block[self.block_of[key]] = per_block.get(self.block_of[key], 0) + size
        return kept + max(per_block.values(), default=0)


class FlashAttentionSaves(torch.autograd.Function):
    """Attention as a GPU's fused (flash / memory-efficient) kernel keeps it for the backward: q, k, v, the output
    and one fp32 log-sum-exp per query. On the meta device PyTorch's SDPA takes the math path, whose saved
    attention matrix (heads x tokens^2) a training GPU never holds."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q.expand(*q.shape[:-1], v.shape[-1]))
        logsumexp = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("counting only")


def flash_like_attention(q, k, v, *args, **kwargs):
    return FlashAttentionSaves.apply(q, k, v)


def start():
    """ComfyUI as a library on the CPU, the pack, the tests' tiny-model recipes; the pack's modules used here."""
    from tests.comfyui import harness

    reason = harness.missing_reason()
    if reason:
        sys.exit(reason)
    harness.bootstrap(cpu=True)
    harness.load_pack()
    tiny = harness.load_tiny_models()
    flow, networks, adapter = (importlib.import_module(f"{harness.PACK_MODULE}.{name}")
                               for name in ("nodes.comfy_flow", "trainer.networks", "nodes.comfy_model"))
    return tiny, flow, networks, adapter


def meta_model(tiny, family: str, weights: str, smoke: bool):
    import comfy.supported_models as models

    dtype = WEIGHT_DTYPES[weights]
    cast = COMPUTE_DTYPE if dtype != COMPUTE_DTYPE else None
    if not smoke:
        return tiny.full_size_dit(family, device="meta", dtype=dtype, manual_cast_dtype=cast).model
    recipe = smoke_inputs(tiny, family)[0]
    config_class = {"flux": models.Flux, "sd3": models.SD3, "qwen_image": models.QwenImage}[recipe]
    unet_config = getattr(tiny, f"{recipe}_unet_config")()
    return tiny.model_on(config_class, unet_config, device="meta", dtype=dtype, manual_cast_dtype=cast).model


def measure(tiny, flow, networks, adapter, family: str, weights: str, side: int, batch: int, rank: int,
            smoke: bool) -> tuple[Row, Row]:
    base = meta_model(tiny, family, weights, smoke)
    record = flow.flow_family_of(base)
    targets = flow.flow_targets(base, record)
    blocks = flow.flow_checkpoint_blocks(base, record, targets)
    unet = base.diffusion_model
    config = networks.NetworkConfig("LoRA", rank=rank, alpha=rank).validated()
    network = networks.LoRANetwork(targets, config)
    lora_parameters = sum(p.numel() for p in network.parameters())
    # bf16 on the meta device stands for the run's bf16 autocast (which casts the fp32 LoRA weights for each
    # matmul and keeps bf16 inputs), since autocast has no meta device
    network.to(device="meta", dtype=COMPUTE_DTYPE)
    weight_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    (length, width), pooled_width = (smoke_inputs(tiny, family)[1:] if smoke else TEXT_INPUTS[family])
    latent = side // 8
    video = flow.is_video_shaped(base)
    shape = (batch, 16, 1, latent, latent) if video else (batch, 16, latent, latent)
    x = torch.zeros(shape, device="meta", dtype=COMPUTE_DTYPE)
    kwargs = {"context": torch.zeros(batch, length, width, device="meta", dtype=COMPUTE_DTYPE),
              "transformer_options": adapter.training_attention()}       # SDPA, as training runs
    if pooled_width:
        kwargs["y"] = torch.zeros(batch, pooled_width, device="meta", dtype=COMPUTE_DTYPE)
    if record.key == "flux1_dev":
        kwargs["guidance"] = torch.ones(batch, device="meta", dtype=COMPUTE_DTYPE)
    timesteps = torch.full((batch,), 0.5, device="meta", dtype=COMPUTE_DTYPE)
    saved = SavedStorages(unet, blocks)
    import comfy.ops

    no_autocast = mock.patch.object(torch, "is_autocast_enabled", lambda *device_type: False)
    fused_attention = mock.patch.object(comfy.ops, "scaled_dot_product_attention", flash_like_attention)
    with network.attached(targets), flow.training_mode(unet), no_autocast, fused_attention, torch.enable_grad():
        saved.count(lambda: unet(x, timesteps, **kwargs))
    lora_bytes = lora_parameters * LORA_BYTES_PER_PARAMETER
    rows = tuple(Row(family, weights, side, batch, checkpointing, weight_bytes, lora_bytes,
                     saved.with_checkpointing() if checkpointing else saved.without_checkpointing())
                 for checkpointing in (False, True))
    return rows


def print_rows(rows: list[Row], markdown: bool, unit: str = "GiB") -> None:
    scale = GIB if unit == "GiB" else 1024 ** 2
    header = ("family", "weights", "side", "batch", "checkpointing", f"weights {unit}", f"LoRA+AdamW {unit}",
              f"activations {unit}", f"sum {unit}")
    lines = [[row.family, row.weights, str(row.side), str(row.batch), "yes" if row.checkpointing else "no",
              *(f"{value / scale:.2f}" for value in (row.weight_bytes, row.lora_bytes, row.activation_bytes,
                                                      row.total))]
             for row in rows]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for line in lines:
            print("  ".join(value.ljust(w) for value, w in zip(line, widths)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="flux_dev,sd35_large,sd35_medium,qwen_image,wan21_14b")
    parser.add_argument("--weights", default="bf16,fp8")
    parser.add_argument("--sides", default="512,1024")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="the tests' tiny models at 64 px")
    args = parser.parse_args(argv)
    families = [name for name in args.families.split(",") if name]
    sides = [int(side) for side in args.sides.split(",")]
    if args.smoke:
        families, sides = [name for name in families if name in SMOKE] or list(SMOKE), [64]
    unknown = [name for name in families if name not in TEXT_INPUTS]
    if unknown:
        sys.exit(f"unknown families {unknown}; choose from {', '.join(TEXT_INPUTS)}")
    tiny, flow, networks, adapter = start()
    rows: list[Row] = []
    for family in families:
        for weights in args.weights.split(","):
            for side in sides:
                rows.extend(measure(tiny, flow, networks, adapter, family, weights, side, args.batch, args.rank,
                                    args.smoke))
    print_rows(rows, args.markdown, "MiB" if args.smoke else "GiB")


if __name__ == "__main__":
    main()
