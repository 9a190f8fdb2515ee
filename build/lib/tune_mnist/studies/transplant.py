"""transplant: which trained layers carry the learning? Train an FC net, then for each layer i
(a) put layer i of the trained net back to its initial weights ("reset"), and (b) give the initial
net the trained layer i ("graft"); test loss and accuracy of each, over several seeds.

    python -m tune_mnist transplant --layers 1024 512 256 --seeds 5 --epochs 10
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from tune_mnist import models, plots
from tune_mnist.data import INPUTS, DeviceSplit, Mnist
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv
from tune_mnist.population import Member, Population
from tune_mnist.settings import Common
from tune_mnist.train import TrainConfig, evaluate
from tune_mnist.tuning import cluster, runner, trial

NAME = "transplant"
HELP = "train an FC net, swap single layers between its initial and trained copies, both ways"
DIRECTIONS = {"reset": "trained net, layer i back at init", "graft": "initial net, layer i trained"}


@dataclass
class Settings(Common):
    layers: list[int]
    activation: str
    seeds: int
    population: int
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    inputs: str


def check(s: Settings) -> None:
    require(len(s.layers) > 0 and all(w >= 1 for w in s.layers), f"--layers must be widths >= 1, got {s.layers}")
    require(s.seeds >= 1, f"--seeds must be >= 1, got {s.seeds}")
    require(s.epochs >= 1, f"--epochs must be >= 1, got {s.epochs}")
    require(s.lr > 0, f"--lr must be > 0, got {s.lr}")
    require(s.population >= 1, f"--population must be >= 1, got {s.population}")
    require(s.activation in models.ACTIVATIONS, f"unknown activation {s.activation!r}")
    require(s.inputs in INPUTS, f"unknown input scaling {s.inputs!r}; choose from {', '.join(INPUTS)}")


def swaps(pop: Population, initial: dict[str, torch.Tensor], splits: dict[str, DeviceSplit],
          inputs: str) -> list[dict[str, float]]:
    """Each member's test loss/acc with one dense layer swapped at a time, both ways; the weights end as they began."""
    trained = {k: v.detach().clone() for k, v in pop.params.items()}
    layers = [name for name, layer in pop.layers if isinstance(layer, nn.Linear)]
    out: list[dict[str, float]] = [{} for _ in range(len(pop))]
    mixes = [(f"{d}_{i}", {k: (donor if k.startswith(layer + ".") else base)[k] for k in trained})
             for i, layer in enumerate(layers, start=1)
             for d, base, donor in (("reset", trained, initial), ("graft", initial, trained))]
    for key, weights in [*mixes, ("init_test", initial)]:
        pop.load(weights)
        for m, result in zip(out, evaluate(pop, splits["test"], inputs)):
            m[f"{key}_loss"], m[f"{key}_acc"] = result["loss"], result["acc"]
    pop.load(trained)
    return out


def trainable(config: dict[str, Any], data: Mnist) -> None:
    net = {"family": "mlp", "widths": config["layers"], "activation": config["activation"]}
    members = [Member(net, seed=m["seed"], lr=config["lr"]) for m in config["members"]]
    trial.train(data, members, TrainConfig.from_config(config),
                finish=lambda pop, initial, splits: swaps(pop, initial, splits, config["inputs"]))


def long_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per (seed, layer, direction) from the wide per-seed metrics."""
    rows = []
    for r in per_seed[per_seed["error"].eq("")].to_dict("records"):
        i = 1
        while f"reset_{i}_acc" in r and pd.notna(r[f"reset_{i}_acc"]):
            for direction in DIRECTIONS:
                rows.append({"seed": r["seed"], "layer": i, "direction": direction,
                             "test_loss": r[f"{direction}_{i}_loss"], "test_acc": r[f"{direction}_{i}_acc"],
                             "trained_test_acc": r["test_acc"], "init_test_acc": r["init_test_acc"]})
            i += 1
    return pd.DataFrame(rows)


def summarise(long: pd.DataFrame) -> pd.DataFrame:
    return (long.groupby(["layer", "direction"])[["test_acc", "test_loss"]]
            .agg(["mean", "std"]).fillna(0.0).pipe(lambda t: t.set_axis([f"{a}_{b}" for a, b in t.columns], axis=1))
            .reset_index())


def report(run_dir: Path, out: Path | None = None) -> None:
    plots.grouped_bars(Path(out or run_dir) / "transplant.png", read_table(run_dir / "results_summary.csv"), "layer",
                       "direction", "test_acc_mean", "test_acc_std",
                       title="Test accuracy with one layer swapped (reset: trained net, layer at init; "
                             "graft: initial net, layer trained)")


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    space = {"layers": s.layers, "activation": s.activation, "epochs": s.epochs, "batch_size": s.batch_size,
             "optimizer": s.optimizer, "lr": s.lr, "inputs": s.inputs}
    per_seed = runner.populations(trainable, run_dir, "seeds", res, data, space,
                                  groups=runner.chunks([{"seed": seed} for seed in range(s.seeds)], s.population), keep=[],
                                  shown=["seed"], tensorboard=run_dir / "tensorboard", metric="test_acc", mode="max")
    long = long_table(per_seed)
    summary = summarise(long)
    write_csv(run_dir / "results_per_seed.csv", per_seed)
    write_csv(run_dir / "results.csv", long)
    write_csv(run_dir / "results_summary.csv", summary)
    report(run_dir)
    return {"seeds": len(per_seed), "errors": int(per_seed["error"].ne("").sum()),
            "trained_test_acc": round(float(per_seed["test_acc"].mean()), 4)}
