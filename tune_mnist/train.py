"""The one trainer: a population's members train together, data resident on the device, no host sync inside an epoch.

A single net is a population of one. Each member draws its epoch's shuffle from a generator seeded by (seed,
epoch) and its corruption noise from a hash of (seed, epoch, image, pixel), so member r of any population,
resumed or not, trains exactly as its own run would. The members share one step: the loss is the sum of their
own mean losses, so each gets its own gradient, and the optimizer updates each with its own lr and weight decay.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from tune_mnist import noise
from tune_mnist.data import DeviceSplit, scale_inputs
from tune_mnist.optim import Optimizer
from tune_mnist.population import Population

# Member-images per evaluation chunk: every member's activations are alive at once, and larger chunks
# amortise the launches of a small net's forward.
EVAL_CHUNK = 32768


@dataclass
class TrainConfig:
    """What every member of a population trains with (Member holds what may differ)."""

    epochs: int = 3
    batch_size: int = 128       # 0 means full batch
    optimizer: str = "adam"     # adam | adamw | sgd
    momentum: float = 0.0       # sgd only
    inputs: str = "unit"        # unit: x in [0, 1]; center: x - 0.5; standard: (x - mean) / std
    eval_every: int = 1         # evaluate and report every n epochs (and always after the last)

    @classmethod
    def from_settings(cls, s: Any, **fixed: Any) -> "TrainConfig":
        """This dataclass's fields that a study's Settings has, by name, and `fixed` ones the study sets itself
        (linear: optimizer="sgd"). A trial gets it as config["train"] (as_dict) and rebuilds it with
        TrainConfig(**config["train"])."""
        return cls(**{f.name: getattr(s, f.name) for f in fields(cls) if hasattr(s, f.name)} | fixed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_optimizer(pop: Population, cfg: TrainConfig) -> Optimizer:
    """The population's optimizer, each member with its lr and weight decay; its kernel, where it runs, takes
    the dense weights' updates into their backward (the step passes it to the population's forward)."""
    dense = [name for name, p in pop.params.items() if name.endswith(".weight") and p.dim() == 3]
    return Optimizer(pop.params, cfg.optimizer, [m.lr for m in pop.members], [m.weight_decay for m in pop.members],
                     cfg.momentum, dense)


class GraphedStep:
    """Calls step(idx) (gather, corrupt, forward, backward, optimizer step, running sums), on a GPU replayed
    from a CUDA graph.

    A small net's training step is dozens of kernels that each take less GPU time than the host needs to
    launch them; replaying one captured graph launches them all at once. The first `warmup` calls run eagerly
    on a side stream, as capture requires; then the step is captured once for the full batch shape and
    replayed with the new batch indices copied into its static input. Other shapes (a last partial batch)
    and CPU tensors run eagerly. The step drops its gradients (set to None): captured so, backward writes
    them into the graph's own memory on every replay instead of zeroing and adding to them.
    """

    def __init__(self, step: Callable[[torch.Tensor], None], warmup: int = 3):
        self.step, self.warmup = step, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def __call__(self, idx: torch.Tensor) -> None:
        self.calls += 1
        if not idx.is_cuda or (self.graph is not None and idx.shape != self.idx.shape):
            return self.step(idx)
        if self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step(idx)
            torch.cuda.current_stream().wait_stream(side)
            return None
        if self.graph is None:
            self.idx, self.graph = idx.clone(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step(self.idx)
        else:
            self.idx.copy_(idx)
        self.graph.replay()
        return None


@torch.inference_mode()
def evaluate(pop: Population, split: DeviceSplit, inputs: str = "unit") -> list[dict[str, float]]:
    """Each member's mean cross-entropy and accuracy over a whole split."""
    loss = torch.zeros(len(pop), device=split.x.device)
    correct = torch.zeros(len(pop), device=split.x.device, dtype=torch.long)
    chunk = max(64, EVAL_CHUNK // len(pop))
    for i in range(0, len(split), chunk):
        logits = pop(scale_inputs(split.x[i:i + chunk], inputs), shared=True)
        y = split.y[i:i + chunk].expand(len(pop), -1)
        loss += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(len(pop), -1).sum(1)
        correct += (logits.argmax(-1) == y).sum(1)
    n = len(split)
    return [{"loss": l / n, "acc": c / n} for l, c in zip(loss.tolist(), correct.tolist())]


def epoch_loop(pop: Population, opt: Optimizer, train: DeviceSplit, cfg: TrainConfig,
               graphs: bool = True) -> Callable[[int], list[dict[str, float]]]:
    """run(epoch): one pass of every member over the training split; one metrics dict per member.

    Every epoch replays one captured step: the corruption keys and running sums it reads are refilled in place.
    graphs=False runs every step eagerly (the benchmarks compare the two).
    """
    device = train.x.device
    n, R = len(train), len(pop)
    batch = cfg.batch_size or n
    seeds, corruption = [m.seed for m in pop.members], [m.corruption for m in pop.members]
    keys = noise.keys(corruption, seeds, 0, device)
    total = torch.zeros(R, device=device)
    correct = torch.zeros(R, device=device, dtype=torch.long)

    # a full batch without corruption is the same input for every member: scaled once, never copied per member
    same = scale_inputs(train.x, cfg.inputs) if batch >= n and keys is None else None

    def step(idx: torch.Tensor) -> None:
        if same is not None:
            y = train.y.expand(R, n)
            logits = pop(same, shared=True, optimizer=opt)
        else:
            if batch >= n:  # a full batch sees every image whatever the order: no gathered copy
                idx = torch.arange(n, device=device).expand(R, n)
                x, y = train.x.expand(R, *train.x.shape), train.y.expand(R, n)
            else:
                x, y = train.x[idx], train.y[idx]
            logits = pop(scale_inputs(noise.corrupt(x, keys, idx), cfg.inputs), optimizer=opt)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(R, -1).mean(1)
        opt.zero_grad()
        losses.sum().backward()
        opt.step()
        total.add_(losses.detach() * y.shape[1])
        correct.add_((logits.argmax(-1) == y).sum(1))

    graphed = GraphedStep(step) if graphs else step

    def run(epoch: int) -> list[dict[str, float]]:
        noise.refill(keys, corruption, seeds, epoch)
        total.zero_()
        correct.zero_()
        if batch >= n:
            orders = torch.empty(R, n, dtype=torch.long, device=device)  # replaced by the step's own arange
        else:
            orders = torch.stack([torch.randperm(n, device=device, generator=epoch_generator(s, epoch, device))
                                  for s in seeds])
        for i in range(0, n, batch):
            graphed(orders[:, i:i + batch])
        return [{"train_loss": t / n, "train_acc": c / n} for t, c in zip(total.tolist(), correct.tolist())]

    return run


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(noise.run_key(seed, epoch))


class Trainer:
    """Trains a population epoch by epoch; between epochs it can let members go (successive halving, divergence)."""

    def __init__(self, pop: Population, splits: dict[str, DeviceSplit], cfg: TrainConfig,
                 opt: Optimizer | None = None):
        self.pop, self.splits, self.cfg = pop, splits, cfg
        self.opt = opt or make_optimizer(pop, cfg)
        self.run = epoch_loop(pop, self.opt, splits["train"], cfg)

    def epochs(self, start: int = 0) -> Iterator[list[dict[str, float]]]:
        """Trains to cfg.epochs from epoch `start`, yielding the members' metrics after each evaluated epoch.

        Per member: running train loss/acc, val and test loss/acc; after the last epoch also final_train_loss/acc
        on the full training split with the final weights. A member whose training loss is no longer finite has
        diverged: its metrics get "error", and the caller lets it go (keep); when all have, FloatingPointError.
        """
        cfg = self.cfg
        for epoch in range(start, cfg.epochs):
            begun = time.perf_counter()
            metrics = [{"epoch": epoch + 1, **m} for m in self.run(epoch)]
            diverged = [m for m in metrics if not math.isfinite(m["train_loss"])]
            if len(diverged) == len(metrics):
                lrs = sorted({m.lr for m in self.pop.members})
                raise FloatingPointError(f"training loss is {metrics[0]['train_loss']} in epoch {epoch + 1} "
                                         f"(lr={lrs}): the run diverged")
            last = epoch + 1 == cfg.epochs
            if (epoch + 1) % cfg.eval_every and not last and not diverged:
                continue
            for name in ("val", "test", "train") if last else ("val", "test"):
                key = "final_train" if name == "train" else name
                for m, result in zip(metrics, evaluate(self.pop, self.splits[name], cfg.inputs)):
                    m[f"{key}_loss"], m[f"{key}_acc"] = result["loss"], result["acc"]
            for m in metrics:
                m["epoch_seconds"] = (time.perf_counter() - begun) / len(metrics)
                if not math.isfinite(m["train_loss"]):
                    m["error"] = f"diverged in epoch {epoch + 1}: training loss {m['train_loss']}"
            yield metrics

    def keep(self, positions: Sequence[int]) -> None:
        """Only the members at these positions train on."""
        if len(positions) == len(self.pop):
            return
        self.pop.keep(positions)
        self.opt.keep(torch.tensor(list(positions), device=self.pop.device))
        self.opt.rebind(self.pop.params)
        self.run = epoch_loop(self.pop, self.opt, self.splits["train"], self.cfg)
