"""Pixel corruption: each training pixel replaced by U[0, 1) with probability p, drawn afresh every epoch.

The draws come from a counter-based hash of (seed, epoch, image, pixel), not from a generator's stream:
a population's members draw theirs in one pass, a member's noise is the same whether it trains alone or
with others (what makes a member equal its separate run), a resumed run draws what the uninterrupted one
would have, and a CUDA graph can replay the draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tune_mnist import kernels
from tune_mnist.kernels import corrupt as corrupt_kernel

Keys = tuple[torch.Tensor, torch.Tensor]


def run_key(seed: int, epoch: int) -> int:
    """One number per (run, epoch): seeds the epoch's shuffle and keys its corruption noise."""
    return seed * 1_000_003 + epoch


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


SPLITMIX = [_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)]


def _hash(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 (wrapping multiplies; shifts masked to be logical, not arithmetic)."""
    z = z * SPLITMIX[0]
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * SPLITMIX[1]
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * SPLITMIX[2]
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def keys(p: Sequence[float], seeds: Sequence[int], epoch: int, device: torch.device | str) -> Keys | None:
    """One epoch's corruption for R runs as device tensors, made once an epoch (a host-to-device copy each
    step would stall the loop); None when no run is corrupted."""
    if max(p) <= 0:
        return None
    threshold = torch.tensor([q * 2**24 for q in p], device=device, dtype=torch.float64).view(-1, 1, 1)
    runs = torch.tensor([run_key(s, epoch) for s in seeds], device=device).view(-1, 1, 1) << 36
    return threshold, runs


def refill(old: Keys | None, p: Sequence[float], seeds: Sequence[int], epoch: int) -> None:
    """Puts epoch's keys into the tensors that a captured step reads."""
    if old is not None:
        for tensor, new in zip(old, keys(p, seeds, epoch, old[0].device)):
            tensor.copy_(new)


def corrupt(x: torch.Tensor, keys: Keys | None, samples: torch.Tensor) -> torch.Tensor:
    """Replaces each pixel of runs' batches x (R, batch, ...) by U[0, 1) with probability p[r];
    samples (R, batch) are the images' indices in the split."""
    if keys is None:
        return x
    threshold, runs = keys
    if kernels.available(x.device):
        return corrupt_kernel.corrupt(x, threshold, runs, samples)
    R, batch, pixels = x.shape[0], x.shape[1], x[0, 0].numel()
    z = _hash(runs + (samples.unsqueeze(-1) << 10) + torch.arange(pixels, device=x.device))
    replace = ((z >> 40) & 0xFFFFFF) < threshold
    noise = (z & 0xFFFFFF).to(x.dtype) / 2**24
    return torch.where(replace, noise, x.view(R, batch, pixels)).view(x.shape)
