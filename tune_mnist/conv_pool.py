"""A CNN population's first block in one Triton kernel each way: 3x3 conv of the one input channel,
activation, 2x2 max-pool.

Unfused, the block writes and rereads R * batch * C * 28 * 28 activations (800 MB a step for 64
members of 32 channels at batch 128) through a depthwise-style grouped convolution, the activation,
the pool and their backwards: half of a population step on an H100. Here each program computes, for
one member and a block of pooled positions, the conv at the four positions of every pool window from
the input (9 values each), applies the activation, and keeps the maximum; only the pooled output and
the window position that won leave the kernel. The backward recomputes the winner's pre-activation
and sums the kernel and bias gradients per block into a buffer that torch reduces (deterministic, no
atomics). No input gradient: the block is the first layer.
"""

from __future__ import annotations

import torch
from torch import nn

from tune_mnist.kernels import available, tl, triton

if triton is not None:
    from triton.language.extra import libdevice

# Sigmoid is left unfused: its kernel gradients differed from torch's by 3e-3 (torch's sigmoid is not
# 1 / (1 + expf(-x)) bit for bit, so the pool's ties fell differently).
ACTIVATIONS = {nn.ReLU: 0, nn.LeakyReLU: 1, nn.Tanh: 2, nn.GELU: 4}
BLOCK, WARPS = 128, 4  # pooled positions per forward program, and warps per program
BACKWARD_ROWS, BACKWARD_SUB = 512, 32


def fusable(conv: nn.Conv2d, act: nn.Module, pool: nn.Module, device: torch.device) -> bool:
    """The block this kernel computes: a GPU (or Triton's interpreter), conv 1 -> C 3x3 stride 1 padding 1,
    a known activation (leaky ReLU with slope 0.1, GELU exact), then 2x2 max-pool on 28x28 inputs."""
    return (available(device) and conv.in_channels == 1 and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and type(act) in ACTIVATIONS
            and getattr(act, "negative_slope", 0.1) == 0.1 and getattr(act, "approximate", "none") == "none"
            and isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 2 and pool.stride == 2 and pool.padding == 0)


