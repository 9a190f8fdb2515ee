"""Fused screening kernel for the random search: a Triton kernel counts, for many random TinyCNNs at
once, how many train images each gets right, keeping every activation in registers.

One program takes G nets and BI images. It walks conv2's four output rows; each row sees a band of
five conv1 rows (60 positions, padded to 64), so conv1 is recomputed on that band as one product of
the images' shared 5x5 patches with the G nets' kernels, and conv2 on the band is a dense 32x256 map
per net: the same for every row, so one gather per net builds it. Only the counts leave the kernel; the
conv1 output that bounds the unfused scorer (random_search.logits) is never stored. It multiplies in
fp16 on tensor cores, so its counts can differ from fp32 by an image or two: the search re-scores in
fp32 every net within SCREEN_MARGIN images of the threshold (random_search.Search.candidates).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from tune_mnist.kernels import tl, triton
from tune_mnist.models import tiny_cnn_patches

CHUNK = 65_536  # nets whose operands are built at once (1.4 GB)
G, BI = 4, 32   # nets and images per program: conv1's product is (BI*16, 32) x (32, 4G), G*4 >= 16 for tensor cores
DTYPE = torch.float16   # on tensor cores; its counts differ from fp32 by a quarter as often as bf16's, by half as much


if triton is not None:
    @triton.jit
    def _count_correct(x_ptr, y_ptr, w1_ptr, b1_ptr, m_ptr, b2_ptr, h_ptr, b3_ptr, out_ptr, n_nets, n_images,
                       G: tl.constexpr, BI: tl.constexpr):
        """Operands in the layouts of operands(); products in x_ptr's dtype (fp16), sums in fp32."""
        dtype = x_ptr.dtype.element_ty
        nets = tl.program_id(0) * G + tl.arange(0, G)
        live = nets < n_nets
        j, k, o, c = tl.arange(0, 32), tl.arange(0, 64), tl.arange(0, 32), tl.arange(0, 16)
        col = tl.arange(0, 4 * G)                      # conv1 output column: net col // 4, channel col % 4
        col_net = tl.program_id(0) * G + col // 4
        w1 = tl.load(w1_ptr + col_net[None, :] * 128 + j[:, None] * 4 + (col % 4)[None, :],
                     mask=(col_net < n_nets)[None, :], other=0.0)
        b1 = tl.load(b1_ptr + col_net * 4 + col % 4, mask=col_net < n_nets, other=0.0)
        rows = tl.arange(0, BI * 16)                   # (image, band position) of one 16-position slice
        image = tl.program_id(1) * BI + rows // 16
        logits = tl.zeros((G, BI, 16), tl.float32)
        for oy in range(4):
            acc = tl.zeros((G, BI, 32), tl.float32)
            for part in range(4):
                a = tl.load(x_ptr + ((oy * n_images + image[:, None]) * 64 + part * 16 + (rows % 16)[:, None]) * 32
                            + j[None, :], mask=(image < n_images)[:, None], other=0.0)
                h = tl.maximum(tl.dot(a, w1) + b1[None, :], 0.0).to(dtype)
                h = tl.reshape(tl.permute(tl.reshape(h, (BI, 16, G, 4)), (2, 0, 3, 1)), (G, BI, 64))
                m = tl.load(m_ptr + ((nets[:, None, None] * 4 + part) * 64 + k[None, :, None]) * 32
                            + o[None, None, :], mask=live[:, None, None], other=0.0)
                acc = tl.dot(h, m, acc)
            b2 = tl.load(b2_ptr + nets[:, None] * 32 + o[None, :], mask=live[:, None], other=0.0)
            h2 = tl.maximum(acc + b2[:, None, :], 0.0).to(dtype)
            head = tl.load(h_ptr + ((nets[:, None, None] * 4 + oy) * 32 + o[None, :, None]) * 16 + c[None, None, :],
                           mask=live[:, None, None], other=0.0)
            logits = tl.dot(h2, head, logits)
        logits += tl.load(b3_ptr + nets[:, None] * 16 + c[None, :], mask=live[:, None], other=0.0)[:, None, :]
        # A net whose fp16 activations overflowed counts every image right, so the search re-scores it in fp32.
        finite = tl.abs(logits) < float("inf")     # padded classes (-inf) are not
        overflow = tl.sum(tl.sum((finite == 0) & (c < 10)[None, None, :], 2), 1)
        i = tl.program_id(1) * BI + tl.arange(0, BI)
        y = tl.load(y_ptr + i, mask=i < n_images, other=-1)
        predicted = tl.argmax(tl.where(finite, logits, float("-inf")), 2)
        correct = tl.sum((predicted == y[None, :]).to(tl.int32), 1)
        tl.atomic_add(out_ptr + nets, tl.where(overflow > 0, BI, correct), mask=live)


