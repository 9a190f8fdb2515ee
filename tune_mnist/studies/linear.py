"""linear: the 7,850-parameter softmax baseline (784 -> 10), full-batch SGD on x/255 - 0.5.

Grid 1, step sizes with seed 0: the one with the lowest validation loss at the end is chosen; each curve is read
at every epoch count (step_size_x_epochs.csv). Grid 2, at the chosen step size, fresh seeds 1..n x init scales:
where the training loss stops improving by more than --plateau-rate per --plateau-window epochs (plateaus.csv,
every run's; "not reached" is an answer), and whether each init scale ends differently from the first one, the
reference, by test loss, test accuracy and training loss (init.csv, init_tests.csv: paired by seed, Holm). The
answers, figures and REPORT.md come from linear_report.py.

    python -m tune_mnist linear --step-sizes 0.1 0.3 1 --epoch-counts 100 1000 2000
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from annotated_types import Ge, Gt, Lt, MinLen
from ray import tune

from tune_mnist.data import Mnist
from tune_mnist.errors import require
from tune_mnist.files import write_csv
from tune_mnist.population import Member
from tune_mnist.runs import Table
from tune_mnist.settings import Common, NonEmpty, NonNegative, Positive, PositiveInt
from tune_mnist.studies import Study, linear_report as answers
from tune_mnist.train import TrainConfig
from tune_mnist.tuning import cluster, members as report_format, runner, trial

NAME = "linear"
HELP = "the 7,850-parameter softmax baseline: step sizes, then fresh seeds x init scales at the chosen one"


@dataclass
class Settings(Common):
    step_sizes: NonEmpty[Positive]
    epoch_counts: NonEmpty[PositiveInt]
    eval_every: PositiveInt
    init_scales: Annotated[list[NonNegative], MinLen(2)]  # the first is the reference the others are compared with
    seeds: Annotated[PositiveInt, Ge(2)]  # the init scales are compared over seeds
    population: PositiveInt
    plateau_rate: Annotated[float, Gt(0), Lt(1)]
    plateau_window: PositiveInt


def check(s: Settings) -> None:
    require(len(set(s.init_scales)) == len(s.init_scales), f"--init-scales must differ, got {s.init_scales}")
    require(s.plateau_window < max(s.epoch_counts), f"--plateau-window must be shorter than the run "
                                                     f"({max(s.epoch_counts)} epochs), got {s.plateau_window}")


def trainable(config: dict[str, Any], data: Mnist) -> None:
    net = {"family": "mlp", "widths": [], "init_scale": config["init_scale"]}
    members = [Member(net, seed=m["seed"], lr=m["lr"]) for m in config["members"]]
    trial.train(data, members, TrainConfig(**config["train"]))


def curves(grid: tune.ResultGrid, label: str) -> pd.DataFrame:
    """Every evaluated point of every member of every trial (epoch, losses, accuracies) with what sets it apart."""
    rows = []
    for result in grid:
        if result.metrics_dataframe is None:
            continue
        entries, scale = result.config["members"], result.config["init_scale"]
        for report in result.metrics_dataframe.to_dict("records"):
            for i, m in report_format.decode(report).items():
                if math.isfinite(m.get("train_loss", math.nan)):  # a member that diverged ends its curve
                    rows.append({k: m[k] for k in ("epoch", "train_loss", "val_loss", "test_loss", "train_acc",
                                                   "test_acc")} | {"grid": label, "lr": entries[i]["lr"],
                                                                   "seed": entries[i]["seed"], "init_scale": scale})
    return pd.DataFrame(rows).drop_duplicates(answers.RUN + ["epoch"], keep="last")


def at_counts(curve: pd.DataFrame, counts: list[int]) -> pd.DataFrame:
    """The step size x epochs table: each curve's point at the last evaluation not after each count."""
    rows = []
    for lr, part in curve.groupby("lr"):
        for n in counts:
            upto = part[part["epoch"] <= n]
            if len(upto):
                rows.append({"lr": lr, "epochs": n, **upto.iloc[-1][["train_loss", "test_loss", "test_acc"]].to_dict()})
    return pd.DataFrame(rows)


