"""The corruption kernel draws the same bits as the torch ops.

Run by tests under Triton's interpreter (TRITON_INTERPRET=1 must be set before a kernel is defined).
"""

import torch

from tune_mnist import kernels, noise
x = torch.rand(3, 7, 1, 28, 28)
samples = torch.randint(0, 60000, (3, 40))[:, 5:12]   # a strided slice, as an epoch's order gives
keys = noise.keys([0.0, 0.3, 1.0], [0, 5, 11], 2, "cpu")
fused = noise.corrupt(x, keys, samples)
kernels.available = lambda device: False  # what noise.corrupt asks before it takes the kernel
plain = noise.corrupt(x, keys, samples)
assert torch.equal(fused, plain) and not torch.equal(plain, x)
