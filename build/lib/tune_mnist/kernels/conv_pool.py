"""A CNN's conv blocks (3x3 conv, activation, 2x2 max-pool) as Triton kernels, for a population of R members
(population.py; a single net is R = 1).

Unfused, a block writes and rereads its full-size activations through a grouped convolution, the activation, the
pool and their backwards; these kernels cut a population's forward and backward about threefold
(docs/performance.md). A program computes, for one member and a block of pooled positions, the conv at the four
positions of every pool window, and the activation of the window's largest pre-activation (ReLU, leaky ReLU, tanh
and sigmoid rise with it; GELU, which falls then rises, is evaluated at the largest and the smallest); only the
pooled output, the window position that won and the activation's slope there leave the kernel. Activations are
kept as (R, batch, H, W, C), each member's channels contiguous, so that an inner block's conv is a sum over the
nine taps of (positions x C_in) @ (C_in x C_out) products.

- Every forward also saves the activation's slope at the winner, so no backward depends on the activation.
- First block (one input channel, 28x28): the nine taps are one K=16 product. No input gradient: it is the first
  layer.
- Inner blocks: the backward has an input gradient (the same nine products with the kernel transposed, reading
  the pooled gradient where that position won), for narrow blocks by 2x2 quads of input positions, which share
  the loads of the nine pooled positions around them; and a kernel gradient (one program per member, block of
  positions and all nine taps, or a row of three taps for wide blocks), which loads each input position a
  window's taps reach once. Kernel gradients are summed per block into buffers that torch reduces
  (deterministic, no atomics).
- Precision: forward products take fp16 operands (images, kernels, and the activations between blocks, stored in
  fp16: TF32's 10-bit mantissa, values up to 65,504) and sum in fp32; the last block's output is fp32, for
  torch's dense layers. Backward products take bf16 operands, as autocast's conv backward does (fp16 gradients
  underflow), and the pre-activation gradients passed between blocks are bf16; kernel and bias gradients sum in
  fp32. Test accuracy stays within 0.0001 of the unfused layers'. Under Triton's interpreter, which computes bf16
  products wrongly, the backward products take fp32 (_mm).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from tune_mnist import kernels
from tune_mnist.kernels import available, tl, triton

if triton is not None:
    from triton.language.extra import libdevice

# The pool compares pre-activations, not activations: torch's sigmoid is not 1 / (1 + expf(-x)) bit for bit,
# and compared after it, ties would fall differently from the unfused layers'.
ACTIVATIONS = {nn.ReLU: 0, nn.LeakyReLU: 1, nn.Tanh: 2, nn.Sigmoid: 3, nn.GELU: 4}
# Tile sizes come from sweeps on a GPU (docs/performance.md). First block: pooled positions per forward program
# (fewer for tanh and GELU, whose temporaries spill at 128), and warps per program.
BLOCK, SPILLING_BLOCK, WARPS = 128, 64, 4
BACKWARD_ROWS, BACKWARD_SUB = 512, 32
# Inner blocks: a forward program takes 64 pooled positions (fewer for wide blocks) with a warp per 1024
# (position, output channel) pairs; an input-gradient program by position 4096 (position, input channel) pairs;
# a kernel-gradient program 256 pooled positions, 16 at a time.
INNER_PAIRS_PER_WARP, INNER_TILE, INNER_ROWS, INNER_SUB = 1024, 4096, 256, 16
# Input gradients by 2x2 quads of positions while a block's (C_in, C_out) tile is at most QUAD_TILE (past it the
# quad kernel's tiles spill, and past 64 input channels its four sums take too many registers); kernel gradients
# of all nine taps a program up to NINE_TAPS_TILE, past it a row of taps, as nine (C_in, C_out) sums no longer fit.
QUAD_TILE, NINE_TAPS_TILE = 4096, 2048


def fusable(conv: nn.Module, act: nn.Module, pool: nn.Module, device: torch.device) -> bool:
    """The blocks these kernels compute: a GPU (or Triton's interpreter), a 3x3 conv with stride 1 and
    padding 1, a known activation (leaky ReLU with slope 0.1, GELU exact), then 2x2 max-pool."""
    return (available(device) and isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.groups == 1 and type(act) in ACTIVATIONS
            and getattr(act, "negative_slope", 0.1) == 0.1 and getattr(act, "approximate", "none") == "none"
            and isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 2 and pool.stride == 2 and pool.padding == 0)


if triton is not None:
    # Triton compiles a kernel again for each class of integer argument (divisible by 16 or not): left to it,
    # evaluation chunks (204 images for 40 members) compile a second copy of each kernel, a few seconds apiece.
    batch_any_size = triton.jit(do_not_specialize=["B"])

    @triton.jit
    def _tanh(p, GPU: tl.constexpr):
        """CUDA's tanhf and expf on a GPU, as torch uses, so the values equal the unfused layers';
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
        """The activation at p and its slope there, sharing their work (tanh, sigmoid). GELU is _pool's."""
        if ACT == 0:
            return tl.maximum(p, 0.0), tl.where(p > 0, 1.0, 0.0)
        elif ACT == 1:
            return tl.where(p > 0, p, 0.1 * p), tl.where(p > 0, 1.0, 0.1)
        elif ACT == 2:
            t = _tanh(p, GPU)
            return t, 1.0 - t * t
        else:
            t = 1.0 / (1.0 + _exp(-p, GPU))
            return t, t * (1.0 - t)

    @triton.jit
    def _mm(a, b, acc, GPU: tl.constexpr):
        """a @ b + acc for the backward kernels: bf16 operands on a GPU (tensor cores at twice TF32's rate,
        and autocast's precision for a conv's backward), fp32 under the interpreter, whose bf16 products
        are wrong."""
        if GPU:
            return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
        else:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)

    @triton.jit
    def _scan(hi, hi_s, lo, lo_s, pre, s: tl.constexpr):
        """Folds window position s's pre-activations into the running largest hi and smallest lo, and the
        positions holding them; ties keep the earlier position, as max_pool2d's scan does."""
        return tl.maximum(hi, pre), tl.where(pre > hi, s, hi_s), tl.minimum(lo, pre), tl.where(pre < lo, s, lo_s)

    @triton.jit
    def _pool(hi, hi_s, lo, lo_s, ACT: tl.constexpr, GPU: tl.constexpr):
        """A pool window's max of the activation, the window position that holds it and the activation's slope
        there, from the window's largest pre-activation hi (first at position hi_s) and smallest lo (at lo_s).
        The activations here rise with the pre-activation, so their max is at hi, except GELU's, which falls
        then rises, so its max is at hi or lo: one or two evaluations a window rather than four (GELU's
        forward took twice ReLU's when evaluated at all four). Where two pre-activations give the same
        activation (a saturated tanh or sigmoid) the larger wins rather than the first, which max_pool2d
        would pick: the slope there is zero or nearly, so the gradients barely differ."""
        if ACT == 4:  # the slope at the winner only: one exp a window
            cdf_hi, cdf_lo = 1.0 + tl.erf(hi * 0.7071067811865476), 1.0 + tl.erf(lo * 0.7071067811865476)  # 2 Phi
            at_hi, at_lo = 0.5 * hi * cdf_hi, 0.5 * lo * cdf_lo
            take = (at_lo > at_hi) | ((at_lo == at_hi) & (lo_s < hi_s))  # ties keep the first, as max_pool2d
            p, cdf = tl.where(take, lo, hi), tl.where(take, cdf_lo, cdf_hi)
            slope = 0.5 * cdf + p * _exp(-0.5 * p * p, GPU) * 0.3989422804014327
            best, won = tl.where(take, at_lo, at_hi), tl.where(take, lo_s, hi_s)
        else:
            best, slope = _activate(hi, ACT, GPU)
            won = hi_s
        return best, won, slope

    @triton.jit
    def _patches(x_ptr, r, rows, n_rows, s: tl.constexpr, B):
        """The 3x3 input patches (BLOCK, 16) of window position s of the pooled positions rows
        (image * 196 + py * 14 + px) of member r."""
        image, pos = rows // 196, rows % 196
        y = 2 * (pos // 14) + s // 2
        x = 2 * (pos % 14) + s % 2
        k = tl.arange(0, 16)
        yy = y[:, None] + k[None, :] // 3 - 1
        xx = x[:, None] + k[None, :] % 3 - 1
        inside = (k[None, :] < 9) & (yy >= 0) & (yy < 28) & (xx >= 0) & (xx < 28) & (rows < n_rows)[:, None]
        return tl.load(x_ptr + (r * B + image[:, None]) * 784 + yy * 28 + xx, mask=inside, other=0.0)

    @triton.jit
    def _weights(w_ptr, b_ptr, r, C: tl.constexpr, CB: tl.constexpr):
        k, c = tl.arange(0, 16), tl.arange(0, CB)
        w = tl.load(w_ptr + (r * C + c[None, :]) * 9 + k[:, None], mask=(k[:, None] < 9) & (c[None, :] < C), other=0.0)
        return w, tl.load(b_ptr + r * C + c, mask=c < C, other=0.0)

    @batch_any_size
    def _forward(x_ptr, w_ptr, b_ptr, out_ptr, win_ptr, slope_ptr, B, C: tl.constexpr, CB: tl.constexpr,
                 ACT: tl.constexpr, GPU: tl.constexpr, BLOCK: tl.constexpr, SAVE: tl.constexpr):
        r = tl.program_id(0)
        rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        w, bias = _weights(w_ptr, b_ptr, r, C, CB)
        hi = tl.full((BLOCK, CB), float("-inf"), tl.float32)
        lo = tl.full((BLOCK, CB), float("inf"), tl.float32)
        hi_s = tl.zeros((BLOCK, CB), tl.int32)
        lo_s = tl.zeros((BLOCK, CB), tl.int32)
        for s in tl.static_range(4):
            pre = tl.dot(_patches(x_ptr, r, rows, B * 196, s, B).to(tl.float16), w.to(tl.float16)) + bias[None, :]
            hi, hi_s, lo, lo_s = _scan(hi, hi_s, lo, lo_s, pre, s)
        best, won, slope = _pool(hi, hi_s, lo, lo_s, ACT, GPU)
        c = tl.arange(0, CB)
        at = (r * B * 196 + rows)[:, None] * C + c[None, :]  # out is (R, batch, 14, 14, C)
        keep = (rows < B * 196)[:, None] & (c < C)[None, :]
        tl.store(out_ptr + at, best, mask=keep)
        if SAVE:
            tl.store(win_ptr + at, won.to(tl.int8), mask=keep)
            tl.store(slope_ptr + at, slope, mask=keep)

    @batch_any_size
    def _backward(x_ptr, win_ptr, g_ptr, dw_ptr, db_ptr, B, C: tl.constexpr, CB: tl.constexpr,
                  GPU: tl.constexpr, ROWS: tl.constexpr, SUB: tl.constexpr):
        """Kernel and bias gradients of ROWS pooled positions, SUB at a time (fewer registers than one product
        over all ROWS, which spilled), summed into this program's slot of dw and db; g is the gradient at
        each window's winning pre-activation."""
        r, block = tl.program_id(0), tl.program_id(1)
        c = tl.arange(0, CB)
        dw = tl.zeros((16, CB), tl.float32)
        db = tl.zeros((CB,), tl.float32)
        for start in range(0, ROWS, SUB):
            rows = block * ROWS + start + tl.arange(0, SUB)
            at = (r * B * 196 + rows)[:, None] * C + c[None, :]
            keep = (rows < B * 196)[:, None] & (c < C)[None, :]
            won = tl.load(win_ptr + at, mask=keep, other=-1)
            g = tl.load(g_ptr + at, mask=keep, other=0.0).to(tl.float32)
            for s in tl.static_range(4):
                patches = _patches(x_ptr, r, rows, B * 196, s, B)
                dw = _mm(tl.trans(patches), tl.where(won == s, g, 0.0), dw, GPU)
            db += tl.sum(g, 0)
        k = tl.arange(0, 16)
        blocks = tl.num_programs(1)
        tl.store(dw_ptr + ((r * blocks + block) * 16 + k[:, None]) * CB + c[None, :], dw)
        tl.store(db_ptr + (r * blocks + block) * CB + c, db)

    @triton.jit
    def _inner_tap(x_ptr, sr, sb, sy, sx, sc, r, image, y, x, valid, H, W, CI: tl.constexpr, KB: tl.constexpr):
        """(rows, KB): the input channels at (y, x) of each row's image, zero outside the image."""
        ci = tl.arange(0, KB)
        inside = valid & (y >= 0) & (y < H) & (x >= 0) & (x < W)
        return tl.load(x_ptr + r * sr + image[:, None] * sb + (y * sy + x * sx)[:, None] + ci[None, :] * sc,
                       mask=inside[:, None] & (ci < CI)[None, :], other=0.0)

    @batch_any_size
    def _inner_forward(x_ptr, sr, sb, sy, sx, sc, w_ptr, b_ptr, out_ptr, won_ptr, slope_ptr, B, H, W,
                       CI: tl.constexpr, CO: tl.constexpr, KB: tl.constexpr, NB: tl.constexpr,
                       ACT: tl.constexpr, GPU: tl.constexpr, BM: tl.constexpr, SAVE: tl.constexpr):
        """BM pooled positions (image, py, px) of member r: the conv at all four window positions as one
        (4 BM, C_in) @ (C_in, C_out) product per tap, then each window's largest and smallest pre-activation
        and the activation's max from them (_pool); x may be any strided (R, B, H, W, C_in)."""
        r = tl.program_id(0)
        PH, PW = H // 2, W // 2
        n = B * PH * PW
        i = tl.arange(0, 4 * BM)
        s = i // BM  # the window position, in max_pool2d's scan order
        rows = tl.program_id(1) * BM + i % BM
        image, py, px = rows // (PH * PW), rows % (PH * PW) // PW, rows % PW
        ci, co = tl.arange(0, KB), tl.arange(0, NB)
        acc = tl.zeros((4 * BM, NB), tl.float32)
        for k in tl.static_range(9):
            a = _inner_tap(x_ptr, sr, sb, sy, sx, sc, r, image, 2 * py + s // 2 + k // 3 - 1,
                           2 * px + s % 2 + k % 3 - 1, rows < n, H, W, CI, KB)
            w = tl.load(w_ptr + ((r * 9 + k) * CI + ci[:, None]) * CO + co[None, :],
                        mask=(ci < CI)[:, None] & (co < CO)[None, :], other=0.0)
            acc = tl.dot(a, w.to(a.dtype), acc)  # fp16 inputs: the product in fp16, as precise as TF32
        pre = tl.reshape(acc + tl.load(b_ptr + r * CO + co, mask=co < CO, other=0.0)[None, :], (4, BM, NB))
        # each window's four pre-activations into one thread's registers by one permute, rather than four
        # reductions across the product's rows (max, argmax, min, argmin), which took twice as long
        even, odd = tl.split(tl.reshape(tl.permute(pre, (1, 2, 0)), (BM, NB, 2, 2)))
        p0, p2 = tl.split(even)
        p1, p3 = tl.split(odd)
        hi, hi_s, lo, lo_s = p0, tl.zeros((BM, NB), tl.int32), p0, tl.zeros((BM, NB), tl.int32)
        hi, hi_s, lo, lo_s = _scan(hi, hi_s, lo, lo_s, p1, 1)
        hi, hi_s, lo, lo_s = _scan(hi, hi_s, lo, lo_s, p2, 2)
        hi, hi_s, lo, lo_s = _scan(hi, hi_s, lo, lo_s, p3, 3)
        best, won, slope = _pool(hi, hi_s, lo, lo_s, ACT, GPU)
        rows = tl.program_id(1) * BM + tl.arange(0, BM)
        at = (r * n + rows)[:, None] * CO + co[None, :]  # out, won and slope are (R, B, PH, PW, C_out)
        keep = (rows < n)[:, None] & (co < CO)[None, :]
        tl.store(out_ptr + at, best, mask=keep)
        if SAVE:
            tl.store(won_ptr + at, won.to(tl.int8), mask=keep)
            tl.store(slope_ptr + at, slope, mask=keep)

    @triton.jit
    def _tap_transposed(w_ptr, r, k, CI: tl.constexpr, CO: tl.constexpr, KB: tl.constexpr, NB: tl.constexpr):
        """(C_out, C_in): tap k of member r's kernel, transposed."""
        ci, co = tl.arange(0, KB), tl.arange(0, NB)
        return tl.load(w_ptr + ((r * 9 + k) * CI + ci[None, :]) * CO + co[:, None],
                       mask=(ci < CI)[None, :] & (co < CO)[:, None], other=0.0)

    @batch_any_size
    def _input_grad_by_position(g_ptr, won_ptr, w_ptr, x_slope_ptr, x_g_ptr, B, H, W, CI: tl.constexpr,
                                CO: tl.constexpr, KB: tl.constexpr, NB: tl.constexpr, GPU: tl.constexpr,
                                BM: tl.constexpr):
        """BM input positions of member r: for each tap, the conv output it fed, and the pre-activation
        gradient g there (g if that position won its pool window, else 0) @ the tap's kernel transposed.
        The sum, times the slope that the block below saved at x, is written as that block's g (_store_x_g)."""
        r = tl.program_id(0)
        PH, PW = H // 2, W // 2
        rows = tl.program_id(1) * BM + tl.arange(0, BM)
        image, y, x = rows // (H * W), rows % (H * W) // W, rows % W
        co = tl.arange(0, NB)
        acc = tl.zeros((BM, KB), tl.float32)
        for k in tl.static_range(9):
            oy, ox = y - (k // 3 - 1), x - (k % 3 - 1)
            fed = (rows < B * H * W) & (oy >= 0) & (oy < 2 * PH) & (ox >= 0) & (ox < 2 * PW)
            at = ((r * B + image) * PH * PW + oy // 2 * PW + ox // 2)[:, None] * CO + co[None, :]
            keep = fed[:, None] & (co < CO)[None, :]
            won = tl.load(won_ptr + at, mask=keep, other=-1)
            g = tl.load(g_ptr + at, mask=keep, other=0.0)
            g = tl.where(won == (oy % 2 * 2 + ox % 2)[:, None], g, 0.0)
            acc = _mm(g, _tap_transposed(w_ptr, r, k, CI, CO, KB, NB), acc, GPU)
        _store_x_g(x_slope_ptr, x_g_ptr, acc, r * B * H * W + rows, rows < B * H * W, CI, KB)

    @triton.jit
    def _store_x_g(x_slope_ptr, x_g_ptr, acc, at, valid, CI: tl.constexpr, KB: tl.constexpr):
        """The gradient at x, acc (rows, KB), times the slope saved at x, into the g of x's block: that block's
        backward then needs no pass of its own to multiply them."""
        ci = tl.arange(0, KB)
        at = at[:, None] * CI + ci[None, :]
        keep = valid[:, None] & (ci < CI)[None, :]
        tl.store(x_g_ptr + at, acc * tl.load(x_slope_ptr + at, mask=keep, other=0.0), mask=keep)

    @triton.jit
    def _store_quad(x_slope_ptr, x_g_ptr, acc, q: tl.constexpr, r, image, qy, qx, valid, B, H, W,
                    CI: tl.constexpr, KB: tl.constexpr):
        y, x = 2 * qy + q // 2, 2 * qx + q % 2
        _store_x_g(x_slope_ptr, x_g_ptr, acc, (r * B + image) * H * W + y * W + x, valid & (y < H) & (x < W), CI, KB)

    @batch_any_size
    def _input_grad_by_quad(g_ptr, won_ptr, w_ptr, x_slope_ptr, x_g_ptr, B, H, W, CI: tl.constexpr,
                            CO: tl.constexpr, KB: tl.constexpr, NB: tl.constexpr, GPU: tl.constexpr,
                            BM: tl.constexpr):
        """As _input_grad_by_position, for BM 2x2 quads of input positions of member r at once: the nine
        taps of a quad's four positions reach only the nine pooled positions around it, so g and the
        winners are loaded once per pooled neighbour rather than once per tap and position."""
        r = tl.program_id(0)
        PH, PW = H // 2, W // 2
        QH, QW = (H + 1) // 2, (W + 1) // 2
        quads = tl.program_id(1) * BM + tl.arange(0, BM)
        image, qy, qx = quads // (QH * QW), quads % (QH * QW) // QW, quads % QW
        valid = quads < B * QH * QW
        co = tl.arange(0, NB)
        acc0 = tl.zeros((BM, KB), tl.float32)  # one per position (a, b) of the quad, 2 a + b
        acc1 = tl.zeros((BM, KB), tl.float32)
        acc2 = tl.zeros((BM, KB), tl.float32)
        acc3 = tl.zeros((BM, KB), tl.float32)
        for dy in tl.static_range(3):
            for dx in tl.static_range(3):
                py, px = qy + dy - 1, qx + dx - 1
                fed = valid & (py >= 0) & (py < PH) & (px >= 0) & (px < PW)
                at = ((r * B + image) * PH * PW + py * PW + px)[:, None] * CO + co[None, :]
                keep = fed[:, None] & (co < CO)[None, :]
                won = tl.load(won_ptr + at, mask=keep, other=-1)
                g = tl.load(g_ptr + at, mask=keep, other=0.0)
                # input row 2 qy + a feeds conv row 2 qy + a - ky + 1: pooled row qy + dy - 1 when
                # (a - ky + 3) // 2 == dy, at window row (a - ky + 1) % 2; columns alike
                for a in tl.static_range(2):
                    for ky in tl.static_range(3):
                        if (a - ky + 3) // 2 == dy:
                            for b in tl.static_range(2):
                                for kx in tl.static_range(3):
                                    if (b - kx + 3) // 2 == dx:
                                        s = (a - ky + 3) % 2 * 2 + (b - kx + 3) % 2
                                        d = _mm(tl.where(won == s, g, 0.0),
                                                _tap_transposed(w_ptr, r, ky * 3 + kx, CI, CO, KB, NB), None, GPU)
                                        if a * 2 + b == 0:
                                            acc0 += d
                                        elif a * 2 + b == 1:
                                            acc1 += d
                                        elif a * 2 + b == 2:
                                            acc2 += d
                                        else:
                                            acc3 += d
        _store_quad(x_slope_ptr, x_g_ptr, acc0, 0, r, image, qy, qx, valid, B, H, W, CI, KB)
        _store_quad(x_slope_ptr, x_g_ptr, acc1, 1, r, image, qy, qx, valid, B, H, W, CI, KB)
        _store_quad(x_slope_ptr, x_g_ptr, acc2, 2, r, image, qy, qx, valid, B, H, W, CI, KB)
        _store_quad(x_slope_ptr, x_g_ptr, acc3, 3, r, image, qy, qx, valid, B, H, W, CI, KB)

    @batch_any_size
    def _inner_kernel_grad(x_ptr, sr, sb, sy, sx, sc, g_ptr, won_ptr, dw_ptr, B, H, W, CI: tl.constexpr,
                           CO: tl.constexpr, KB: tl.constexpr, NB: tl.constexpr, KY: tl.constexpr,
                           GPU: tl.constexpr, ROWS: tl.constexpr, SUB: tl.constexpr):
        """The (C_in, C_out) kernel gradients of KY rows of taps (all three, or row program_id(1)) from ROWS
        pooled positions of member r, SUB at a time. Each input position that the taps reach from a window
        is loaded once and multiplied, for every (window position s, tap) that joins them, by g where s won:
        (C_in, SUB) @ (SUB, C_out) into that tap's sum."""
        r, ky0, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        PH, PW = H // 2, W // 2
        n = B * PH * PW
        co = tl.arange(0, NB)
        dw0 = tl.zeros((KB, NB), tl.float32)  # tap (ky0 + t // 3, t % 3) in dw<t>
        dw1 = tl.zeros((KB, NB), tl.float32)
        dw2 = tl.zeros((KB, NB), tl.float32)
        dw3 = tl.zeros((KB, NB), tl.float32)
        dw4 = tl.zeros((KB, NB), tl.float32)
        dw5 = tl.zeros((KB, NB), tl.float32)
        dw6 = tl.zeros((KB, NB), tl.float32)
        dw7 = tl.zeros((KB, NB), tl.float32)
        dw8 = tl.zeros((KB, NB), tl.float32)
        for start in range(0, ROWS, SUB):
            rows = block * ROWS + start + tl.arange(0, SUB)
            image, py, px = rows // (PH * PW), rows % (PH * PW) // PW, rows % PW
            at = (r * n + rows)[:, None] * CO + co[None, :]
            keep = (rows < n)[:, None] & (co < CO)[None, :]
            won = tl.load(won_ptr + at, mask=keep, other=-1)
            g = tl.load(g_ptr + at, mask=keep, other=0.0)
            for dy in tl.static_range(KY + 1):
                for dx in tl.static_range(4):
                    xt = tl.trans(_inner_tap(x_ptr, sr, sb, sy, sx, sc, r, image, 2 * py + ky0 + dy - 1,
                                             2 * px + dx - 1, rows < n, H, W, CI, KB))
                    for s in tl.static_range(4):
                        if dy - s // 2 >= 0 and dy - s // 2 < KY and dx - s % 2 >= 0 and dx - s % 2 < 3:
                            t = (dy - s // 2) * 3 + dx - s % 2
                            gs = tl.where(won == s, g, 0.0)
                            if t == 0:
                                dw0 = _mm(xt, gs, dw0, GPU)
                            elif t == 1:
                                dw1 = _mm(xt, gs, dw1, GPU)
                            elif t == 2:
                                dw2 = _mm(xt, gs, dw2, GPU)
                            elif t == 3:
                                dw3 = _mm(xt, gs, dw3, GPU)
                            elif t == 4:
                                dw4 = _mm(xt, gs, dw4, GPU)
                            elif t == 5:
                                dw5 = _mm(xt, gs, dw5, GPU)
                            elif t == 6:
                                dw6 = _mm(xt, gs, dw6, GPU)
                            elif t == 7:
                                dw7 = _mm(xt, gs, dw7, GPU)
                            else:
                                dw8 = _mm(xt, gs, dw8, GPU)
        at = dw_ptr + ((r * tl.num_programs(2) + block) * 9 + ky0 * 3) * KB * NB
        at += tl.arange(0, KB)[:, None] * NB + co[None, :]
        tl.store(at, dw0)
        tl.store(at + KB * NB, dw1)
        tl.store(at + 2 * KB * NB, dw2)
        if KY == 3:
            tl.store(at + 3 * KB * NB, dw3)
            tl.store(at + 4 * KB * NB, dw4)
            tl.store(at + 5 * KB * NB, dw5)
            tl.store(at + 6 * KB * NB, dw6)
            tl.store(at + 7 * KB * NB, dw7)
            tl.store(at + 8 * KB * NB, dw8)


# While _compile_ahead runs in a thread, that thread's .pool (the threads that compile) and .started (the
# compilations); other threads launch as usual.
_ahead = threading.local()


def _launch(kernel, grid: tuple[int, ...], *args, **kwargs) -> None:
    """Launches kernel on grid; while _compile_ahead runs, compiles it for these arguments in a thread instead."""
    pool = getattr(_ahead, "pool", None)
    if pool is None:
        kernel[grid](*args, **kwargs)
    else:
        _ahead.started.append(pool.submit(kernel.warmup, *args, grid=grid, **kwargs))


def _compile_ahead(x: torch.Tensor, acts: tuple[int, ...], params: Sequence[torch.Tensor], backward: bool) -> None:
    """Compiles the kernels of a forward (and backward) through these blocks, each in its own thread.

    Triton compiles a kernel at its first launch, one after another; its compiler lets go of the GIL, so threads
    compile them at once, in about a third of the time. The forward and backward run here without launching anything (their torch ops see uninitialised
    memory, and their results are dropped); later processes on the machine find the kernels in Triton's
    disk cache."""
    with ThreadPoolExecutor(max_workers=8) as _ahead.pool:
        _ahead.started = []
        try:
            with torch.no_grad():
                h, saved = forward_blocks(x, acts, params, save=backward)
                if backward:
                    backward_blocks(saved, torch.empty_like(h), [w.shape for w in params[::2]])
        finally:
            _ahead.pool = None
        for compiled in _ahead.started:
            compiled.result()


def width(channels: int) -> int:
    """Channels padded to a power of two of at least 16, the smallest tensor-core product."""
    return max(16, triton.next_power_of_2(channels))


def gradient_dtype(device: torch.device) -> torch.dtype:
    """The pre-activation gradients passed between blocks: bf16 on a GPU, as the backward products take them
    (_mm), fp32 under the interpreter, which reads bf16 wrongly."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _saved(out: torch.Tensor, save: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The winners and slopes a forward saves for its backward, or, for an evaluation, which saves neither, out
    in their place (the kernel writes nothing there, and an evaluation is 10-15% faster for it)."""
    if not save:
        return out, out
    return torch.empty(out.shape, device=out.device, dtype=torch.int8), torch.empty(out.shape, device=out.device)


class FirstBlock:
    """x (R, batch, 1, 28, 28), weight (R, C, 1, 3, 3), bias (R, C) -> (R, batch, 14, 14, C)."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, act: int,
                dtype: torch.dtype, save: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        R, B, C = x.shape[0], x.shape[1], weight.shape[1]
        x, weight, bias = x.reshape(R, B, 784).contiguous(), weight.contiguous(), bias.contiguous()
        out = torch.empty(R, B, 14, 14, C, device=x.device, dtype=dtype)
        won, slope = _saved(out, save)
        block = SPILLING_BLOCK if act in (ACTIVATIONS[nn.Tanh], ACTIVATIONS[nn.GELU]) else BLOCK
        _launch(_forward, (R, triton.cdiv(B * 196, block)), x, weight, bias, out, won, slope, B, C, width(C), act,
                x.is_cuda, block, save, num_warps=WARPS)
        return out, [x, won, slope]

    @staticmethod
    def backward(saved: list[torch.Tensor], g: torch.Tensor,
                 weight_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel and bias gradients from g, the gradient at each window's winning pre-activation; no input
        gradient, as the first block takes the images."""
        x, won, _ = saved
        R, B, C = x.shape[0], x.shape[1], weight_shape[1]
        CB, blocks = width(C), triton.cdiv(B * 196, BACKWARD_ROWS)
        dw = torch.empty(R, blocks, 16, CB, device=x.device)
        db = torch.empty(R, blocks, CB, device=x.device)
        _launch(_backward, (R, blocks), x, won, g, dw, db, B, C, CB, x.is_cuda, BACKWARD_ROWS, BACKWARD_SUB,
                num_warps=WARPS)
        return dw.sum(1)[:, :9, :C].transpose(1, 2).reshape(weight_shape), db.sum(1)[:, :C]


class InnerBlock:
    """x (R, batch, H, W, C_in), any strides; weight (R, C_out, C_in, 3, 3), bias (R, C_out)
    -> (R, batch, H // 2, W // 2, C_out)."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, act: int,
                dtype: torch.dtype, save: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        R, B, H, W, CI = x.shape
        CO = weight.shape[1]
        taps = weight.permute(0, 3, 4, 2, 1).reshape(R, 9, CI, CO).contiguous()  # (R, tap, C_in, C_out)
        out = torch.empty(R, B, H // 2, W // 2, CO, device=x.device, dtype=dtype)
        won, slope = _saved(out, save)
        NB = width(CO)
        warps = min(8, max(4, NB // 16))
        BM = max(16, min(64, INNER_PAIRS_PER_WARP * warps // NB))
        grid = (R, triton.cdiv(out[0].numel() // CO, BM))
        _launch(_inner_forward, grid, x, *x.stride(), taps, bias.contiguous(), out, won, slope, B, H, W, CI, CO,
                width(CI), NB, act, x.is_cuda, BM, save, num_warps=warps)
        return out, [x, taps, won, slope]

    @staticmethod
    def backward(saved: list[torch.Tensor], g: torch.Tensor, weight_shape: torch.Size,
                 x_slope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From g, the gradient at each window's winning pre-activation (0 elsewhere): the block below's g
        (the gradient at x times x_slope, the slope that block saved), and the kernel and bias gradients."""
        x, taps, won, _ = saved
        R, B, H, W, CI = x.shape
        CO, KB, NB = taps.shape[-1], width(CI), width(taps.shape[-1])
        x_g = torch.empty(x.shape, device=x.device, dtype=gradient_dtype(x.device))
        if KB <= 64 and KB * NB <= QUAD_TILE:
            warps = max(4, KB * NB // 512)
            BM = 16 * warps
            _launch(_input_grad_by_quad, (R, triton.cdiv(B * ((H + 1) // 2) * ((W + 1) // 2), BM)), g, won, taps,
                    x_slope, x_g, B, H, W, CI, CO, KB, NB, x.is_cuda, BM, num_warps=warps)
        else:
            BM = max(16, min(128, INNER_TILE // KB))
            _launch(_input_grad_by_position, (R, triton.cdiv(B * H * W, BM)), g, won, taps, x_slope, x_g, B, H, W, CI,
                    CO, KB, NB, x.is_cuda, BM, num_warps=WARPS)
        rows_of_taps = 3 if KB * NB <= NINE_TAPS_TILE else 1
        blocks = triton.cdiv(g[0].numel() // CO, INNER_ROWS)
        dw = torch.empty(R, blocks, 9, KB, NB, device=x.device)
        _launch(_inner_kernel_grad, (R, 3 // rows_of_taps, blocks), x, *x.stride(), g, won, dw, B, H, W, CI, CO, KB,
                NB, rows_of_taps, x.is_cuda, INNER_ROWS, INNER_SUB, num_warps=WARPS)
        dw = dw.sum(1)[..., :CI, :CO].permute(0, 3, 2, 1).reshape(weight_shape)
        return x_g, dw, g.sum((1, 2, 3), dtype=torch.float32)


def forward_blocks(x: torch.Tensor, acts: Sequence[int], params: Sequence[torch.Tensor],
                   save: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x through the blocks (params: each block's kernels, then biases): the last block's output, and what
    the backward needs (with save; nothing of use without)."""
    h, saved = x, []
    for i, act in enumerate(acts):
        # the last block's output goes to torch's dense layers in fp32
        dtype = torch.float16 if i + 1 < len(acts) else torch.float32
        h, kept = (InnerBlock if i else FirstBlock).forward(h, params[2 * i], params[2 * i + 1], act, dtype, save)
        saved += kept
    return h, saved


def backward_blocks(saved: Sequence[torch.Tensor], grad: torch.Tensor,
                    weight_shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    """From forward_blocks' saved tensors and the gradient at its output: each block's kernel and bias
    gradients."""
    kept = [saved[:3]] + [saved[i:i + 4] for i in range(3, len(saved), 4)]  # FirstBlock's 3, InnerBlock's 4
    g = torch.empty(grad.shape, device=grad.device, dtype=gradient_dtype(grad.device))
    torch.mul(grad, kept[-1][-1], out=g)
    grads: list[torch.Tensor] = []
    for i in reversed(range(1, len(kept))):
        g, dw, db = InnerBlock.backward(kept[i], g, weight_shapes[i], kept[i - 1][-1])
        grads = [dw, db] + grads
    return [*FirstBlock.backward(kept[0], g, weight_shapes[0]), *grads]


class Blocks(torch.autograd.Function):
    """The blocks as one autograd node. The activations between blocks are kept in fp16 and the gradients
    between them in bf16, which autograd would not allow between nodes (it casts a gradient to its tensor's
    dtype, and fp16 gradients underflow); and each block's input gradient is multiplied by the slope below it
    as it is written."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, acts: tuple[int, ...], *params: torch.Tensor) -> torch.Tensor:
        h, saved = forward_blocks(x, acts, params)
        ctx.save_for_backward(*saved)
        ctx.weight_shapes = [w.shape for w in params[::2]]
        return h

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return None, None, *backward_blocks(ctx.saved_tensors, grad, ctx.weight_shapes)


def fusable_blocks(layers: Sequence[nn.Module], device: torch.device) -> int:
    """How many leading (conv, activation, pool) blocks of a models.cnn layer list the kernels run: all, or 0."""
    n = 0
    while 3 * n < len(layers) and isinstance(layers[3 * n], nn.Conv2d):
        n += 1
    if n and layers[0].in_channels == 1 and all(fusable(*layers[3 * i:3 * i + 3], device) for i in range(n)):
        return n
    return 0


def blocks(x: torch.Tensor, params: Sequence[tuple[torch.Tensor, torch.Tensor, nn.Module]]) -> torch.Tensor:
    """x (R, batch, 1, 28, 28) through the blocks, each given as ((R, C_out, C_in, 3, 3) kernels, (R, C_out)
    biases, activation) -> (R, batch, features), in nn.Flatten's (channel, row, column) order."""
    acts = tuple(ACTIVATIONS[type(act)] for _, _, act in params)
    tensors = [t for w, b, _ in params for t in (w, b)]
    training = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if x.is_cuda and not torch.cuda.is_current_stream_capturing():
        key = ("conv_pool", acts, x.shape[1:], *(t.shape[1:] for t in tensors), training)
        kernels.once(key, lambda: _compile_ahead(x, acts, tensors, backward=training))
    h = Blocks.apply(x, acts, *tensors) if training else forward_blocks(x, acts, tensors, save=False)[0]
    return h.permute(0, 1, 4, 2, 3).flatten(2)
