"""random: search untrained-weight TinyCNNs. Which random nets beat chance on a small train split,
how many of those generalise, and how does the best compare with the best pure chance would give?

Runs until stopped (Ctrl-C saves and stops cleanly; --resume continues), --max-nets or --time-limit.

    python -m tune_mnist random --time-limit 600 --weight-scales 0.5 1.5 3 --gpus-per-trial 0.25
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from ray import tune

from tune_mnist import models, plots
from tune_mnist import random_search as rs
from tune_mnist.data import Mnist
from tune_mnist.errors import require
from tune_mnist.files import write_csv, write_json
from tune_mnist.settings import Common
from tune_mnist.tuning import cluster, runner

NAME = "random"
HELP = "untrained-weight search over random TinyCNNs, resumable, runs until stopped"
COLUMNS = ["weight_scale", "bias_scale", "threshold"]
REPORT_EVERY_S = 1.0   # a GPU search step takes tens of ms: a Tune report and checkpoint each would cost more


@dataclass
class Settings(Common):
    weight_scales: list[float]
    bias_scales: list[float]
    thresholds: list[float]
    nets_per_step: int
    n_train: int
    n_val: int
    n_test: int
    data_seed: int
    seed: int
    max_nets: int
    time_limit: float


def check(s: Settings) -> None:
    for key in ("weight_scales", "bias_scales", "thresholds"):
        require(len(getattr(s, key)) > 0, f"--{key.replace('_', '-')} must not be empty")
    require(all(x > 0 for x in s.weight_scales), "--weight-scales must be > 0")
    require(all(x >= 0 for x in s.bias_scales), "--bias-scales must be >= 0")
    require(all(0 <= t <= 1 for t in s.thresholds), "--thresholds must be in [0, 1]")
    require(s.nets_per_step >= 1, f"--nets-per-step must be >= 1, got {s.nets_per_step}")
    require(s.max_nets >= 0 and s.time_limit >= 0, "--max-nets and --time-limit must be >= 0")
    require(min(s.n_train, s.n_val, s.n_test) >= 1, "split sizes must be >= 1")
    require(s.n_train + s.n_val + s.n_test <= 60_000, "the three splits need more than 60,000 images")


class RandomSearch(tune.Trainable):
    """One search per trial: each step() runs search steps for REPORT_EVERY_S (or to max_nets) and reports."""

    def setup(self, config: dict[str, Any], data: Mnist) -> None:
        device = cluster.trial_device()
        rs.exact_fp32()  # after trial_device, which turns TF32 on for training
        splits = rs.search_splits(data, config["n_train"], config["n_val"], config["n_test"], config["data_seed"],
                                  device)
        settings = rs.Settings(config["weight_scale"], config["bias_scale"], config["threshold"],
                               config["nets_per_step"], config["seed"])
        self.search, self.max_nets = rs.Search(settings, splits), config["max_nets"]

    def step(self) -> dict[str, Any]:
        start, before = time.perf_counter(), self.search.evaluated
        while True:
            self.search.step()
            elapsed = time.perf_counter() - start
            if elapsed >= REPORT_EVERY_S or 0 < self.max_nets <= self.search.evaluated:
                break
        return {**self.search.summary(), "nets_per_s": (self.search.evaluated - before) / elapsed}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        torch.save(self.search.state_dict(), Path(checkpoint_dir) / "search.pt")

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        if (Path(checkpoint_dir) / "search.pt").is_file():  # a resume removes a damaged one: the search starts again
            self.search.load_state_dict(models.load_state(Path(checkpoint_dir) / "search.pt"))


def tag(config: dict[str, Any]) -> str:
    return f"w{config['weight_scale']:g}_b{config['bias_scale']:g}_t{config['threshold']:g}"


def write_search(folder: Path, state: dict[str, Any], metrics: dict[str, Any], n_val: int) -> dict[str, Any]:
    """search_results.json, the kept best weights as plain TinyCNN files, and the four-panel figure."""
    kept = []
    for k in state["kept"]:
        file = folder / "best" / f"net_{k['index']}.pt"
        model = models.tiny_cnn()
        model.load_state_dict(k["state_dict"])
        models.save(file, model, {"family": "tiny_cnn"}, index=k["index"], val_acc=k["val"])
        kept.append({"index": k["index"], "val": k["val"], "file": str(file.relative_to(folder))})
    pairs = [[train, val, n] for (train, val), n in sorted(state["pairs"].items())]
    result = {"evaluated": state["evaluated"], "failed_screen": state["failed_screen"], "passing": state["passing"],
              "pairs": pairs, "history": state["history"], "kept": kept, "settings": state["settings"],
              "n_val": n_val, "expected_best": rs.expected_best(state["evaluated"], n_val),
              "nets_per_s": metrics.get("nets_per_s")}
    write_json(folder / "search_results.json", result)
    draw(folder, folder / "random_search.png")
    return result


def draw(folder: Path, target: Path) -> None:
    import json

    plots.random_search(target, json.loads((folder / "search_results.json").read_text()))


def report(run_dir: Path, out: Path | None = None) -> None:
    for folder in sorted((run_dir / "searches").iterdir()):
        draw(folder, Path(out) / f"{folder.name}.png" if out else folder / "random_search.png")


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    space = {k: getattr(s, k) for k in ("nets_per_step", "max_nets", "n_train", "n_val", "n_test", "data_seed", "seed")}
    space.update(weight_scale=tune.grid_search(s.weight_scales), bias_scale=tune.grid_search(s.bias_scales),
                 threshold=tune.grid_search(s.thresholds))
    grid = runner.run(RandomSearch, run_dir, "searches", res, data, param_space=space,
                      metric="best_val", mode="max", shown=["weight_scale", "bias_scale", "evaluated"],
                      stop={"evaluated": s.max_nets} if s.max_nets else None,
                      time_budget_s=s.time_limit or None, checkpoint_every=1, stop_on_interrupt=True)
    rows = []
    for result in grid:
        if result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as d:
            state = models.load_state(Path(d) / "search.pt")
        out = write_search(run_dir / "searches" / tag(result.config), state, result.metrics, s.n_val)
        best = out["history"][-1] if out["history"] else {}
        rows.append({**{k: result.config[k] for k in COLUMNS}, "evaluated": out["evaluated"],
                     "failed_screen": out["failed_screen"], "passing": out["passing"],
                     "best_train": best.get("train"), "best_val": best.get("val"), "best_test": best.get("test"),
                     "expected_best": out["expected_best"], "nets_per_s": out["nets_per_s"]})
    table = pd.DataFrame(rows)
    write_csv(run_dir / "searches.csv", table)
    top = table.loc[table["best_val"].idxmax()] if len(table) and table["best_val"].notna().any() else {}
    return {"searches": len(table), "nets": int(table["evaluated"].sum()) if len(table) else 0,
            "best_val": top.get("best_val"), "best_test": top.get("best_test"),
            "expected_best_of_chance": round(float(top.get("expected_best", 0.0)), 4)}
