"""Adam (and AdamW) for a population's stacked parameters, each member with its own learning rate and weight decay.

`grad_and_adam` fuses a dense layer's update into the product that makes its gradient: a program computes a tile
of grad^T @ h over the batch (TF32, as the batched matmul it replaces) and applies Adam to that tile of the
weights and moments, so the gradient never leaves the registers. A population MLP's step is bound by memory,
and this is most of its traffic. `adam` updates any other stacked parameter (biases, conv kernels) from its
gradient, one launch a tensor. Both compute what torch.optim.Adam computes, member by member.
"""

from __future__ import annotations

import math

import torch

from tune_mnist.kernels import tl, triton

# A program updates BM output rows by BN input columns of a weight, BK batch rows a product: the largest tiles
# whose weight, moments and gradient still fit in registers. Members are the grid's last axis, so programs
# launched together share a member's gradient and input tiles in L2.
BM, BN, BK, WARPS = 32, 64, 32, 4
BLOCK = 1024


if triton is not None:
    @triton.jit
    def _update(w, m, v, grad, t, lr, weight_decay, beta1, beta2, log2_beta1, log2_beta2, eps,
                DECOUPLED: tl.constexpr):
        """torch.optim.Adam's (AdamW's with DECOUPLED) update of w, m, v at step t."""
        if DECOUPLED:
            w = w - lr * weight_decay * w
        else:
            grad = grad + weight_decay * w
        m = beta1 * m + (1.0 - beta1) * grad
        v = beta2 * v + (1.0 - beta2) * grad * grad
        step_size = lr / (1.0 - tl.exp2(t * log2_beta1))
        w = w - step_size * m / (tl.sqrt(v) / tl.sqrt(1.0 - tl.exp2(t * log2_beta2)) + eps)
        return w, m, v

    @triton.jit
    def _grad_and_adam(h_ptr, h_sr, h_sb, h_si, g_ptr, g_sr, g_sb, g_so, w_ptr, m_ptr, v_ptr, step_ptr, lr_ptr,
                       wd_ptr, B, N_OUT, N_IN, beta1, beta2, log2_beta1, log2_beta2, eps,
                       DECOUPLED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        o = tl.program_id(0) * BM + tl.arange(0, BM)
        i = tl.program_id(1) * BN + tl.arange(0, BN)
        r = tl.program_id(2)
        grad = tl.zeros((BM, BN), tl.float32)
        for start in range(0, B, BK):
            k = start + tl.arange(0, BK)
            g = tl.load(g_ptr + r * g_sr + k[None, :] * g_sb + o[:, None] * g_so,
                        mask=(o[:, None] < N_OUT) & (k[None, :] < B), other=0.0)
            h = tl.load(h_ptr + r * h_sr + k[:, None] * h_sb + i[None, :] * h_si,
                        mask=(k[:, None] < B) & (i[None, :] < N_IN), other=0.0)
            grad = tl.dot(g, h, grad)
        at = (r * N_OUT + o[:, None]) * N_IN + i[None, :]
        keep = (o[:, None] < N_OUT) & (i[None, :] < N_IN)
        w, m, v = _update(tl.load(w_ptr + at, mask=keep), tl.load(m_ptr + at, mask=keep),
                          tl.load(v_ptr + at, mask=keep), grad, tl.load(step_ptr) + 1.0, tl.load(lr_ptr + r),
                          tl.load(wd_ptr + r), beta1, beta2, log2_beta1, log2_beta2, eps, DECOUPLED)
        tl.store(w_ptr + at, w, mask=keep)
        tl.store(m_ptr + at, m, mask=keep)
        tl.store(v_ptr + at, v, mask=keep)

    @triton.jit
    def _adam(w_ptr, g_ptr, m_ptr, v_ptr, step_ptr, lr_ptr, wd_ptr, N, beta1, beta2, log2_beta1, log2_beta2, eps,
              DECOUPLED: tl.constexpr, BLOCK: tl.constexpr):
        r = tl.program_id(1)
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        keep = i < N
        at = r * N + i
        w, m, v = _update(tl.load(w_ptr + at, mask=keep), tl.load(m_ptr + at, mask=keep),
                          tl.load(v_ptr + at, mask=keep), tl.load(g_ptr + at, mask=keep), tl.load(step_ptr),
                          tl.load(lr_ptr + r), tl.load(wd_ptr + r), beta1, beta2, log2_beta1, log2_beta2, eps,
                          DECOUPLED)
        tl.store(w_ptr + at, w, mask=keep)
        tl.store(m_ptr + at, m, mask=keep)
        tl.store(v_ptr + at, v, mask=keep)


def _constants(betas: tuple[float, float], eps: float) -> tuple[float, ...]:
    beta1, beta2 = betas
    return beta1, beta2, math.log2(beta1), math.log2(beta2), eps


def grad_and_adam(weight: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: torch.Tensor, lr: torch.Tensor,
                  weight_decay: torch.Tensor, grad: torch.Tensor, h: torch.Tensor, betas: tuple[float, float],
                  eps: float, decoupled: bool) -> None:
    """Updates weight (R, out, in) in place from its layer's output gradient grad (R, batch, out) and input h
    (R, batch, in), whose product is its gradient. It runs inside the backward, before the optimizer's step
    advances `step`, so it takes step + 1."""
    R, B, n_out = grad.shape
    n_in = h.shape[-1]
    _grad_and_adam[(triton.cdiv(n_out, BM), triton.cdiv(n_in, BN), R)](
        h, *h.stride(), grad, *grad.stride(), weight, m, v, step, lr, weight_decay, B, n_out, n_in,
        *_constants(betas, eps), decoupled, BM, BN, BK, num_warps=WARPS)


def adam(weight: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: torch.Tensor,
         lr: torch.Tensor, weight_decay: torch.Tensor, betas: tuple[float, float], eps: float,
         decoupled: bool) -> None:
    """Updates a contiguous stacked parameter (R, ...) in place from its gradient, at step `step`."""
    R, n = weight.shape[0], weight[0].numel()
    _adam[(triton.cdiv(n, BLOCK), R)](weight, grad.contiguous(), m, v, step, lr, weight_decay, n,
                                      *_constants(betas, eps), decoupled, BLOCK)
