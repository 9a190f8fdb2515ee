"""linear: the 7,850-parameter softmax baseline (784 -> 10), full-batch SGD on x/255 - 0.5.

Grid 1, step size x epochs: where does training stop paying? Grid 2, seeds x init scales at the
best step size: does the end result depend on the start?

    python -m tune_mnist linear --step-sizes 0.1 0.5 1 2 --epoch-counts 50 200 800
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from tune_mnist import plots
from tune_mnist.data import Mnist
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv
from tune_mnist.population import Member
from tune_mnist.settings import Common
from tune_mnist.train import TrainConfig
from tune_mnist.tuning import cluster, runner, trial

NAME = "linear"
HELP = "the 7,850-parameter softmax baseline: step size x epochs, then seeds x init scales"


@dataclass
class Settings(Common):
    step_sizes: list[float]
    epoch_counts: list[int]
    eval_every: int
    init_scales: list[float]
    seeds: int


def check(s: Settings) -> None:
    require(len(s.step_sizes) > 0 and all(lr > 0 for lr in s.step_sizes), "--step-sizes must be > 0 and not empty")
    require(len(s.epoch_counts) > 0 and all(e >= 1 for e in s.epoch_counts), "--epoch-counts must be >= 1")
    require(len(s.init_scales) > 0 and all(x >= 0 for x in s.init_scales), "--init-scales must be >= 0")
    require(s.seeds >= 1, f"--seeds must be >= 1, got {s.seeds}")


def trainable(config: dict[str, Any], data: Mnist) -> None:
    (entry,) = config["members"]
    net = {"family": "mlp", "widths": [], "init_scale": entry["init_scale"]}
    cfg = TrainConfig(epochs=config["epochs"], eval_every=config["eval_every"], optimizer="sgd", batch_size=0,
                      inputs="center")
    trial.train(data, [Member(net, seed=entry["seed"], lr=entry["lr"])], cfg)


def curves(grid: tune.ResultGrid, label: str) -> pd.DataFrame:
    """Every reported point of every trial (epoch, losses, accuracies) with its config."""
    frames = []
    for result in grid:
        if result.error is None and result.metrics_dataframe is not None:
            frame = result.metrics_dataframe[["epoch", "train_loss", "val_loss", "test_loss", "train_acc", "test_acc"]]
            (entry,) = result.config["members"]
            frames.append(frame.assign(grid=label, lr=entry["lr"], seed=entry["seed"], init_scale=entry["init_scale"]))
    return pd.concat(frames, ignore_index=True)


def at_counts(curve: pd.DataFrame, counts: list[int]) -> pd.DataFrame:
    """The step size x epochs table: each trial's point at the last report not after each count."""
    rows = []
    for lr, part in curve.groupby("lr"):
        for n in counts:
            upto = part[part["epoch"] <= n]
            if len(upto):
                rows.append({"lr": lr, "epochs": n, **upto.iloc[-1][["train_loss", "test_loss", "test_acc"]].to_dict()})
    return pd.DataFrame(rows)


def grid(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources, name: str,
         runs: list[dict[str, Any]]) -> tuple[pd.DataFrame, tune.ResultGrid]:
    """One trial a run (its lr, seed and init scale), its rows and its Tune results (for the curves)."""
    epochs = max(s.epoch_counts)
    space = {"epochs": epochs, "eval_every": min(s.eval_every, epochs), "grid": name,
             "members": tune.grid_search([[r] for r in runs])}
    results = runner.run(trainable, run_dir, name, res, data, param_space=space, shown=["lr", "seed", "init_scale"])
    return runner.member_rows(runner.rows(results, ["grid", "members"])), results


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    by_lr, first = grid(s, run_dir, data, res, "step_size",
                        [{"lr": lr, "seed": 0, "init_scale": 1.0} for lr in s.step_sizes])
    require(by_lr["final_train_loss"].notna().any(), "every step size diverged: try smaller --step-sizes")
    best_lr = float(by_lr.loc[by_lr["final_train_loss"].idxmin(), "lr"])
    by_init, second = grid(s, run_dir, data, res, "init", [{"lr": best_lr, "seed": seed, "init_scale": scale}
                                                           for seed in range(s.seeds) for scale in s.init_scales])
    trials = pd.concat([by_lr, by_init], ignore_index=True)
    curve = pd.concat([curves(first, "step_size"), curves(second, "init")], ignore_index=True)
    table = at_counts(curve[curve["grid"] == "step_size"], s.epoch_counts)
    write_csv(run_dir / "trials.csv", trials)
    write_csv(run_dir / "curves.csv", curve)
    write_csv(run_dir / "step_size_x_epochs.csv", table)
    report(run_dir)
    best = trials.loc[trials["final_train_loss"].idxmin()]
    init = trials[trials["grid"] == "init"]
    return {"trials": len(trials), "errors": int(trials["error"].ne("").sum()), "best_lr": best_lr,
            "min_train_loss": round(float(best["final_train_loss"]), 4),
            "test_loss": round(float(best["test_loss"]), 4), "train_acc": round(float(best["final_train_acc"]), 4),
            "test_acc": round(float(best["test_acc"]), 4),
            "init_spread_test_acc": round(float(init["test_acc"].max() - init["test_acc"].min()), 4)}


def report(run_dir: Path, out: Path | None = None) -> None:
    out, curve = Path(out or run_dir), read_table(run_dir / "curves.csv")
    plots.lines(out / "loss_curves.png", curve[curve["grid"] == "step_size"], "epoch",
                ["train_loss", "test_loss"], "lr", logx=True, title="Linear model: loss per full-batch step size")
    plots.lines(out / "init_curves.png", curve[curve["grid"] == "init"].groupby(
        ["init_scale", "epoch"], as_index=False)[["train_loss", "test_loss"]].mean(), "epoch",
        ["train_loss", "test_loss"], "init_scale", logx=True, title="Linear model: mean loss per init scale")
