"""random: search untrained-weight TinyCNNs. Which random nets beat chance on a small train split, how many of
those generalise, how does the best compare with the best pure chance would give, and how much do these answers
depend on which images the nets are screened on?

Each setting (weight scale, bias scale, threshold) is one Ray trial that screens the same nets (one sampling seed)
on every data seed's draw of train, val and test images (disjoint draws), in lock-step: whenever the search stops,
every draw has screened the same number of nets, so the spread across draws is the images' alone. The answers
(random_report.py) come with intervals over the draws and, for the share of passing nets that generalise, over
the nets.

Runs until stopped (Ctrl-C saves and stops cleanly; --resume continues), --max-nets or --time-limit.

    python -m tune_mnist random --time-limit 600 --weight-scales 0.5 1.5 3 --data-seeds 0 1
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from ray import tune

from tune_mnist import models, stats
from tune_mnist import random_search as rs
from tune_mnist.data import Mnist
from tune_mnist.errors import require
from tune_mnist.files import write_csv, write_json
from tune_mnist.runs import Table
from tune_mnist.settings import (Common, NonEmpty, NonNegative, NonNegativeInt, Positive, PositiveInt, Probability,
                                 Seed)
from tune_mnist.studies import Study, random_report
from tune_mnist.studies.random_report import SETTING, report
from tune_mnist.tuning import cluster, runner

NAME = "random"
HELP = "untrained-weight search over random TinyCNNs on several draws of images, resumable, runs until stopped"
REPORT_EVERY_S = 1.0   # a GPU search step takes tens of ms: a Tune report and checkpoint each would cost more


@dataclass
class Settings(Common):
    weight_scales: NonEmpty[Positive]
    bias_scales: NonEmpty[NonNegative]
    thresholds: NonEmpty[Probability]
    data_seeds: NonEmpty[NonNegativeInt]
    nets_per_step: PositiveInt
    n_train: PositiveInt
    n_val: PositiveInt
    n_test: PositiveInt
    seed: Seed
    max_nets: NonNegativeInt
    time_limit: NonNegative


def check(s: Settings) -> None:
    size = s.n_train + s.n_val + s.n_test
    require(size <= 60_000, f"--n-train, --n-val and --n-test together take {size:,} images of the 60,000")
    require(len(set(s.data_seeds)) == len(s.data_seeds), f"--data-seeds repeats a draw: {s.data_seeds}")
    require((max(s.data_seeds) + 1) * size <= 60_000,
            f"--data-seeds must be 0 to {60_000 // size - 1}: draw k takes the k-th block of {size:,} of the 60,000 "
            "images (smaller splits allow more draws)")


class RandomSearch(tune.Trainable):
    """One setting per trial: a search per draw of images, all sampling the same nets, stepped in turn so that
    every draw has screened as many nets as the others whenever the trial reports, checkpoints or stops. Each
    step() runs rounds for REPORT_EVERY_S (or to max_nets) and reports."""

    def setup(self, config: dict[str, Any], data: Mnist) -> None:
        device = cluster.trial_device()
        rs.exact_fp32()  # after trial_device, which turns TF32 on for training
        settings = rs.Settings(config["weight_scale"], config["bias_scale"], config["threshold"],
                               config["nets_per_step"], config["seed"])
        self.searches = [rs.Search(settings, rs.search_splits(data, config["n_train"], config["n_val"],
                                                              config["n_test"], d, device))
                         for d in config["data_seeds"]]
        self.max_nets = config["max_nets"]

    @property
    def evaluated(self) -> int:
        return self.searches[0].evaluated

    def step(self) -> dict[str, Any]:
        start, before = time.perf_counter(), self.evaluated
        while True:
            for search in self.searches:
                search.step()
            elapsed = time.perf_counter() - start
            if elapsed >= REPORT_EVERY_S or 0 < self.max_nets <= self.evaluated:
                break
        found = [search.summary() for search in self.searches]
        return {"evaluated": self.evaluated, "passing": sum(f["passing"] for f in found),
                "best_val": sum(f["best_val"] for f in found) / len(found),
                "nets_per_s": len(found) * (self.evaluated - before) / elapsed}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        torch.save({"draws": [search.state_dict() for search in self.searches]}, Path(checkpoint_dir) / "search.pt")

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        if (Path(checkpoint_dir) / "search.pt").is_file():  # a resume removes a damaged one: the search starts again
            for search, state in zip(self.searches, models.load_state(Path(checkpoint_dir) / "search.pt")["draws"]):
                search.load_state_dict(state)


def tag(config: dict[str, Any], data_seed: int) -> str:
    return (f"w{config['weight_scale']:g}_b{config['bias_scale']:g}_t{config['threshold']:g}"
            f"_d{data_seed}")


def write_search(folder: Path, state: dict[str, Any], nets_per_s: float | None, n_val: int,
                 data_seed: int) -> dict[str, Any]:
    """search_results.json and the kept best weights as plain TinyCNN files."""
    kept = []
    for k in state["kept"]:
        file = folder / "best" / f"net_{k['index']}{models.SUFFIX}"
        model = models.tiny_cnn()
        model.load_state_dict(k["state_dict"])
        models.save(file, model, {"family": "tiny_cnn"}, index=k["index"], val_acc=k["val"])
        kept.append({"index": k["index"], "val": k["val"], "file": str(file.relative_to(folder))})
    pairs = [[train, val, n] for (train, val), n in sorted(state["pairs"].items())]
    result = {**{k: state[k] for k in ("evaluated", "failed_screen", "passing", "val_above", "test_above",
                                       "generalised", "history", "settings")},
              "pairs": pairs, "kept": kept, "data_seed": data_seed, "n_val": n_val,
              "expected_best": rs.expected_best(state["passing"], n_val), "nets_per_s": nets_per_s}
    write_json(folder / "search_results.json", result)
    return result


def search_row(config: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A search's row of searches.csv: its setting and draw, the screen's pass rate, how many passing nets stay at
    or above the threshold on val and test, and its best net's scores against the best of chance."""
    best = result["history"][-1] if result["history"] else {}
    val, test, passing = best.get("val", math.nan), best.get("test", math.nan), result["passing"]
    rate = (stats.proportion_interval(result["generalised"], passing) if passing else
            stats.Interval(math.nan, math.nan, math.nan, 0, math.nan))
    return {**{k: config[k] for k in SETTING}, "data_seed": result["data_seed"], "evaluated": result["evaluated"],
            "failed_screen": result["failed_screen"], "passing": passing,
            "pass_rate": passing / result["evaluated"], "val_above": result["val_above"],
            "test_above": result["test_above"], "generalised": result["generalised"],
            **rate.columns("generalised_rate"), "best_train": best.get("train", math.nan), "best_val": val,
            "best_test": test, "expected_best": result["expected_best"],
            "val_above_chance": val - result["expected_best"], "val_minus_test": val - test,
            "nets_per_s": result["nets_per_s"]}


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    settings = len(s.weight_scales) * len(s.bias_scales) * len(s.thresholds)
    at_once = min(cluster.trial_slots(res), res.max_concurrent or settings)
    # Tune starts a waiting search only when one ends, and a search without --max-nets never ends
    require(s.max_nets > 0 or settings <= at_once, f"{settings} settings search until stopped but only {at_once:g} "
            "fit at once: pass --max-nets, or a smaller --cpus-per-trial or --gpus-per-trial")
    space = {k: getattr(s, k) for k in ("nets_per_step", "max_nets", "n_train", "n_val", "n_test", "seed",
                                        "data_seeds")}
    space.update(weight_scale=tune.grid_search(s.weight_scales), bias_scale=tune.grid_search(s.bias_scales),
                 threshold=tune.grid_search(s.thresholds))
    grid = runner.run(RandomSearch, run_dir, "searches", res, data, param_space=space,
                      metric="best_val", mode="max", shown=["weight_scale", "bias_scale", "threshold", "evaluated"],
                      stop={"evaluated": s.max_nets} if s.max_nets else None,
                      time_budget_s=s.time_limit or None, checkpoint_every=1, stop_on_interrupt=True)
    rows = []
    for result in grid:
        if result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as d:
            draws = models.load_state(Path(d) / "search.pt")["draws"]
        rate = (result.metrics or {}).get("nets_per_s")
        for data_seed, state in zip(result.config["data_seeds"], draws):
            out = write_search(run_dir / "searches" / tag(result.config, data_seed), state,
                               rate and rate / len(draws), s.n_val, data_seed)
            rows.append(search_row(result.config, out))
    require(rows, "no search reported a result: give it more --time-limit")
    table = pd.DataFrame(rows).sort_values([*SETTING, "data_seed"], ignore_index=True)
    across, compared = random_report.across_draws(table), random_report.comparisons(table)
    write_csv(run_dir / "searches.csv", table)
    write_csv(run_dir / "draws.csv", across)
    write_csv(run_dir / "comparisons.csv", compared)
    report(run_dir)
    return random_report.summary(table, across)


def tables(s: Settings) -> list[Table]:
    settings = len(s.weight_scales) * len(s.bias_scales) * len(s.thresholds)
    searches = settings * len(s.data_seeds)
    return [Table("searches.csv", (*SETTING, "data_seed", "evaluated", "passing", "pass_rate", "generalised",
                                   "generalised_rate", "best_val", "best_test", "expected_best", "val_minus_test"),
                  range(1, searches + 1), finite=("evaluated", "passing", "pass_rate", "expected_best")),
            Table("draws.csv", (*SETTING, "draws", "nets", "pooled_generalised_rate")),
            Table("comparisons.csv", (*SETTING, "comparison", "difference", "p", "p_adjusted"),
                  range(2, 2 * settings + 1))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, report, tables)