def grid(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources, name: str, scales: list[float],
         runs: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trains the runs (each its lr and seed) at every init scale, `population` to a trial: their rows and curves."""
    epochs = max(s.epoch_counts)
    train = TrainConfig.from_settings(s, epochs=epochs, eval_every=min(s.eval_every, epochs), optimizer="sgd",
                                      batch_size=0, inputs="center")
    space = {"train": train.as_dict(), "grid": name, "init_scale": tune.grid_search(scales),
             "members": tune.grid_search(runner.chunks(runs, s.population))}
    results = runner.run(trainable, run_dir, name, res, data, param_space=space, shown=["init_scale"],
                         tensorboard=run_dir / "tensorboard" / name, hparams=["grid", "init_scale"])
    rows = runner.member_rows(runner.rows(results, ["grid", "init_scale", "members"]))
    return rows, curves(results, name)


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    by_lr, first = grid(s, run_dir, data, res, "step_size", [1.0], [{"lr": lr, "seed": 0} for lr in s.step_sizes])
    require(by_lr["error"].eq("").any(), "every step size diverged: try smaller --step-sizes")
    lr = answers.chosen_lr(by_lr)
    by_init, second = grid(s, run_dir, data, res, "init", s.init_scales,
                           [{"lr": lr, "seed": seed} for seed in range(1, s.seeds + 1)])
    trials = pd.concat([by_lr, by_init], ignore_index=True)
    curve = pd.concat([first, second], ignore_index=True)
    require(trials[trials["grid"] == "init"]["error"].eq("").any(), f"every run of grid 2 diverged at step size {lr:g}")
    stops = answers.plateaus(curve, s.plateau_rate, s.plateau_window)
    tests = answers.init_tests(trials, s.init_scales)
    write_csv(run_dir / "trials.csv", trials)
    write_csv(run_dir / "curves.csv", curve)
    write_csv(run_dir / "step_size_x_epochs.csv", at_counts(curve[curve["grid"] == "step_size"], s.epoch_counts))
    write_csv(run_dir / "plateaus.csv", stops)
    write_csv(run_dir / "init.csv", answers.init_summary(trials, s.init_scales))
    write_csv(run_dir / "init_tests.csv", tests)
    report(run_dir)
    reference = stops[(stops["grid"] == "init") & (stops["init_scale"] == s.init_scales[0])]["plateau_epoch"]
    detected = tests[tests["detected"].astype(bool)]["metric"].unique() if len(tests) else []
    return {"trials": len(trials), "errors": int(trials["error"].ne("").sum()), "best_lr": lr,
            "plateau_epoch": f"{reference.median():g}" if reference.notna().any() else "not_reached",
            "plateau_reached": f"{reference.notna().sum()}/{len(reference)}",
            "start_differs_by": ",".join(detected) or "none",
            "min_train_loss": round(float(trials["final_train_loss"].min()), 4)}


def report(run_dir: Path, out: Path | None = None) -> None:
    """Figures and REPORT.md into `out` (default the run folder), from the run's CSVs."""
    answers.write(run_dir, Path(out or run_dir))


def tables(s: Settings) -> list[Table]:
    runs, others = len(s.step_sizes) + s.seeds * len(s.init_scales), len(s.init_scales) - 1
    compared = tuple(m + end for m in answers.METRICS for end in ("", "_low", "_high"))
    return [Table("trials.csv", (*answers.RUN, "final_train_loss", "val_loss", "test_loss", "test_acc", "error"),
                  range(runs, runs + 1), finite=("final_train_loss", "val_loss", "test_loss", "test_acc")),
            Table("curves.csv", ("epoch", "train_loss", "test_loss", "test_acc", *answers.RUN)),
            Table("plateaus.csv", (*answers.RUN, "rate", "window", "plateau_epoch", "reached", "last_epoch",
                                   "last_window_gain", "train_loss_at_plateau", "train_loss_last",
                                   "test_acc_at_plateau", "test_acc_last"), range(1, runs + 1)),
            Table("init.csv", ("init_scale", "seeds", "diverged", *compared),
                  range(len(s.init_scales), len(s.init_scales) + 1)),
            Table("init_tests.csv", ("init_scale", "reference", "metric", "difference", "difference_low",
                                     "difference_high", "p", "p_adjusted", "family", "detected", "mde", "n", "n_b",
                                     "unit", "test"), range(3 * others, 3 * others + 1)),
            Table("step_size_x_epochs.csv", ("lr", "epochs", "train_loss", "test_loss", "test_acc"),
                  range(1, len(s.step_sizes) * len(s.epoch_counts) + 1))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, report, tables)
