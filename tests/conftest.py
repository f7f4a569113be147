"""Shared test setup: one thread for torch (tiny convolutions are ~100x slower with 2 threads here)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
