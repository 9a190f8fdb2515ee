"""Where tune_mnist's Triton kernels (screen.py, conv_pool.py, corrupt_kernel.py) can run."""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs (macOS wheels have no Triton): every caller has a torch path
    triton = tl = None


def available(device: torch.device) -> bool:
    """On a GPU; on a CPU only under Triton's interpreter (TRITON_INTERPRET=1), which the tests use."""
    return triton is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
