"""The one training loop every study uses: data resident on the device, no host sync inside an epoch.

Each epoch draws its permutation and corruption noise from a generator seeded by (seed, epoch), so
a run resumed from an epoch checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tune_mnist.data import DeviceSplit

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
EVAL_CHUNK = 8192


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 128       # 0 means full batch
    optimizer: str = "adam"     # adam | adamw | sgd
    lr: float = 1e-3
    momentum: float = 0.0       # sgd only
    weight_decay: float = 0.0
    seed: int = 0
    corruption: float = 0.0     # probability that a training pixel is replaced by U[0, 1], drawn afresh each time
    inputs: str = "unit"        # unit: x in [0, 1]; center: x - 0.5; standard: (x - mean) / std
    eval_every: int = 1         # evaluate and report every n epochs (and always after the last)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TrainConfig":
        """Picks this dataclass's fields out of a (larger) Tune config."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare(x: torch.Tensor, inputs: str) -> torch.Tensor:
    if inputs == "unit":
        return x
    if inputs == "center":
        return x - 0.5
    if inputs == "standard":
        return (x - MNIST_MEAN) / MNIST_STD
    raise ValueError(f"unknown input scaling {inputs!r}")


def corrupt(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    if p <= 0:
        return x
    mask = torch.rand(x.shape, device=x.device, generator=generator) < p
    noise = torch.rand(x.shape, device=x.device, generator=generator)
    return torch.where(mask, noise, x)


def make_optimizer(model: nn.Module | list[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """For a module, or for the stacked parameter tensors of a population.

    On a GPU the fused implementations update every parameter in one kernel instead of dozens.
    """
    params = list(model.parameters() if isinstance(model, nn.Module) else model)
    fused = params[0].is_cuda or None
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


@torch.inference_mode()
def evaluate(model: nn.Module, split: DeviceSplit, inputs: str = "unit") -> dict[str, float]:
    """Mean cross-entropy and accuracy over a whole split."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device, dtype=torch.long)
    for i in range(0, len(split), EVAL_CHUNK):
        logits = model(prepare(split.x[i:i + EVAL_CHUNK], inputs))
        y = split.y[i:i + EVAL_CHUNK]
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = len(split)
    return {"loss": loss.item() / n, "acc": correct.item() / n}


def epoch_generator(cfg: TrainConfig, epoch: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + epoch)


def check_finite(loss: float, cfg: TrainConfig, epoch: int) -> float:
    """A diverged run fails loudly: Tune records the trial as failed and the study goes on."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss} in epoch {epoch + 1} (lr={cfg.lr}): the run diverged")
    return loss


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, train: DeviceSplit, cfg: TrainConfig,
                epoch: int) -> dict[str, float]:
    """One pass over the training split; losses stay on the device until the epoch ends."""
    device = train.x.device
    g = epoch_generator(cfg, epoch, device)
    n = len(train)
    batch = cfg.batch_size or n
    order = torch.randperm(n, device=device, generator=g)
    total = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    model.train()
    for i in range(0, n, batch):
        idx = order[i:i + batch]
        # full-batch steps see every image whatever the order: skip the copy a permuted gather makes
        x, y = (train.x, train.y) if batch >= n else (train.x[idx], train.y[idx])
        x = corrupt(x, cfg.corruption, g)
        logits = model(prepare(x, cfg.inputs))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    loss = check_finite(total.item() / n, cfg, epoch)
    return {"train_loss": loss, "train_acc": correct.item() / n}


EpochHook = Callable[[dict[str, float]], None]


def fit(model: nn.Module, splits: dict[str, DeviceSplit], cfg: TrainConfig,
        on_epoch: EpochHook | None = None, opt: torch.optim.Optimizer | None = None,
        start_epoch: int = 0) -> dict[str, float]:
    """Trains for cfg.epochs (from start_epoch), calling on_epoch with each epoch's metrics.

    Per epoch: running train loss/acc, val and test loss/acc. After the last epoch the metrics also
    hold final_train_loss/acc, measured on the full training split with the final weights.
    """
    opt = opt or make_optimizer(model, cfg)
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.epochs):
        start = time.perf_counter()
        metrics = {"epoch": epoch + 1, **train_epoch(model, opt, splits["train"], cfg, epoch)}
        if (epoch + 1) % cfg.eval_every and epoch + 1 != cfg.epochs:
            continue
        for name in ("val", "test"):
            result = evaluate(model, splits[name], cfg.inputs)
            metrics[f"{name}_loss"], metrics[f"{name}_acc"] = result["loss"], result["acc"]
        if epoch + 1 == cfg.epochs:
            final = evaluate(model, splits["train"], cfg.inputs)
            metrics["final_train_loss"], metrics["final_train_acc"] = final["loss"], final["acc"]
        metrics["epoch_seconds"] = time.perf_counter() - start
        if on_epoch:
            on_epoch(metrics)
    return metrics
