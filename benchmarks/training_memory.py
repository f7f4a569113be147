"""Peak memory of the engine's training step against what it is made of, and against the engine's own estimate.

Parts, each measured on the run itself:
    weights      the UNet's parameters and buffers
    LoRA         the LoRA's parameters, their gradients (one per trainable parameter) and the optimizer's state
                 (AdamW's two moments, read from the optimizer after a warm-up step)
    activations  what the forward keeps for the backward: the distinct storages autograd saves
                 (torch.autograd.graph.saved_tensors_hooks during one step), the model's own weights excluded;
                 with gradient checkpointing, the checkpointed blocks' inputs that their recomputation needs,
                 plus the largest block's own activations (counted without checkpointing), which its
                 recomputation brings back during the backward
Measured peak: on CUDA torch.cuda.max_memory_allocated over two steps after a warm-up, less what was allocated
before the model was built; on a CPU the resident set's high-water mark (VmHWM, reset through
/proc/self/clear_refs, else VmRSS sampled in a thread) less the resident set before the model was built. Each
row runs in a fresh process, so one row's freed memory does not hide the next one's peak.
Estimate: trainer/memory.py `training_memory_estimate`, the bytes beyond the weights that the engine asks the
host to keep free, twice: with ComfyUI's SD1.5 forward estimate (model_base.memory_required, see
ComfyForwardEstimate; written for the full-width model, so it is meaningful for --full only) and with none (the
command line's diffusers models have no forward estimate: LoRA only).

Run from the repository root:
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.training_memory [--full] [--device cuda] [--batch 2]
        [--size 32] [--smoke]
--full: the real SD1.5 UNet (860M parameters) at 8x8 latents, batch 1 (about 4 GB of memory on a CPU).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch

from benchmarks.training_step import StepPair, diffusers_bench_model, diffusers_unet
from trainer.memory import training_memory_estimate
from trainer.plan import TrainSettings

MIB = 1024 * 1024
RANK = 16
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Config:
    """One row: a UNet layout (benchmarks/training_step.py's), the precision (the weights are held in it, as a
    host loads them for that precision), checkpointing, batch and latent side."""

    layout: str
    precision: str
    checkpointing: bool
    batch: int
    latent_side: int
    device: str

    @property
    def label(self) -> str:
        return f"{self.layout} | {self.precision} | {'on' if self.checkpointing else 'off'}"


def configs(args) -> list[Config]:
    if args.smoke:
        return [Config("sd15-tiny", "fp32", False, 1, 8, args.device)]
    layout, batch, side = ("sd15-full", 1, 8) if args.full else ("sd15", args.batch, args.size)
    rows = [("fp32", False), ("bf16", False), ("fp32", True)]
    return [Config(layout, precision, checkpointing, batch, side, args.device) for precision, checkpointing in rows]


# ---- memory meters ----------------------------------------------------------------------------------------------

def proc_status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024          # the kernel writes kB
    raise RuntimeError(f"/proc/self/status has no {field}")


class RSSSampler(threading.Thread):
    """VmRSS every few milliseconds: the peak where the high-water mark cannot be reset."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self.running = interval, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, proc_status_bytes("VmRSS"))
            time.sleep(self.interval)


