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
import ray
import torch
from ray import tune

from tune_mnist import driver, models, plots, population
from tune_mnist.data import DeviceSplit, Mnist, to_device
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv
from tune_mnist.train import TrainConfig, epoch_loop, make_optimizer

NAME = "corruption"
HELP = "activations x MLP/CNN x pixel-corruption p x repeats: mean, std, stderr per cell"
FAMILIES = ("mlp", "cnn")
TRAINING = ("epochs", "batch_size", "optimizer", "lr", "weight_decay")  # the settings every trial trains with


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


def seconds_per_run_step(spec: dict[str, Any], size: int, split: DeviceSplit, cfg: TrainConfig) -> float:
    """Seconds of one run's training step when `size` runs train together as a population (one net alone
    when size is 1), from an epoch of the split after a warm-up epoch."""
    if size > 1:
        pop = population.Population(spec, range(size), split.x.device)
        run = population.epoch_loop(pop, population.make_optimizer(pop, cfg), split, cfg, [cfg.corruption] * size)
    else:
        model = models.build(spec, split.x.device)
        run = epoch_loop(model, make_optimizer(model, cfg), split, cfg)
    run(0)
    start = time.perf_counter()
    run(1)  # returns the epoch's losses, so it has waited for the device
    return (time.perf_counter() - start) / -(-len(split) // cfg.batch_size) / size


def probe_config(s: dict[str, Any]) -> TrainConfig:
    """The trials' training settings, which the estimate compiles and times their steps with: the optimizer
    decides which kernels run (a population's dense layers take Adam and AdamW inside a kernel, SGD in torch)."""
    return TrainConfig.from_config({**{k: s[k] for k in TRAINING}, "corruption": 0.5})


def kernels(s: dict[str, Any], train: DeviceSplit, wait: bool = True) -> None:
    """Compiles every family and activation's kernels (population.compile_kernels) on the trials' training split,
    whose size some kernels specialise on."""
    population.compile_kernels([spec(s, f, a) for f in s["families"] for a in s["activations"]], train,
                               probe_config(s), wait)


def prepare(s: dict[str, Any], data: Mnist) -> None:
    """Before Ray starts: where the trials will train populations on this machine's GPU, their kernels start
    compiling, so that they compile while Ray starts (5-6 s on an H100's host); estimate waits for them."""
    if torch.cuda.is_available() and s["population"] != 1 and s.get("gpus_per_trial") != 0:
        kernels(s, to_device(data, "cuda")["train"], wait=False)


def estimate(s: dict[str, Any], data: Mnist, res: driver.Resources) -> float:
    """Seconds the campaign should take: runs x measured seconds per run / concurrent trials.

    Times 20 training steps of each family (its first activation) as the trials train it: populations of the
    trials' size, or one net. Trials on a cluster's GPUs will be faster than this machine's device, so on a
    cluster this is an upper bound. On a GPU it first compiles every family and activation's kernels at once
    (or waits for those prepare started), so that no trial waits to compile its own.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, cfg = to_device(data, device)["train"], probe_config(s)
    size = driver.population_size(s["population"], res, len(s["p"]) * s["repeats"])
    if device.type == "cuda" and size > 1:
        print(f"[corruption] compiling the kernels of {', '.join(s['families'])} x {', '.join(s['activations'])} "
              "(Triton keeps them on this machine for later runs)", flush=True)
        start = time.perf_counter()
        kernels(s, train)
        print(f"[corruption] kernels ready ({time.perf_counter() - start:.1f} s waited once Ray was up)", flush=True)
    # 20 batches that launch the kernels the trials' epochs do, so that timing them compiles nothing more
    split = population.same_kernels(train, s["batch_size"], batches=20)
    steps_per_run = s["epochs"] * -(-len(data.train_x) // s["batch_size"])
    per_run = {f: seconds_per_run_step(spec(s, f, s["activations"][0]), size, split, cfg) * steps_per_run
               for f in s["families"]}
    if device.type == "cuda":
        del train, split
        torch.cuda.empty_cache()  # the trials' memory, not the driver's
    runs_per_family = len(s["activations"]) * len(s["p"]) * s["repeats"]
    concurrent = min(driver.trial_slots(res), res.max_concurrent or 10**9)
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
        plots.panels(Path(out or run_dir) / f"accuracy_vs_p_{family}.png", part, "activation", "p", "mean", yerr="stderr",
                     ylabel="test accuracy", title=f"{family}: mean test accuracy vs corruption p (± stderr)")


def run(s: dict[str, Any], run_dir: Path, data: Mnist, res: driver.Resources) -> dict[str, Any]:
    estimate(s, data, res)
    space = {k: s[k] for k in (*TRAINING, "mlp_widths", "cnn_channels", "cnn_hidden")}
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
