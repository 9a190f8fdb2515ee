"""Every network the studies train, each rebuilt from a small JSON-able spec.

A spec is a dict such as {"family": "mlp", "widths": [256, 128], "activation": "tanh"}; `build(spec)`
makes the module, and `save`/`load` keep weights and spec together so an export needs no code but this.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune_mnist.errors import UserError
from tune_mnist.files import atomic_save

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
}
FAMILIES = ("mlp", "cnn", "tiny_cnn")


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(widths: Sequence[int], act: str = "tanh", d_in: int = 784, n_out: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = [d_in, *widths]
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), activation(act)]
    layers.append(nn.Linear(sizes[-1], n_out))
    return nn.Sequential(*layers)


def cnn(channels: Sequence[int] = (32, 64), hidden: int = 128, act: str = "relu") -> nn.Sequential:
    """3x3 conv + 2x2 max-pool blocks on 28x28 inputs, then an optional hidden dense layer."""
    layers: list[nn.Module] = []
    side, c_in = 28, 1
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), activation(act), nn.MaxPool2d(2)]
        side, c_in = side // 2, c
    layers.append(nn.Flatten())
    flat = c_in * side * side
    if hidden:
        layers += [nn.Linear(flat, hidden), activation(act)]
        flat = hidden
    layers.append(nn.Linear(flat, 10))
    return nn.Sequential(*layers)


def tiny_cnn() -> nn.Sequential:
    """The random-search net: 1->4 and 4->8 5x5 stride-2 convs (28 -> 12 -> 4), then 128 -> 10."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 5, stride=2), nn.ReLU(),
        nn.Conv2d(4, 8, 5, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(128, 10),
    )


def tiny_cnn_patches(x: torch.Tensor) -> torch.Tensor:
    """(images, 25, 144): the 5x5 patch under each of tiny_cnn's 12x12 conv1 positions (qy * 12 + qx).
    Strided views and one copy; F.unfold on CUDA launches a kernel per image (38 ms for 5,000)."""
    return x[:, 0].unfold(1, 5, 2).unfold(2, 5, 2).permute(0, 3, 4, 1, 2).reshape(len(x), 25, 144)


def build(spec: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The module for a spec; "init_scale" multiplies PyTorch's default initialisation (0 gives zeros).

    Its weights are made and initialised on `device`, from that device's generator: a population's members
    are built where they train, ten times faster than drawn on the host and copied over.
    """
    with torch.device(device):
        model = _build(spec)
    if spec.get("init_scale", 1.0) != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(spec["init_scale"])
    return model


def _build(spec: dict[str, Any]) -> nn.Module:
    family = spec.get("family")
    if family == "mlp":
        return mlp(spec["widths"], spec.get("activation", "tanh"))
    if family == "cnn":
        return cnn(spec.get("channels", (32, 64)), spec.get("hidden", 128), spec.get("activation", "relu"))
    if family == "tiny_cnn":
        return tiny_cnn()
    raise UserError(f"unknown model family {family!r}; choose from {', '.join(FAMILIES)}")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save(path: str | os.PathLike, weights: nn.Module | dict[str, torch.Tensor], spec: dict[str, Any],
         **info: Any) -> None:
    """Weights (a module's, or its state dict), spec and any metrics in one file, on CPU, written atomically."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    state = {k: v.detach().cpu() for k, v in state.items()}
    atomic_save({"spec": spec, "state_dict": state, "info": info}, Path(path))


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuilds a saved model; its spec and info are on `model.spec` and `model.info`."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = build(blob["spec"])
    model.load_state_dict(blob["state_dict"])
    model.spec, model.info = blob["spec"], blob.get("info", {})
    return model