class PeakMeter:
    """Memory in use now, and the peak over a call, on the device training runs on."""

    def __init__(self, device: torch.device):
        self.device = device

    def current(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        return proc_status_bytes("VmRSS")

    def peak_over(self, fn) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        if reset_high_water_mark():
            fn()
            return proc_status_bytes("VmHWM")
        sampler = RSSSampler()
        sampler.start()
        try:
            fn()
        finally:
            sampler.running = False
            sampler.join()
        return max(sampler.peak, proc_status_bytes("VmRSS"))


def reset_high_water_mark() -> bool:
    """VmHWM back to the current resident set (Linux: writing 5 to clear_refs); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return proc_status_bytes("VmHWM") <= proc_status_bytes("VmRSS") + MIB


# ---- the parts ---------------------------------------------------------------------------------------------------

def tensor_bytes(tensors) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(tensor_bytes(value for value in state.values() if torch.is_tensor(value))
               for state in optimizer.state.values())


class SavedActivations:
    """Counts the distinct storages one forward keeps for the backward, by address and size only (keeping no
    reference, so nothing lives longer for being counted): what autograd saves, and the inputs of the blocks
    that gradient checkpointing holds for their recomputation. The model's own weights are not activations.
    Each storage is also charged to the checkpointable block whose forward first kept it: without
    checkpointing, the largest block's share is what its recomputation brings back during the backward."""

    def __init__(self, model: torch.nn.Module, blocks: list[torch.nn.Module]):
        self.excluded = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.excluded |= {b.untyped_storage().data_ptr() for b in model.buffers()}
        self.blocks = blocks
        self.storages: dict[int, int] = {}
        self.per_block: dict[int, int] = {}
        self.inside: list[int] = []               # the blocks whose forward is running, outermost first

    def note(self, tensor) -> None:
        if not torch.is_tensor(tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if address in self.excluded or address in self.storages:
            return
        self.storages[address] = storage.nbytes()
        if self.inside:
            self.per_block[self.inside[0]] = self.per_block.get(self.inside[0], 0) + storage.nbytes()

    def pack(self, tensor):
        self.note(tensor)
        return tensor

    def block_starts(self, module, args, kwargs) -> None:
        for value in (*args, *kwargs.values()):       # what it was given: kept with checkpointing
            self.note(value)
        self.inside.append(id(module))

    def block_ends(self, module, args, output) -> None:
        self.inside.pop()

    def count(self, fn) -> "SavedActivations":
        handles = [hook for block in self.blocks
                   for hook in (block.register_forward_pre_hook(self.block_starts, with_kwargs=True),
                                block.register_forward_hook(self.block_ends))]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor):
                fn()
        finally:
            for handle in handles:
                handle.remove()
        return self

    @property
    def total(self) -> int:
        return sum(self.storages.values())

    @property
    def largest_block(self) -> int:
        return max(self.per_block.values(), default=0)


class ComfyForwardEstimate:
    """The engine's denoiser with ComfyUI's SD1.5 forward estimate (model_base.memory_required with
    memory_usage_factor 1.0), which ComfyDenoiser.forward_memory hands the engine inside ComfyUI: on an NVIDIA
    GPU (PyTorch attention) batch x latent area x dtype size x 0.01 MiB, elsewhere batch x latent area x 0.15 MiB."""

    def __init__(self, denoiser):
        self.dtype_size = torch.tensor([], dtype=denoiser.compute_dtype).element_size()
        self.nvidia = denoiser.device.type == "cuda"

    def forward_memory(self, latent_shape: tuple) -> float:
        area = latent_shape[0] * latent_shape[2] * latent_shape[3]
        per_area = self.dtype_size * 0.01 if self.nvidia else 0.15
        return area * per_area * MIB


def engine_estimates(pair: StepPair, config: Config) -> tuple[int, int]:
    """training_memory_estimate with ComfyUI's forward estimate, and with none (the command line's models)."""
    cache = SimpleNamespace(buckets={sample.bucket: pair.samples for sample in pair.samples}, samples=pair.samples)
    settings = TrainSettings(batch_size=config.batch, gradient_checkpointing=config.checkpointing)
    denoiser = pair.model.trainable.denoiser
    comfy = training_memory_estimate(SimpleNamespace(denoiser=ComfyForwardEstimate(denoiser)), cache, pair.network,
                                     settings)
    bare = training_memory_estimate(SimpleNamespace(denoiser=SimpleNamespace()), cache, pair.network, settings)
    return comfy, bare


def measure(config: Config) -> dict:
    """One row, in this process: build the model, warm up, count the parts, then the peak over two steps."""
    importlib.import_module("diffusers.models.unets.unet_2d_condition")   # now: its code is no training memory
    device = torch.device(config.device)
    meter = PeakMeter(device)
    before_model = meter.current()
    unet = diffusers_unet(config.layout, device, WEIGHT_DTYPES[config.precision])
    weights = tensor_bytes([*unet.parameters(), *unet.buffers()])
    pair = StepPair(diffusers_bench_model(unet), config.batch, RANK, config.latent_side, config.precision,
                    config.checkpointing)
    blocks = pair.model.trainable.checkpoint_blocks
    with pair.attached():
        pair.engine()                     # warm-up: the optimizer's state, allocator pools, kernel choices
        lora = tensor_bytes(pair.network.parameters())
        gradients = tensor_bytes(pair.network.trainable_parameters())
        optimizer = optimizer_state_bytes(pair.optimizer)
        activations = SavedActivations(unet, blocks).count(pair.engine).total
        peak = meter.peak_over(lambda: (pair.engine(), pair.engine()))
    if config.checkpointing:              # one block at a time is recomputed, its activations back for its backward
        pair.checkpointing = False
        with pair.attached():
            activations += SavedActivations(unet, blocks).count(pair.engine).largest_block
    comfy_estimate, bare_estimate = engine_estimates(pair, config)
    return {"config": asdict(config), "weights": weights, "lora": lora, "gradients": gradients,
            "optimizer": optimizer, "activations": activations, "measured": peak - before_model,
            "estimate_comfy": comfy_estimate, "estimate_bare": bare_estimate}


def measure_in_child(config: Config) -> dict:
    """measure() in a fresh Python: its peak is its own, whatever ran before it here."""
    command = [sys.executable, "-m", "benchmarks.training_memory", "--one", json.dumps(asdict(config))]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{config.label} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the table ---------------------------------------------------------------------------------------------------

def print_row(row: dict) -> None:
    config = Config(**row["config"])
    lora_total = row["lora"] + row["gradients"] + row["optimizer"]
    parts = row["weights"] + lora_total + row["activations"]
    beyond_weights = row["measured"] - row["weights"]
    cells = [config.label, f"{config.batch} x {config.latent_side}x{config.latent_side}",
             mib(row["weights"]), mib(lora_total), mib(row["activations"]), mib(parts), mib(row["measured"]),
             f"{row['measured'] / parts:.2f}", mib(row["estimate_comfy"]), mib(row["estimate_bare"]),
             f"{beyond_weights / row['estimate_comfy']:.2f}"]
    print("| " + " | ".join(cells) + " |", flush=True)


def mib(value: int) -> str:
    return f"{value / MIB:,.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="the real SD1.5 UNet at 8x8 latents, batch 1")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32, help="latent side (32 = 256 px images)")
    parser.add_argument("--smoke", action="store_true", help="the tiny SD1.5 layout, one row: seconds")
    parser.add_argument("--one", help=argparse.SUPPRESS)         # a child process: one row, as JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(Config(**json.loads(args.one)))))
        return
    print(f"device {args.device}, LoRA rank {RANK} on the transformer blocks, AdamW; MiB; each row in a fresh "
          f"process, torch threads {torch.get_num_threads()}")
    print("| model | precision | checkpointing | batch x latents | weights | LoRA + grads + optimizer | activations "
          "| sum | measured peak | measured / sum | estimate beyond weights (ComfyUI SD1.5 forward) "
          "| estimate (no host forward estimate) | measured beyond weights / estimate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for config in configs(args):
        print_row(measure_in_child(config))


if __name__ == "__main__":
    main()
