"""corruption: test accuracy of MLPs and CNNs trained on pixel-corrupted MNIST, by activation and p.

    python -m tune_mnist corruption --activations relu tanh --p 0 0.25 0.5 0.75 1 --repeats 5
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch
from ray import tune

from tune_mnist import models, plots
from tune_mnist.data import DeviceSplit, Mnist, to_device
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv
from tune_mnist.population import Member, Population
from tune_mnist.settings import Common
from tune_mnist.train import TrainConfig, compile_ahead, epoch_loop, make_optimizer, same_kernels
from tune_mnist.tuning import cluster, runner, trial

NAME = "corruption"
HELP = "activations x MLP/CNN x pixel-corruption p x repeats: mean, std, stderr per cell"
FAMILIES = ("mlp", "cnn")


@dataclass
class Settings(Common):
    activations: list[str]
    families: list[str]
    mlp_widths: list[int]
    cnn_channels: list[int]
    cnn_hidden: int
    p: list[float]
    repeats: int
    population: int
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float


def spec(config: dict[str, Any], family: str, act: str) -> dict[str, Any]:
    if family == "mlp":
        return {"family": "mlp", "widths": config["mlp_widths"], "activation": act}
    return {"family": "cnn", "channels": config["cnn_channels"], "hidden": config["cnn_hidden"], "activation": act}


def check(s: Settings) -> None:
    for key in ("activations", "families", "p"):
        require(len(getattr(s, key)) > 0, f"--{key} must not be empty")
    for a in s.activations:
        require(a in models.ACTIVATIONS, f"unknown activation {a!r}; choose from {', '.join(models.ACTIVATIONS)}")
    for f in s.families:
        require(f in FAMILIES, f"unknown model family {f!r}; choose from {', '.join(FAMILIES)}")
    for p in s.p:
        require(0 <= p <= 1, f"corruption p={p} is outside [0, 1]")
    require(s.repeats >= 1, f"--repeats must be >= 1, got {s.repeats}")
    require(s.epochs >= 1, f"--epochs must be >= 1, got {s.epochs}")
    require(s.batch_size >= 1, f"--batch-size must be >= 1, got {s.batch_size}")
    require(s.population >= 1, f"--population must be >= 1, got {s.population}")


def members(config: dict[str, Any]) -> list[Member]:
    net = spec(config, config["family"], config["activation"])
    return [Member(net, seed=m["seed"], lr=config["lr"], weight_decay=config["weight_decay"], corruption=m["p"])
            for m in config["members"]]


def trainable(config: dict[str, Any], data: Mnist) -> None:
    trial.train(data, members(config), TrainConfig.from_config(config))


def training(s: Settings) -> TrainConfig:
    return TrainConfig(epochs=s.epochs, batch_size=s.batch_size, optimizer=s.optimizer)


def probe_members(s: Settings, family: str, act: str, size: int) -> list[Member]:
    """What the trials train: `size` members of a family and activation, with the trials' lr and weight decay."""
    net = spec(vars(s), family, act)
    return [Member(net, seed=r, lr=s.lr, weight_decay=s.weight_decay, corruption=0.5) for r in range(size)]


