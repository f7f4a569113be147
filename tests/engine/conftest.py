"""Tiny real diffusers models (random weights) for engine tests."""

from __future__ import annotations

import zlib

import pytest
import torch

from trainer.diffusers_adapter import DiffusersVAEEncoder, FunctionCaptionEncoder, diffusers_sd1_trainable

CONTEXT_DIM = 32


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM, attention_head_dim=8, norm_num_groups=32,
    ).eval()


def tiny_vae(seed: int = 1):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval()


class HashedWordEncoder:
    """A stand-in text encoder: each word hashes to a fixed random vector; 77 positions like CLIP."""

    def __init__(self, dim: int = CONTEXT_DIM, seed: int = 2):
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(1024, dim, generator=generator)

    def __call__(self, caption: str) -> torch.Tensor:
        ids = [zlib.crc32(word.encode()) % 1024 for word in caption.split()][:77]
        ids += [0] * (77 - len(ids))
        return self.table[torch.tensor(ids)].unsqueeze(0)


@pytest.fixture
def tiny_trainable():
    unet = tiny_unet()
    return diffusers_sd1_trainable(unet, FunctionCaptionEncoder(HashedWordEncoder()))


@pytest.fixture
def tiny_vae_encoder():
    return DiffusersVAEEncoder(tiny_vae())