if triton is not None:
    @triton.jit
    def _tanh(p, GPU: tl.constexpr):
        """CUDA's tanhf and expf on a GPU, as torch uses, so the pool's ties fall as in the unfused layers;
        formulas under the interpreter, which has no libdevice."""
        if GPU:
            return libdevice.tanh(p)
        else:
            return 1.0 - 2.0 / (tl.exp(2.0 * p) + 1.0)

    @triton.jit
    def _exp(p, GPU: tl.constexpr):
        if GPU:
            return libdevice.exp(p)
        else:
            return tl.exp(p)

    @triton.jit
    def _activate(p, ACT: tl.constexpr, GPU: tl.constexpr):
        if ACT == 0:
            return tl.maximum(p, 0.0)
        elif ACT == 1:
            return tl.where(p > 0, p, 0.1 * p)
        elif ACT == 2:
            return _tanh(p, GPU)
        else:
            return 0.5 * p * (1.0 + tl.erf(p * 0.7071067811865476))

    @triton.jit
    def _slope(p, ACT: tl.constexpr, GPU: tl.constexpr):
        """The activation's derivative at p."""
        if ACT == 0:
            return tl.where(p > 0, 1.0, 0.0)
        elif ACT == 1:
            return tl.where(p > 0, 1.0, 0.1)
        elif ACT == 2:
            t = _tanh(p, GPU)
            return 1.0 - t * t
        else:
            return 0.5 * (1.0 + tl.erf(p * 0.7071067811865476)) + p * _exp(-0.5 * p * p, GPU) * 0.3989422804014327

    @triton.jit
    def _window(x_ptr, w, bias, r, rows, n_rows, s: tl.constexpr, B):
        """Pre-activations (BLOCK, CB) at window offset s of the pooled positions rows (image * 196 + py * 14 + px)
        of member r, and the 3x3 patches (BLOCK, 16) they were computed from."""
        image, pos = rows // 196, rows % 196
        y = 2 * (pos // 14) + s // 2
        x = 2 * (pos % 14) + s % 2
        k = tl.arange(0, 16)
        yy = y[:, None] + k[None, :] // 3 - 1
        xx = x[:, None] + k[None, :] % 3 - 1
        inside = (k[None, :] < 9) & (yy >= 0) & (yy < 28) & (xx >= 0) & (xx < 28) & (rows < n_rows)[:, None]
        patches = tl.load(x_ptr + (r * B + image[:, None]) * 784 + yy * 28 + xx, mask=inside, other=0.0)
        return tl.dot(patches, w, input_precision="ieee") + bias[None, :], patches

    @triton.jit
    def _weights(w_ptr, b_ptr, r, C: tl.constexpr, CB: tl.constexpr):
        k, c = tl.arange(0, 16), tl.arange(0, CB)
        w = tl.load(w_ptr + (r * C + c[None, :]) * 9 + k[:, None], mask=(k[:, None] < 9) & (c[None, :] < C), other=0.0)
        return w, tl.load(b_ptr + r * C + c, mask=c < C, other=0.0)

    @triton.jit
    def _forward(x_ptr, w_ptr, b_ptr, out_ptr, win_ptr, R, B, C: tl.constexpr, CB: tl.constexpr,
                 ACT: tl.constexpr, GPU: tl.constexpr, BLOCK: tl.constexpr):
        r = tl.program_id(0)
        rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        w, bias = _weights(w_ptr, b_ptr, r, C, CB)
        best = tl.full((BLOCK, CB), float("-inf"), tl.float32)
        won = tl.zeros((BLOCK, CB), tl.int8)
        for s in tl.static_range(4):   # the pool window in max_pool2d's scan order; ties keep the first
            pre, _ = _window(x_ptr, w, bias, r, rows, B * 196, s, B)
            a = _activate(pre, ACT, GPU)
            won = tl.where(a > best, s, won).to(tl.int8)
            best = tl.maximum(best, a)
        c = tl.arange(0, CB)
        # out is (batch, R * C, 14, 14): the "channels" layout of population.Population
        at = ((rows // 196)[:, None] * R * C + r * C + c[None, :]) * 196 + (rows % 196)[:, None]
        keep = (rows < B * 196)[:, None] & (c < C)[None, :]
        tl.store(out_ptr + at, best, mask=keep)
        tl.store(win_ptr + at, won, mask=keep)

    @triton.jit
    def _backward(x_ptr, w_ptr, b_ptr, win_ptr, grad_ptr, dw_ptr, db_ptr, R, B, C: tl.constexpr,
                  CB: tl.constexpr, ACT: tl.constexpr, GPU: tl.constexpr, ROWS: tl.constexpr, SUB: tl.constexpr):
        """Kernel and bias gradients of ROWS pooled positions, SUB at a time (fewer registers than one product
        over all ROWS, which spilled), summed into this program's slot of dw and db."""
        r, block = tl.program_id(0), tl.program_id(1)
        w, bias = _weights(w_ptr, b_ptr, r, C, CB)
        c = tl.arange(0, CB)
        dw = tl.zeros((16, CB), tl.float32)
        db = tl.zeros((CB,), tl.float32)
        for start in range(0, ROWS, SUB):
            rows = block * ROWS + start + tl.arange(0, SUB)
            at = ((rows // 196)[:, None] * R * C + r * C + c[None, :]) * 196 + (rows % 196)[:, None]
            keep = (rows < B * 196)[:, None] & (c < C)[None, :]
            won = tl.load(win_ptr + at, mask=keep, other=-1)
            grad = tl.load(grad_ptr + at, mask=keep, other=0.0)
            for s in tl.static_range(4):
                pre, patches = _window(x_ptr, w, bias, r, rows, B * 196, s, B)
                g = tl.where(won == s, grad * _slope(pre, ACT, GPU), 0.0)
                dw += tl.dot(tl.trans(patches), g, input_precision="ieee")
                db += tl.sum(g, 0)
        k = tl.arange(0, 16)
        blocks = tl.num_programs(1)
        tl.store(dw_ptr + ((r * blocks + block) * 16 + k[:, None]) * CB + c[None, :], dw)
        tl.store(db_ptr + (r * blocks + block) * CB + c, db)


def width(channels: int) -> int:
    """Channels padded to a power of two of at least 16, the smallest tensor-core product."""
    return max(16, triton.next_power_of_2(channels))


class ConvActPool(torch.autograd.Function):
    """x (R, batch, 1, 28, 28), weight (R, C, 1, 3, 3), bias (R, C) -> (batch, R * C, 14, 14)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, act: int) -> torch.Tensor:
        R, B, C = x.shape[0], x.shape[1], weight.shape[1]
        x, weight, bias = x.reshape(R, B, 784).contiguous(), weight.contiguous(), bias.contiguous()
        out = torch.empty(B, R * C, 14, 14, device=x.device, dtype=torch.float32)
        won = torch.empty(out.shape, device=x.device, dtype=torch.int8)
        grid = (R, triton.cdiv(B * 196, BLOCK))
        _forward[grid](x, weight, bias, out, won, R, B, C, width(C), act, x.is_cuda, BLOCK, num_warps=WARPS)
        ctx.save_for_backward(x, weight, bias, won)
        ctx.act = act
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor, None]:
        x, weight, bias, won = ctx.saved_tensors
        R, B, C = x.shape[0], x.shape[1], weight.shape[1]
        CB, blocks = width(C), triton.cdiv(B * 196, BACKWARD_ROWS)
        dw = torch.empty(R, blocks, 16, CB, device=x.device)
        db = torch.empty(R, blocks, CB, device=x.device)
        _backward[(R, blocks)](x, weight, bias, won, grad.contiguous(), dw, db, R, B, C, CB, ctx.act, x.is_cuda,
                               BACKWARD_ROWS, BACKWARD_SUB, num_warps=WARPS)
        dw = dw.sum(1)[:, :9, :C].transpose(1, 2).reshape(weight.shape)
        return None, dw, db.sum(1)[:, :C], None


def conv_act_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, act: nn.Module) -> torch.Tensor:
    return ConvActPool.apply(x, weight, bias, ACTIVATIONS[type(act)])
