"""A population: R nets of one family and depth held as one stacked model. A single net is a population of one.

A lone MNIST-sized net leaves a GPU mostly idle; R of them stacked fill it. The stacked forward is written
out layer by layer rather than with torch.func.vmap, whose batched convolutions are slow: the members' conv
channels sit side by side in one grouped convolution (groups=R), or in the fused blocks of kernels/conv_pool.py
on a GPU, and dense layers are one batched matmul over the members.

Members may differ in their MLP's hidden widths (not its depth): each layer is padded to the largest width,
the padding starts at zero, and a fixed mask zeroes a member's padded units after each activation, so no
gradient ever reaches the padding and member r computes exactly what its own net would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tune_mnist import models
from tune_mnist.kernels import conv_pool
from tune_mnist.optim import trim


@dataclass(frozen=True)
class Member:
    """One net of a population: its architecture and what it trains with."""

    spec: dict[str, Any] = field(hash=False)  # models.build's spec
    seed: int = 0                 # initialisation, data order and corruption noise
    lr: float = 1e-3
    weight_decay: float = 0.0
    corruption: float = 0.0       # probability that a training pixel is replaced by U[0, 1), afresh each epoch


def structure(spec: dict[str, Any]) -> dict[str, Any]:
    """What members of one population must share: all of the spec but an MLP's widths, and its depth."""
    shared = {k: v for k, v in spec.items() if k != "widths"}
    return {**shared, "depth": len(spec["widths"])} if "widths" in spec else shared


