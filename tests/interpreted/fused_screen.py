"""The random search's fp16 screen counts as fp32 does, to within its margin, and decides as fp32 does.

Run by tests under Triton's interpreter (TRITON_INTERPRET=1 must be set before a kernel is defined).
"""

import torch

from tune_mnist import data
from tune_mnist.kernels import screen
from tune_mnist import random_search as rs
splits = rs.search_splits(data.load(), 128, 300, 300, 0, "cpu")
nets = rs.sample(24, 1.5, 0.5, torch.Generator().manual_seed(3), "cpu")
bands = screen.band_patches(splits["train"].x, screen.DTYPE)
counts = screen.count_correct(nets, bands, splits["train"].y)
assert (counts - (rs.accuracy(nets, splits["train"]) * 128).round().int()).abs().max() <= 2, counts
screen.CHUNK = 10   # operands built 10 nets at a time
assert torch.equal(screen.count_correct(nets, bands, splits["train"].y), counts)
screen.CHUNK = 65536
huge = rs.sample(8, 1e4, 0.5, torch.Generator().manual_seed(4), "cpu")   # overflows fp16: counted all right
assert (screen.count_correct(huge, bands, splits["train"].y) == 128).all()
fused, plain = rs.Search(rs.Settings(nets_per_step=120, seed=2), splits), rs.Search(rs.Settings(nets_per_step=120, seed=2), splits)
plain.bands = None
fused.step(); plain.step()
assert fused.bands is not None and fused.pairs, fused.summary()
assert fused.summary() == plain.summary() and fused.pairs == plain.pairs and fused.history == plain.history
assert len(fused.candidates(nets)) < 24  # the screen did drop nets, so the equality above tested it