def band_patches(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(4, images, 64, 32): for conv2 output row oy, the 5x5 patches under conv1's band of rows 2oy..2oy+4
    (position r*12 + col, padded to 64) with the 25 pixels padded to 32."""
    patches = tiny_cnn_patches(x)
    bands = torch.stack([patches[:, :, 24 * oy:24 * oy + 60] for oy in range(4)])   # rows 2oy.. start at 24*oy
    return F.pad(bands.transpose(2, 3), (0, 7, 0, 4)).to(dtype).contiguous()


@functools.cache
def band_map_index(device: torch.device) -> torch.Tensor:
    """Where each entry of a net's band map (4 slices x 64 (channel, position) x 32 (out channel, ox)) comes
    from in its 800 conv2 weights; 800 (a zero appended to them) where an output does not see the input."""
    index = torch.full((4, 64, 32), 800, dtype=torch.long)
    for part in range(4):
        for c in range(4):
            for pp in range(16):
                p = part * 16 + pp
                if p >= 60:
                    continue
                ky, col = divmod(p, 12)
                for o in range(8):
                    for ox in range(4):
                        if 0 <= col - 2 * ox < 5:
                            index[part, c * 16 + pp, o * 4 + ox] = ((o * 4 + c) * 5 + ky) * 5 + col - 2 * ox
    return index.flatten().to(device)


def operands(nets: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The nets' weights in the kernel's layouts: products' operands in dtype, biases fp32, padded classes -inf.
    Built here rather than gathered inside the kernel, where each program would repeat the gathers (2x slower)."""
    n = nets["w1"].shape[0]
    w2 = torch.cat([nets["w2"].reshape(n, 800), nets["w2"].new_zeros(n, 1)], 1).to(dtype)
    head = nets["w3"].view(n, 10, 8, 4, 4).permute(0, 3, 2, 4, 1).reshape(n, 4, 32, 10)
    return {"w1": F.pad(nets["w1"].reshape(n, 4, 25).transpose(1, 2), (0, 0, 0, 7)).to(dtype).contiguous(),
            "b1": nets["b1"].float().contiguous(),
            "m": w2.index_select(1, band_map_index(w2.device)),
            "b2": nets["b2"].float().repeat_interleave(4, 1).contiguous(),
            "head": F.pad(head, (0, 6)).to(dtype).contiguous(),
            "b3": F.pad(nets["b3"].float(), (0, 6), value=-torch.inf).contiguous()}


def count_correct(nets: dict[str, torch.Tensor], bands: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(nets,) int32: how many of the images (bands from band_patches, labels y) each net gets right.
    Chunked so the operands (21 KB a net) stay bounded whatever the step size."""
    n, images = nets["w1"].shape[0], bands.shape[1]
    out = torch.zeros(n, dtype=torch.int32, device=bands.device)
    for start in range(0, n, CHUNK):
        w = operands({k: v[start:start + CHUNK] for k, v in nets.items()}, bands.dtype)
        part = len(w["w1"])
        _count_correct[(triton.cdiv(part, G), triton.cdiv(images, BI))](
            bands, y, w["w1"], w["b1"], w["m"], w["b2"], w["head"], w["b3"], out[start:], part, images,
            G=G, BI=BI, num_warps=4, num_stages=2)
    return out
