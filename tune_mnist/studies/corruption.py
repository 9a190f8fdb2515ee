"""corruption: test accuracy of MLPs and CNNs trained on pixel-corrupted MNIST, by activation and p.

    python -m tune_mnist corruption --activations relu tanh --p 0 0.25 0.5 0.75 1 --repeats 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from ray import tune

from tune_mnist import driver, models, plots
from tune_mnist.data import Mnist, subset, to_device
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv
from tune_mnist.train import TrainConfig, make_optimizer, train_epoch

NAME = "corruption"
HELP = "activations x MLP/CNN x pixel-corruption p x repeats: mean, std, stderr per cell"
FAMILIES = ("mlp", "cnn")


def spec(s: dict[str, Any], family: str, act: str = "relu") -> dict[str, Any]:
    if family == "mlp":
        return {"family": "mlp", "widths": s["mlp_widths"], "activation": act}
    return {"family": "cnn", "channels": s["cnn_channels"], "hidden": s["cnn_hidden"], "activation": act}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activations", nargs="+", help="default: relu tanh sigmoid leaky_relu gelu")
    p.add_argument("--families", nargs="+", help="mlp and/or cnn (default both)")
    p.add_argument("--p", type=float, nargs="+", help="corruption probabilities in [0, 1] (default 0 .2 .4 .6 .8 1)")
    p.add_argument("--repeats", type=int, help="runs per cell (default 3)")
    p.add_argument("--epochs", type=int, help="epochs per run (default 3)")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default 0)")
    p.add_argument("--batch-size", type=int, help="minibatch size (default 128)")
    p.add_argument("--mlp-widths", type=int, nargs="+", help="MLP hidden widths (default 256 128)")
    p.add_argument("--cnn-channels", type=int, nargs="+", help="CNN conv channels (default 32 64)")
    driver.add_population_argument(p, "(p, seed) runs of a family and activation")


def check(s: dict[str, Any]) -> None:
    for key in ("activations", "families", "p"):
        require(len(s[key]) > 0, f"--{key} must not be empty")
    for a in s["activations"]:
        require(a in models.ACTIVATIONS, f"unknown activation {a!r}; choose from {', '.join(models.ACTIVATIONS)}")
    for f in s["families"]:
        require(f in FAMILIES, f"unknown model family {f!r}; choose from {', '.join(FAMILIES)}")
    for p in s["p"]:
        require(0 <= p <= 1, f"corruption p={p} is outside [0, 1]")
    require(s["repeats"] >= 1, f"--repeats must be >= 1, got {s['repeats']}")
    require(s["epochs"] >= 1, f"--epochs must be >= 1, got {s['epochs']}")
    require(s["batch_size"] >= 1, f"--batch-size must be >= 1, got {s['batch_size']}")
    driver.check_population(s)


def trainable(config: dict[str, Any], data: Mnist) -> None:
    driver.train_in_trial({**config, "corruption": config["p"]}, data,
                          spec(config, config["family"], config["activation"]))


def population_trainable(config: dict[str, Any], data: Mnist) -> None:
    driver.train_population_in_trial(config, data, spec(config, config["family"], config["activation"]))


def estimate(s: dict[str, Any], data: Mnist, res: driver.Resources) -> float:
    """Seconds the campaign should take: runs x measured seconds per run / concurrent trials.

    Times 20 training steps of each family on this machine's device; trials on a cluster's GPUs
    will be faster, so on a cluster this is an upper bound.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = subset(data, n_train=20 * s["batch_size"], n_eval=10)
    splits = to_device(probe, device)
    steps_per_run = s["epochs"] * -(-len(data.train_x) // s["batch_size"])
    per_family = {}
    for family in s["families"]:
        model = models.build(spec(s, family)).to(device)
        cfg = TrainConfig(batch_size=s["batch_size"], corruption=0.5)
        opt = make_optimizer(model, cfg)
        train_epoch(model, opt, splits["train"], cfg, 0)  # warm-up
        start = time.perf_counter()
        train_epoch(model, opt, splits["train"], cfg, 1)
        per_family[family] = (time.perf_counter() - start) / 20 * steps_per_run
    runs_per_family = len(s["activations"]) * len(s["p"]) * s["repeats"]
    concurrent = max(1, int(min(driver.trial_slots(res), res.max_concurrent or 10**9)))
    total = sum(per_family.values()) * runs_per_family / concurrent
    parts = ", ".join(f"{f} {t:.1f}s/run" for f, t in per_family.items())
    print(f"[corruption] estimate: {runs_per_family * len(per_family)} runs ({parts}), {concurrent} at once "
          f"-> about {total / 60:.1f} min", flush=True)
    return total


def summarise(per_run: pd.DataFrame) -> pd.DataFrame:
    """Mean, population std and standard error (sample std / sqrt(n)) of test accuracy per cell."""
    ok = per_run[per_run["error"].eq("")]
    if ok.empty:
        return pd.DataFrame(columns=["family", "activation", "p", "mean", "std", "repeats", "stderr"])
    grouped = ok.groupby(["family", "activation", "p"])["test_acc"]
    summary = grouped.agg(mean="mean", std=lambda a: float(np.std(a, ddof=0)), repeats="count").reset_index()
    sample_std = grouped.std(ddof=1).fillna(0.0).to_numpy()
    summary["stderr"] = sample_std / np.sqrt(summary["repeats"].to_numpy())
    return summary


def report(run_dir: Path, out: Path | None = None) -> None:
    summary = read_table(run_dir / "results_summary.csv")
    for family, part in summary.groupby("family"):
        plots.panels(Path(out or run_dir) / f"accuracy_vs_p_{family}.png", part, "activation", "p", "mean", yerr="stderr",
                     ylabel="test accuracy", title=f"{family}: mean test accuracy vs corruption p (± stderr)")


def run(s: dict[str, Any], run_dir: Path, data: Mnist, res: driver.Resources) -> dict[str, Any]:
    estimate(s, data, res)
    space = {k: s[k] for k in ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "mlp_widths",
                                "cnn_channels", "cnn_hidden")}
    space.update(family=tune.grid_search(s["families"]), activation=tune.grid_search(s["activations"]))
    per_run = driver.run_grouped(
        trainable, population_trainable, run_dir, "grid", res, data, space,
        runs=[{"p": p, "seed": seed} for p in s["p"] for seed in range(s["repeats"])], requested=s["population"],
        keep=["family", "activation"], shown=["family", "activation", "p"], tensorboard=run_dir / "tensorboard",
        metric="test_acc", mode="max")
    summary = summarise(per_run)
    write_csv(run_dir / "results_per_run.csv", per_run)
    write_csv(run_dir / "results_summary.csv", summary)
    report(run_dir)
    clean = summary[summary["p"] == summary["p"].min()]["mean"].mean() if len(summary) else float("nan")
    return {"runs": len(per_run), "errors": int(per_run["error"].ne("").sum()),
            "mean_test_acc_at_min_p": round(float(clean), 4)}
