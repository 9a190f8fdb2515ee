"""noise.corrupt as one Triton kernel on a GPU: the splitmix64 hash, the draw and the replacement in registers.
In torch ops it is about twenty int64 passes over (R, batch, 784) tensors, a third of a population MLP's step;
here it reads the batch once and writes it once, with the same bits.
"""

from __future__ import annotations

import torch

from tune_mnist.kernels import tl, triton

BLOCK = 1024


if triton is not None:
    @triton.jit
    def _corrupt(x_ptr, out_ptr, samples_ptr, stride_r, stride_b, threshold_ptr, runs_ptr, batch, pixels,
                 BLOCK: tl.constexpr):
        row = tl.program_id(0)                      # (run, position in batch), flattened
        r, b = row // batch, row % batch
        sample = tl.load(samples_ptr + r * stride_r + b * stride_b)
        base = tl.load(runs_ptr + r) + (sample << 10)
        threshold = tl.load(threshold_ptr + r)
        for start in range(0, pixels, BLOCK):
            pixel = start + tl.arange(0, BLOCK)
            inside = pixel < pixels
            z = (base + pixel.to(tl.int64)) * -7046029254386353131      # splitmix64, as noise._hash
            z = (z ^ ((z >> 30) & 17179869183)) * -4658895280553007687
            z = (z ^ ((z >> 27) & 137438953471)) * -7723592293110705685
            z = z ^ ((z >> 31) & 8589934591)
            replace = ((z >> 40) & 16777215).to(tl.float64) < threshold
            noise = (z & 16777215).to(tl.float32) / 16777216.0
            x = tl.load(x_ptr + row * pixels + pixel, mask=inside)
            tl.store(out_ptr + row * pixels + pixel, tl.where(replace, noise, x), mask=inside)


def corrupt(x: torch.Tensor, threshold: torch.Tensor, runs: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """train.corrupt's result for x (R, batch, ...) fp32, threshold and runs from train.noise_keys."""
    R, batch = x.shape[:2]
    x = x.contiguous()
    out = torch.empty_like(x)
    _corrupt[(R * batch,)](x, out, samples, samples.stride(0), samples.stride(1), threshold, runs, batch,
                           x[0, 0].numel(), BLOCK)
    return out
