"""The budget study's answers: tables, figures and REPORT.md from its trials.csv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tune_mnist import plots, runs
from tune_mnist.files import read_table

CONFIG = ["k", "widths", "shape", "activation", "lr", "weight_decay"]


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Members that trained to the end and kept their weights."""
    return trials[trials["error"].eq("") & trials["stopped_early"].eq(0) & trials["checkpoint"].ne("")]


def confirmed(trials: pd.DataFrame) -> pd.DataFrame:
    """The confirmation stage's members where there is one, else every finished MLP (a run without stage 2)."""
    done = finished(trials)
    done = done[done["k"].gt(0)]
    return done[done["stage"].eq("confirm")] if done["stage"].eq("confirm").any() else done


def ranked_configs(part: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """A P's configurations, each with its runs (seeds), best mean validation loss first."""
    groups = list(part.groupby(CONFIG, sort=False))
    return sorted(groups, key=lambda g: g[1]["val_loss"].mean())


def reference(trials: pd.DataFrame, linear_run: str) -> tuple[str, float] | None:
    """The 7,850-parameter linear model's training loss: a linear run's best, else this run's k = 0 members."""
    if linear_run:
        linear = read_table(Path(linear_run) / "trials.csv")
        return "linear study best (7,850 params)", float(linear["final_train_loss"].min())
    own = trials[(trials["stage"] == "grid") & (trials["k"] == 0) & trials["error"].eq("")]
    return ("linear, same training (7,850 params)", float(own["final_train_loss"].min())) if len(own) else None


def draw(run_dir: Path, trials: pd.DataFrame, out: Path) -> None:
    grid = trials[(trials["stage"] == "grid") & trials["error"].eq("")]
    uniform = grid[grid["k"] > 0].groupby(["P", "k"], as_index=False)[["final_train_loss", "test_loss"]].mean()
    line = reference(trials, runs.read(run_dir)["settings"]["linear_run"])
    plots.lines(out / "loss_vs_k.png", uniform, "k", ["final_train_loss", "test_loss"], "P", logx=True,
                title="Loss vs depth at a fixed parameter budget", reference=line)


def write(run_dir: Path, trials: pd.DataFrame, best: dict[str, Any]) -> dict[str, Any]:
    draw(run_dir, trials, run_dir)
    summary: dict[str, Any] = {"trials": len(trials), "errors": int(trials["error"].ne("").sum())}
    for P, entries in best.items():
        if entries:
            summary[f"P{P}_best"] = f"{entries[0]['widths']}/{entries[0]['activation']}"
            summary[f"P{P}_test_acc"] = round(entries[0]["test_acc_mean"], 4)
    return summary
