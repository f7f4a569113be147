"""Tiny real diffusers models (random weights) for engine tests."""

from __future__ import annotations

import pytest

from trainer.cli import tiny_model
from trainer.cli.tiny_model import HashedWordEncoder, tiny_unet, tiny_vae
from trainer.diffusers_adapter import DiffusersVAEEncoder, FunctionCaptionEncoder, diffusers_sd1_trainable

# the tests' tiny models are the command line's built-in one (trainer/cli/tiny_model.py): one definition, which
# the test modules import from here
CONTEXT_DIM = tiny_model.CONTEXT_DIM


@pytest.fixture
def tiny_trainable():
    unet = tiny_unet()
    return diffusers_sd1_trainable(unet, FunctionCaptionEncoder(HashedWordEncoder()))


@pytest.fixture
def tiny_vae_encoder():
    return DiffusersVAEEncoder(tiny_vae())
