"""The fused conv + activation + pool blocks compute what the layers they replace do, forward and backward.

Run by tests under Triton's interpreter (TRITON_INTERPRET=1 must be set before a kernel is defined).
"""

import torch
from torch import nn

from tune_mnist.kernels import conv_pool
from tune_mnist.population import Member, Population
calls, blocks = [], conv_pool.blocks
conv_pool.blocks = lambda *args: calls.append(1) or blocks(*args)


def as_the_kernels_round(params, layers, n_blocks):
    # The forward kernels take images, activations and weights into fp16 products and keep activations
    # between blocks in fp16: with fp16-exact images and weights and the unfused pools' outputs rounded to
    # fp16 (gradients passed unrounded, as between the kernels), the unfused layers compute what the kernels
    # should, up to float rounding (and the rare fp16 rounding that a last-bit difference tips the other
    # way: 1e-4 rather than 1e-5).
    with torch.no_grad():
        for v in params:
            v.copy_(v.half().float())
    for pool in [m for m in layers if isinstance(m, nn.MaxPool2d)][:n_blocks - 1]:
        pool.register_forward_hook(lambda m, i, out: out + (out.half().float() - out).detach())


# 64 -> 72 runs the kernels for wide blocks (conv_pool.QUAD_TILE, NINE_TAPS_TILE)
for act, channels in [("relu", [8, 16]), ("leaky_relu", [8, 16, 24]), ("tanh", [8, 16]), ("gelu", [4, 16, 16]),
                      ("sigmoid", [8, 16]), ("relu", [4, 64, 72])]:
    spec = {"family": "cnn", "channels": channels, "hidden": 32, "activation": act}
    p = Population([Member(spec, seed=s) for s in range(3)], "cpu")
    assert p.fused_blocks == len(channels), (act, channels)
    as_the_kernels_round(p.params.values(), [m for _, m in p.layers], len(channels))
    x = torch.rand(3, 5, 1, 28, 28).half().float()
    calls.clear()
    fused = p(x)
    assert calls, (act, channels)
    fused_grads = torch.autograd.grad(fused.square().sum(), list(p.params.values()))
    with torch.inference_mode():
        fused_shared = p(x[0], shared=True)
    p.fused_blocks = 0
    plain = p(x)
    plain_grads = torch.autograd.grad(plain.square().sum(), list(p.params.values()))
    assert torch.allclose(fused, plain, rtol=1e-4, atol=1e-5), (act, channels)
    assert torch.allclose(fused_shared, p(x[0], shared=True), rtol=1e-4, atol=1e-5), (act, channels)
    for a, b in zip(fused_grads, plain_grads):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max(), (act, channels)
assert not conv_pool.fusable(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), torch.device("cpu"))
