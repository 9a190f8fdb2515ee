"""scaling: how does a CNN's test loss scale with its width and with the amount of training data?

A grid of CNN width x training-set fraction, `seeds` nets a cell; a cell's seeds train together as one population
(one Ray trial). Every cell trains the same number of epochs over its own images (equal epochs), so steps and
compute grow with the data; the check trains `check_widths` again at equal steps. The answers (scaling_report.py):
power laws in width and in data, the joint law L = E + A·w^−α + B·f^−β with its goodness of fit, and whether twice
the data or the next width (about twice the compute either way) lowers the test loss more, measured cell by cell.

    python -m tune_mnist scaling --widths 6 8 11 16 --fractions 1 0.25 0.0625 --seeds 3
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from ray import tune

from tune_mnist.data import DeviceSplit, Mnist, subset, to_device
from tune_mnist.errors import require
from tune_mnist.files import write_csv
from tune_mnist.population import Member
from tune_mnist.runs import Table
from tune_mnist.settings import (Activation, Common, Fraction, NonEmpty, NonNegative, Optimizer, Positive,
                                 PositiveInt, Seed)
from tune_mnist.studies import Study, scaling_report
from tune_mnist.studies.scaling_report import report
from tune_mnist.train import TrainConfig
from tune_mnist.tuning import cluster, runner, trial
from tune_mnist.warmup import compile_ahead

NAME = "scaling"
HELP = "CNN width x dataset fraction grid: power laws of test loss in width and data; data or width at equal compute"


@dataclass
class Settings(Common):
    widths: NonEmpty[PositiveInt]
    fractions: NonEmpty[Fraction]
    seeds: PositiveInt
    master_seed: Seed
    epochs: PositiveInt
    check_widths: list[PositiveInt]
    batch_size: PositiveInt
    optimizer: Optimizer
    lr: Positive
    weight_decay: NonNegative
    activation: Activation


def check(s: Settings) -> None:
    require(len(set(s.widths)) == len(s.widths) and len(set(s.fractions)) == len(s.fractions),
            "--widths and --fractions must not repeat a value")
    require(set(s.check_widths) <= set(s.widths), f"--check-widths {s.check_widths} must be among --widths")


def macs(width: int) -> int:
    """Multiply-adds of one forward pass of the width-w CNN on a 28x28 image."""
    return 28 * 28 * 9 * width + 14 * 14 * 9 * width * 2 * width + 7 * 7 * 2 * width * 10


def n_train(fraction: float, images: int) -> int:
    return max(1, round(fraction * images))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def net(width: int, activation: str) -> dict[str, Any]:
    return {"family": "cnn", "channels": [width, 2 * width], "hidden": 0, "activation": activation}


def trainable(config: dict[str, Any], data: Mnist) -> None:
    """A cell's seeds on the cell's training subset, drawn with the master seed: the same for every seed of the
    cell and nested across fractions, so seeds vary initialisation and data order only. Budget "epochs": the cell
    trains the settings' epochs; "steps": as many epochs as reach config["steps"] steps."""
    train = TrainConfig(**config["train"])
    n = n_train(config["fraction"], len(data.train_x))
    per_epoch = steps_per_epoch(n, train.batch_size)
    epochs = train.epochs if config["budget"] == "epochs" else math.ceil(config["steps"] / per_epoch)
    members = [Member(net(config["width"], config["activation"]), seed=m["seed"], lr=config["lr"],
                      weight_decay=config["weight_decay"]) for m in config["members"]]
    cfg = dataclasses.replace(train, epochs=epochs, eval_every=epochs)
    extra = {"n_train": n, "epochs_run": epochs, "steps": epochs * per_epoch,
             "compute": macs(config["width"]) * n * epochs}
    trial.train(subset(data, n_train=n, seed=config["master_seed"]), members, cfg, extra)


def seeds_for(s: Settings) -> list[int]:
    rng = random.Random(s.master_seed)
    return [rng.randrange(2**31) for _ in range(s.seeds)]


def kernels(s: Settings, data: Mnist, wait: bool) -> None:
    """Compiles every width's fused conv kernels on each fraction's training subset (some specialise on its size)."""
    train = to_device(data, "cuda")["train"]
    for f in s.fractions:
        n = n_train(f, len(train))
        split = DeviceSplit(train.x[:n], train.y[:n])
        compile_ahead([Member(net(w, s.activation)) for w in s.widths], split, TrainConfig.from_settings(s), wait)


def prepare(s: Settings, data: Mnist) -> None:
    """Before Ray starts: where the trials run on this machine's GPU, every width's kernels start compiling (each width
    has its own), so that they compile while Ray starts and no trial waits for them; run waits for them."""
    if torch.cuda.is_available() and s.address == "local":
        kernels(s, data, wait=False)


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    if torch.cuda.is_available() and res.address == "local":
        start = time.perf_counter()
        kernels(s, data, wait=True)
        print(f"[scaling] kernels of {len(s.widths)} widths ready ({time.perf_counter() - start:.1f} s waited once "
              "Ray was up)", flush=True)
    fixed = {"train": TrainConfig.from_settings(s).as_dict(), "lr": s.lr, "weight_decay": s.weight_decay,
             "activation": s.activation, "master_seed": s.master_seed}
    groups = [[{"seed": seed} for seed in seeds_for(s)]]
    largest = n_train(max(s.fractions), len(data.train_x))
    experiments = {"grid": {**fixed, "budget": "epochs", "width": tune.grid_search(s.widths),
                            "fraction": tune.grid_search(s.fractions)}}
    smaller = sorted(set(s.fractions) - {max(s.fractions)}, reverse=True)
    if s.check_widths and smaller:  # the largest fraction's cells are the grid's: equal steps and equal epochs agree
        experiments["check"] = {**fixed, "budget": "steps", "steps": s.epochs * steps_per_epoch(largest, s.batch_size),
                                "width": tune.grid_search(s.check_widths), "fraction": tune.grid_search(smaller)}
    frame = pd.concat([runner.populations(trainable, run_dir, name, res, data, space, groups=groups,
                                          keep=["width", "fraction", "budget"], shown=["width", "fraction"],
                                          tensorboard=run_dir / "tensorboard" / name, metric="test_loss", prune=True)
                       for name, space in experiments.items()], ignore_index=True)
    require(len(scaling_report.finished(frame)) > 0,
            "no run of the grid trained to the end: see the error column of results.csv")
    answers = scaling_report.answers(frame)
    for name, table in answers.items():
        if table is None:
            (run_dir / name).unlink(missing_ok=True)  # a resumed run's answer must not outlive its fit
        else:
            write_csv(run_dir / name, table)
    report(run_dir)
    return scaling_report.summary(answers)


def tables(s: Settings) -> list[Table]:
    checked = len(s.check_widths) * (len(s.fractions) - 1) * s.seeds
    runs = len(s.widths) * len(s.fractions) * s.seeds + checked
    return [Table("results.csv", ("width", "fraction", "budget", "seed", "test_loss", "test_acc", "final_train_loss",
                                  "final_train_acc", "params", "n_train", "steps", "compute", "residual", "error"),
                  range(runs, runs + 1), finite=("test_loss", "test_acc", "final_train_loss", "compute")),
            Table("fits.csv", tuple(scaling_report.LAWS), range(3, 3 + 2 * len(s.check_widths) + 1)),
            Table("equal_compute.csv", ("metric", "width", "fraction", "wider", "more_data", "compute_ratio",
                                        *scaling_report.COMPARISON, "better"), range(0, 2**63))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, report, tables, prepare)
