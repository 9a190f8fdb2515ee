"""scaling: test loss over a grid of CNN width x training-set fraction, seeds per cell.

    python -m tune_mnist scaling --widths 6 11 23 47 --fractions 1 0.25 0.0625 --seeds 3
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from tune_mnist import models, plots
from tune_mnist.data import Mnist, subset
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv
from tune_mnist.population import Member
from tune_mnist.settings import Common
from tune_mnist.train import TrainConfig
from tune_mnist.tuning import cluster, runner, trial

NAME = "scaling"
HELP = "CNN width x dataset fraction grid: heatmaps of train/test loss and accuracy"
METRICS = ["final_train_loss", "test_loss", "final_train_acc", "test_acc"]


@dataclass
class Settings(Common):
    widths: list[int]
    fractions: list[float]
    seeds: int
    master_seed: int
    population: int
    epochs: int
    min_steps: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    activation: str


def check(s: Settings) -> None:
    require(len(s.widths) > 0 and len(s.fractions) > 0, "the widths and fractions grids must not be empty")
    require(all(w >= 1 for w in s.widths), f"widths must be >= 1, got {s.widths}")
    for f in s.fractions:
        require(0 < f <= 1, f"fraction {f} is outside (0, 1]")
    require(s.seeds >= 1, f"--seeds must be >= 1, got {s.seeds}")
    require(s.epochs >= 1, f"--epochs must be >= 1, got {s.epochs}")
    require(s.population >= 1, f"--population must be >= 1, got {s.population}")
    require(s.activation in models.ACTIVATIONS, f"unknown activation {s.activation!r}")


def macs(width: int) -> int:
    """Multiply-adds of one forward pass of the width-w CNN on a 28x28 image."""
    return 28 * 28 * 9 * width + 14 * 14 * 9 * width * 2 * width + 7 * 7 * 2 * width * 10


def trainable(config: dict[str, Any], data: Mnist) -> None:
    """A cell's seeds on the cell's training subset, drawn with the master seed: the same for every seed of the
    cell and nested across fractions, so seeds vary initialisation and data order only."""
    n = max(1, round(config["fraction"] * len(data.train_x)))
    epochs = max(config["epochs"], math.ceil(config["min_steps"] / math.ceil(n / config["batch_size"])))
    net = {"family": "cnn", "channels": [config["width"], 2 * config["width"]], "hidden": 0,
           "activation": config["activation"]}
    members = [Member(net, seed=m["seed"], lr=config["lr"], weight_decay=config["weight_decay"])
               for m in config["members"]]
    cfg = TrainConfig.from_config({**config, "epochs": epochs, "eval_every": epochs})
    extra = {"n_train": n, "epochs_run": epochs, "compute": macs(config["width"]) * n * epochs}
    trial.train(subset(data, n_train=n, seed=config["master_seed"]), members, cfg, extra)


def seeds_for(s: Settings) -> list[int]:
    rng = random.Random(s.master_seed)
    return [rng.randrange(2**31) for _ in range(s.seeds)]


def report(run_dir: Path, out: Path | None = None) -> None:
    out = Path(out or run_dir)
    ok = (frame := read_table(run_dir / "results.csv"))[frame["error"].eq("")]
    plots.heatmaps(out / "heatmaps.png", ok, "width", "fraction", METRICS,
                   title="Model width x training fraction (mean over seeds)")
    cells = ok.groupby(["width", "fraction"], as_index=False)[["test_loss", "compute"]].mean()
    cells["log2_compute"] = np.log2(cells["compute"])
    plots.lines(out / "test_loss_vs_compute.png", cells, "log2_compute", ["test_loss"], "width",
                title="Test loss against training compute (multiply-adds)")
    plots.lines(out / "test_loss_vs_fraction.png", cells, "fraction", ["test_loss"], "width", logx=True,
                title="Test loss against training fraction, one curve per width")
    plots.lines(out / "test_loss_vs_width.png", cells, "width", ["test_loss"], "fraction", logx=True,
                title="Test loss against width, one curve per training fraction")


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    space = {"batch_size": s.batch_size, "optimizer": s.optimizer, "lr": s.lr, "weight_decay": s.weight_decay,
             "activation": s.activation, "epochs": s.epochs, "min_steps": s.min_steps, "master_seed": s.master_seed,
             "width": tune.grid_search(s.widths), "fraction": tune.grid_search(s.fractions)}
    frame = runner.populations(trainable, run_dir, "grid", res, data, space,
                               groups=runner.chunks([{"seed": seed} for seed in seeds_for(s)], s.population),
                               keep=["width", "fraction"], shown=["width", "fraction"],
                               tensorboard=run_dir / "tensorboard", metric="test_loss")
    write_csv(run_dir / "results.csv", frame)
    report(run_dir)
    largest = frame[frame["fraction"] == frame["fraction"].max()].groupby("width")["test_loss"].mean()
    return {"runs": len(frame), "errors": int(frame["error"].ne("").sum()),
            "best_width_at_full_data": int(largest.idxmin()), "test_loss": round(float(largest.min()), 4)}
