"""scaling: test loss over a grid of CNN width x training-set fraction, seeds per cell.

    python -m tune_mnist scaling --widths 6 11 23 47 --fractions 1 0.25 0.0625 --seeds 3
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from tune_mnist import driver, plots
from tune_mnist.data import Mnist, subset
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv

NAME = "scaling"
HELP = "CNN width x dataset fraction grid: heatmaps of train/test loss and accuracy"
METRICS = ["final_train_loss", "test_loss", "final_train_acc", "test_acc"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--widths", type=int, nargs="+", help="CNN widths (default 6 8 11 16 23 33 47 67)")
    p.add_argument("--fractions", type=float, nargs="+", help="training-set fractions in (0, 1] (default 2^-j, j<10)")
    p.add_argument("--seeds", type=int, help="seeds per cell (default 1)")
    p.add_argument("--master-seed", type=int, help="seed the per-cell seeds are drawn from (default 0)")
    p.add_argument("--epochs", type=int, help="epochs per run (default 5)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-3)")
    driver.add_population_argument(p, "seeds of a cell")


def check(s: dict[str, Any]) -> None:
    require(len(s["widths"]) > 0 and len(s["fractions"]) > 0, "the widths and fractions grids must not be empty")
    require(all(w >= 1 for w in s["widths"]), f"widths must be >= 1, got {s['widths']}")
    for f in s["fractions"]:
        require(0 < f <= 1, f"fraction {f} is outside (0, 1]")
    require(s["seeds"] >= 1, f"--seeds must be >= 1, got {s['seeds']}")
    require(s["epochs"] >= 1, f"--epochs must be >= 1, got {s['epochs']}")
    driver.check_population(s)


def macs(width: int) -> int:
    """Multiply-adds of one forward pass of the width-w CNN on a 28x28 image."""
    return 28 * 28 * 9 * width + 14 * 14 * 9 * width * 2 * width + 7 * 7 * 2 * width * 10


def cell(config: dict[str, Any], data: Mnist) -> tuple[Mnist, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A cell's training subset, its config (epochs raised to min_steps), CNN spec and extra metrics.

    The subset is drawn with the master seed, the same for every seed of the cell and nested across
    fractions: seeds vary initialisation and data order, so a cell's seeds can train as one population.
    """
    n = max(1, round(config["fraction"] * len(data.train_x)))
    part = subset(data, n_train=n, seed=config["master_seed"])
    epochs = max(config["epochs"], math.ceil(config["min_steps"] / math.ceil(n / config["batch_size"])))
    spec = {"family": "cnn", "channels": [config["width"], 2 * config["width"]], "hidden": 0,
            "activation": config["activation"]}
    extra = {"n_train": n, "epochs_run": epochs, "compute": macs(config["width"]) * n * epochs}
    return part, {**config, "epochs": epochs, "eval_every": epochs}, spec, extra


def trainable(config: dict[str, Any], data: Mnist) -> None:
    part, config, spec, extra = cell(config, data)
    driver.train_in_trial(config, part, spec, extra)


def population_trainable(config: dict[str, Any], data: Mnist) -> None:
    part, config, spec, extra = cell(config, data)
    driver.train_population_in_trial(config, part, spec, extra)


def seeds_for(s: dict[str, Any]) -> list[int]:
    rng = random.Random(s["master_seed"])
    return [rng.randrange(2**31) for _ in range(s["seeds"])]


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


def run(s: dict[str, Any], run_dir: Path, data: Mnist, res: driver.Resources) -> dict[str, Any]:
    space = {k: s[k] for k in ("batch_size", "optimizer", "lr", "weight_decay", "activation", "epochs", "min_steps",
                                "master_seed")}
    space.update(width=tune.grid_search(s["widths"]), fraction=tune.grid_search(s["fractions"]))
    frame = driver.run_grouped(trainable, population_trainable, run_dir, "grid", res, data, space,
                               runs=[{"seed": seed} for seed in seeds_for(s)], requested=s["population"],
                               keep=["width", "fraction"], shown=["width", "fraction"],
                               tensorboard=run_dir / "tensorboard", metric="test_loss")
    write_csv(run_dir / "results.csv", frame)
    report(run_dir)
    largest = frame[frame["fraction"] == frame["fraction"].max()].groupby("width")["test_loss"].mean()
    return {"runs": len(frame), "errors": int(frame["error"].ne("").sum()),
            "best_width_at_full_data": int(largest.idxmin()), "test_loss": round(float(largest.min()), 4)}