def seconds_per_run_step(members: list[Member], split: DeviceSplit, cfg: TrainConfig) -> float:
    """Seconds of one run's training step when these members train together, from an epoch after a warm-up."""
    pop = Population(members, split.x.device)
    run = epoch_loop(pop, make_optimizer(pop, cfg), split, cfg)
    run(0)
    start = time.perf_counter()
    run(1)  # returns the epoch's losses, so it has waited for the device
    return (time.perf_counter() - start) / -(-len(split) // cfg.batch_size) / len(members)


def kernels(s: Settings, train: DeviceSplit, wait: bool = True) -> None:
    """Compiles every family and activation's kernels on the trials' training split, whose size some specialise on."""
    compile_ahead([probe_members(s, f, a, 1)[0] for f in s.families for a in s.activations], train, training(s), wait)


def prepare(s: Settings, data: Mnist) -> None:
    """Before Ray starts: where the trials will train populations on this machine's GPU, their kernels start
    compiling, so that they compile while Ray starts; estimate waits for them."""
    if torch.cuda.is_available() and s.population > 1:
        kernels(s, to_device(data, "cuda")["train"], wait=False)


def estimate(s: Settings, data: Mnist, res: cluster.Resources) -> float:
    """Seconds the campaign should take: runs x measured seconds per run / concurrent trials.

    Times 20 training steps of each family (its first activation) as the trials train it, populations of the
    trials' size. Trials on a cluster's GPUs will be faster than this machine's device, so on a cluster this is
    an upper bound. On a GPU it first compiles every family and activation's kernels at once (or waits for
    those prepare started), so that no trial waits to compile its own.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, cfg = to_device(data, device)["train"], training(s)
    size = min(s.population, len(s.p) * s.repeats)
    if device.type == "cuda" and size > 1:
        print(f"[corruption] compiling the kernels of {', '.join(s.families)} x {', '.join(s.activations)} "
              "(Triton keeps them on this machine for later runs)", flush=True)
        start = time.perf_counter()
        kernels(s, train)
        print(f"[corruption] kernels ready ({time.perf_counter() - start:.1f} s waited once Ray was up)", flush=True)
    # 20 batches that launch the kernels the trials' epochs do, so that timing them compiles nothing more
    split = same_kernels(train, s.batch_size, batches=20)
    steps_per_run = s.epochs * -(-len(data.train_x) // s.batch_size)
    per_run = {f: seconds_per_run_step(probe_members(s, f, s.activations[0], size), split, cfg) * steps_per_run
               for f in s.families}
    if device.type == "cuda":
        del train, split
        torch.cuda.empty_cache()  # the trials' memory, not the driver's
    runs_per_family = len(s.activations) * len(s.p) * s.repeats
    concurrent = min(cluster.trial_slots(res), res.max_concurrent or 10**9)
    if res.gpus_per_trial:  # trials that share a GPU take turns on it, and a population keeps it busy
        concurrent = min(concurrent, ray.cluster_resources().get("GPU", 1))
    concurrent = max(1, int(concurrent))
    total = sum(per_run.values()) * runs_per_family / concurrent
    parts = ", ".join(f"{f} {t:.1f}s/run" if t >= 1 else f"{f} {t:.2f}s/run" for f, t in per_run.items())
    grouped = f", populations of {size}" if size > 1 else ""
    print(f"[corruption] estimate: {runs_per_family * len(per_run)} runs ({parts}{grouped}), {concurrent} at once "
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
        plots.panels(Path(out or run_dir) / f"accuracy_vs_p_{family}.png", part, "activation", "p", "mean",
                     yerr="stderr", ylabel="test accuracy",
                     title=f"{family}: mean test accuracy vs corruption p (± stderr)")


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    estimate(s, data, res)
    space = {**training(s).as_dict(), "lr": s.lr, "weight_decay": s.weight_decay, "mlp_widths": s.mlp_widths,
             "cnn_channels": s.cnn_channels, "cnn_hidden": s.cnn_hidden}
    space.update(family=tune.grid_search(s.families), activation=tune.grid_search(s.activations))
    per_run = runner.populations(
        trainable, run_dir, "grid", res, data, space,
        groups=runner.chunks([{"p": p, "seed": seed} for p in s.p for seed in range(s.repeats)], s.population),
        keep=["family", "activation"], shown=["family", "activation", "p"], tensorboard=run_dir / "tensorboard",
        metric="test_acc", mode="max")
    summary = summarise(per_run)
    write_csv(run_dir / "results_per_run.csv", per_run)
    write_csv(run_dir / "results_summary.csv", summary)
    report(run_dir)
    clean = summary[summary["p"] == summary["p"].min()]["mean"].mean() if len(summary) else float("nan")
    return {"runs": len(per_run), "errors": int(per_run["error"].ne("").sum()),
            "mean_test_acc_at_min_p": round(float(clean), 4)}