class StackedLinear(torch.autograd.Function):
    """h (R, batch, in) @ weight (R, out, in)^T + bias (R, out), each member its own dense layer.

    torch.baddbmm computes the same, but its backward yields the weight's gradient transposed, which
    autograd then copies into the weight's layout each step; here the gradient is made in place, as
    grad^T @ h. With an optimizer whose kernel takes the weight, the backward updates the weight itself.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, optimizer: Any) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.optimizer = optimizer
        return torch.baddbmm(bias.unsqueeze(1), h, weight.mT)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        dh = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None  # none for the images
        # after dh, which needs the weight before its update
        if ctx.optimizer is not None and ctx.optimizer.fused_step(weight, grad, h):
            return dh, None, grad.sum(1), None
        return dh, torch.bmm(grad.mT, h), grad.sum(1), None


class Population:
    """R nets, initialised as separate runs with their seeds would be."""

    def __init__(self, members: Sequence[Member], device: torch.device | str):
        shared = structure(members[0].spec)
        for m in members:
            if structure(m.spec) != shared:
                raise ValueError(f"a population's members share all of their spec but MLP widths: {m.spec} vs "
                                 f"{members[0].spec}")
        self.members, self.device = list(members), torch.device(device)
        nets = []
        for m in members:
            torch.manual_seed(m.seed)
            nets.append(models.build(m.spec, device))
        self.layers = list(nets[0].named_children())  # the layer sequence; weights come from self.params
        self.shapes = [{k: tuple(p.shape) for k, p in net.named_parameters()} for net in nets]
        self.params: dict[str, torch.Tensor] = {}
        for name in self.shapes[0]:
            largest = [max(sizes) for sizes in zip(*(s[name] for s in self.shapes))]
            stacked = torch.zeros(len(nets), *largest, device=device)
            with torch.no_grad():
                for r, net in enumerate(nets):
                    stacked[r][self.slices(r, name)] = net.get_parameter(name)
            self.params[name] = stacked.requires_grad_()
        self.masks = self.unit_masks()
        self.fused_blocks = conv_pool.fusable_blocks([m for _, m in self.layers], self.device)

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"Population of {len(self)} x {structure(self.members[0].spec)}"

    def slices(self, r: int, name: str) -> tuple[slice, ...]:
        """Where member r's own entries of a stacked parameter lie (its padding is the rest)."""
        return tuple(slice(0, n) for n in self.shapes[r][name])

    def unit_masks(self) -> dict[str, torch.Tensor]:
        """Per activation after a dense layer, (R, 1, width): 1 on each member's own units, where widths differ."""
        masks, widths = {}, None
        for name, layer in self.layers:
            if widths is not None and len(set(widths)) > 1:
                masks[name] = torch.stack([torch.arange(max(widths), device=self.device) < n for n in widths])
                masks[name] = masks[name].float().unsqueeze(1)
            widths = [s[f"{name}.weight"][0] for s in self.shapes] if isinstance(layer, nn.Linear) else None
        return masks

    def __call__(self, x: torch.Tensor, shared: bool = False, optimizer: Any = None) -> torch.Tensor:
        """(R, batch, 10) logits; x is (R, batch, ...) or, with shared=True, one (batch, ...) for all. A training
        step passes its optimizer: where its kernel runs, the dense weights are updated in their own backward.

        Activations move through three layouts: "shared" (batch, ...), one input for every member;
        "channels" (batch, R*C, H, W), each member's conv channels side by side; "members" (R, batch, F).
        """
        R, h, layers = len(self), x, self.layers
        layout = "shared" if shared else "members"
        if self.fused_blocks:
            blocks = []
            for i in range(self.fused_blocks):
                (name, _), (_, act) = self.layers[3 * i:3 * i + 2]
                blocks.append((self.params[f"{name}.weight"], self.params[f"{name}.bias"], act))
            h = conv_pool.blocks(h.expand(R, *h.shape) if shared else h, blocks)
            layers, layout = layers[3 * self.fused_blocks + 1:], "members"
        for name, layer in layers:
            if isinstance(layer, nn.Conv2d):
                w, b = self.params[f"{name}.weight"].flatten(0, 1), self.params[f"{name}.bias"].flatten()
                if layout == "members":
                    h = h.transpose(0, 1).flatten(1, 2)
                h = F.conv2d(h, w, b, layer.stride, layer.padding, groups=1 if layout == "shared" else R)
                layout = "channels"
            elif isinstance(layer, nn.Flatten):
                if layout == "channels":
                    h, layout = h.reshape(h.shape[0], R, -1).transpose(0, 1), "members"
                else:
                    h = h.flatten(2 if layout == "members" else 1)
            elif isinstance(layer, nn.Linear):  # a shared (batch, F) input broadcasts to every member
                h = StackedLinear.apply(h.expand(R, *h.shape[-2:]), self.params[f"{name}.weight"],
                                        self.params[f"{name}.bias"], optimizer)
                layout = "members"
            else:  # activations and pooling act per channel, in any layout
                h = layer(h)
                if name in self.masks:
                    h = h * self.masks[name]
        return h

    def member_state(self, r: int) -> dict[str, torch.Tensor]:
        """Member r's own weights (no padding), on the CPU, in tensors of their own."""
        return {k: v.detach()[r][self.slices(r, k)].to("cpu", copy=True) for k, v in self.params.items()}

    def n_params(self, r: int = 0) -> int:
        """Parameters of member r."""
        return sum(math.prod(shape) for shape in self.shapes[r].values())

    def keep(self, positions: Sequence[int]) -> None:
        """Only the members at these positions stay (successive halving drops the others)."""
        index = torch.tensor(list(positions), device=self.device)
        self.params = {k: v.detach()[index].requires_grad_() for k, v in self.params.items()}
        self.masks = {k: v[index] for k, v in self.masks.items()}
        self.members = [self.members[i] for i in positions]
        self.shapes = [self.shapes[i] for i in positions]

    @torch.no_grad()
    def load(self, params: dict[str, torch.Tensor]) -> None:
        """Copies stacked weights in (a checkpoint's, or a transplant's mix). A checkpoint of a population that
        has let members go may be padded wider than these members need: the padding beyond is zero."""
        for k, v in self.params.items():
            v.copy_(trim(params[k], v))
