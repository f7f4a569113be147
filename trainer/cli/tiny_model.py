"""The demo's built-in model (`model.path = "builtin-tiny"`): a tiny SD1-shaped diffusers UNet and VAE made from
small configs with fixed seeds, and a stand-in text encoder. Random weights: it trains in seconds on a CPU and
shows the pipeline (buckets, cache, steps, the file), never image quality.
"""

from __future__ import annotations

import zlib

import torch

from ..diffusers_adapter import DiffusersVAEEncoder, FunctionCaptionEncoder, diffusers_sd1_trainable
from ..errors import ModelError

BUILTIN_TINY = "builtin-tiny"
CONTEXT_DIM = 32
TOKENS = 77
VOCABULARY = 1024
DIFFUSERS_MISSING = ("The built-in tiny model and diffusers-format models need the diffusers package: "
                     "`.venv/bin/python -m pip install diffusers` (scripts/setup.sh installs it with the test extra).")


def diffusers_module():
    try:
        import diffusers
    except ImportError:
        raise ModelError(DIFFUSERS_MISSING) from None
    return diffusers


def tiny_unet(seed: int = 0):
    diffusers = diffusers_module()
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM, attention_head_dim=8, norm_num_groups=32,
    ).eval()


def tiny_vae(seed: int = 1):
    diffusers = diffusers_module()
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval()


class HashedWordEncoder:
    """A stand-in text encoder: each word hashes (crc32) to a fixed random vector; 77 positions like CLIP."""

    def __init__(self, dim: int = CONTEXT_DIM, seed: int = 2):
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(VOCABULARY, dim, generator=generator)

    def __call__(self, caption: str) -> torch.Tensor:
        ids = [zlib.crc32(word.encode()) % VOCABULARY for word in caption.split()][:TOKENS]
        ids += [0] * (TOKENS - len(ids))
        return self.table[torch.tensor(ids)].unsqueeze(0)


def builtin_tiny_model(device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
    """(TrainableModel, latent encoder) of the built-in tiny model; the same weights every time."""
    unet = tiny_unet().to(device)
    if dtype != torch.float32:
        unet = unet.to(dtype)
    trainable = diffusers_sd1_trainable(unet, FunctionCaptionEncoder(HashedWordEncoder()))
    return trainable, DiffusersVAEEncoder(tiny_vae().to(device))
