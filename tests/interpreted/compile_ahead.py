"""Compiling ahead compiles every kernel a step launches, with the arguments that key Triton's compilation,
and launches nothing.

Run by tests under Triton's interpreter (TRITON_INTERPRET=1 must be set before a kernel is defined).
"""

import torch
from torch import nn

from tune_mnist.kernels import conv_pool


def signature(kernel, grid, args, kwargs):
    return kernel, grid, [(a.dtype, a.shape) if isinstance(a, torch.Tensor) else a for a in args], kwargs


x = torch.rand(2, 3, 1, 28, 28)
params = [torch.rand(2, 4, 1, 3, 3), torch.rand(2, 4), torch.rand(2, 16, 4, 3, 3), torch.rand(2, 16)]
acts = (conv_pool.ACTIVATIONS[nn.GELU], conv_pool.ACTIVATIONS[nn.ReLU])
launched, launch = [], conv_pool._launch
conv_pool._launch = lambda kernel, grid, *args, **kwargs: (launched.append(signature(kernel, grid, args, kwargs)),
                                                          launch(kernel, grid, *args, **kwargs))
h, saved = conv_pool.forward_blocks(x, acts, params)
conv_pool.backward_blocks(saved, torch.ones_like(h), [w.shape for w in params[::2]])
evaluation = len(launched)
conv_pool.forward_blocks(x, acts, params, save=False)
launched, launched_eval = launched[:evaluation], launched[evaluation:]
conv_pool._launch = launch
compiled = []
for kernel in {k for k, *_ in launched}:
    kernel.warmup = lambda *args, grid, _k=kernel, **kwargs: compiled.append(signature(_k, grid, args, kwargs))
conv_pool._compile_ahead(x, acts, params, backward=True)
# a forward and backward's every kernel, with the arguments that key Triton's compilation, and nothing launched
assert len(launched) == 5 and sorted(map(repr, compiled)) == sorted(map(repr, launched)), (launched, compiled)
compiled.clear()
conv_pool._compile_ahead(x, acts, params, backward=False)  # evaluation: forwards that save nothing
assert len(launched_eval) == 2 and sorted(map(repr, compiled)) == sorted(map(repr, launched_eval)), compiled
assert sorted(map(repr, launched_eval)) != sorted(map(repr, launched[:2]))
assert getattr(conv_pool._ahead, "pool", None) is None
