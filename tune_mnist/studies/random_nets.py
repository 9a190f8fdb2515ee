"""random: search untrained-weight TinyCNNs. Which random nets beat chance on a small train split, how many of
those generalise, how does the best compare with the best pure chance would give, and how much do these answers
depend on which images the nets are screened on?

Each setting (weight scale, bias scale, threshold) runs one search per data seed: a disjoint draw of train, val and
test images. Every draw screens the same nets, so the spread across draws is the images' alone; draws.csv gives
each answer's mean and 95% interval over the draws.

Runs until stopped (Ctrl-C saves and stops cleanly; --resume continues), --max-nets or --time-limit.

    python -m tune_mnist random --time-limit 600 --weight-scales 0.5 1.5 3 --data-seeds 0 1 --gpus-per-trial 0.16
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from ray import tune

from tune_mnist import models, plots, runs, stats
from tune_mnist import random_search as rs
from tune_mnist.data import Mnist
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv, write_json
from tune_mnist.report import for_run
from tune_mnist.runs import Table
from tune_mnist.settings import (Common, NonEmpty, NonNegative, NonNegativeInt, Positive, PositiveInt, Probability,
                                 Seed)
from tune_mnist.studies import Study
from tune_mnist.tuning import cluster, runner

NAME = "random"
HELP = "untrained-weight search over random TinyCNNs on several draws of images, resumable, runs until stopped"
SETTING = ["weight_scale", "bias_scale", "threshold"]   # what a search's nets and screen are; data_seed is its draw
METRICS = ["pass_rate", "best_val", "best_test", "expected_best", "val_above_chance", "val_minus_test"]
REPORT_EVERY_S = 1.0   # a GPU search step takes tens of ms: a Tune report and checkpoint each would cost more
QUESTION = ("How good can never-trained random TinyCNNs be, do they generalise, and how much does the answer depend "
            "on which images they are screened on?")


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
    return (f"w{config['weight_scale']:g}_b{config['bias_scale']:g}_t{config['threshold']:g}"
            f"_d{config['data_seed']}")


def label(row: Any) -> str:
    """A setting as the report names it."""
    return f"weight scale {row['weight_scale']:g}, bias scale {row['bias_scale']:g}, threshold {row['threshold']:g}"


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with each row's setting named in a column "setting"."""
    return frame.assign(setting=[label(r) for _, r in frame.iterrows()])


def write_search(folder: Path, state: dict[str, Any], metrics: dict[str, Any], n_val: int,
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
    result = {"evaluated": state["evaluated"], "failed_screen": state["failed_screen"], "passing": state["passing"],
              "pairs": pairs, "history": state["history"], "kept": kept, "settings": state["settings"],
              "data_seed": data_seed, "n_val": n_val, "expected_best": rs.expected_best(state["evaluated"], n_val),
              "nets_per_s": metrics.get("nets_per_s")}
    write_json(folder / "search_results.json", result)
    return result


def search_row(config: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A search's row of searches.csv: its setting and draw, the screen's pass rate, and its best net's scores."""
    best = result["history"][-1] if result["history"] else {}
    val, test = best.get("val", math.nan), best.get("test", math.nan)
    return {**{k: config[k] for k in [*SETTING, "data_seed"]}, "evaluated": result["evaluated"],
            "failed_screen": result["failed_screen"], "passing": result["passing"],
            "pass_rate": result["passing"] / result["evaluated"], "best_train": best.get("train", math.nan),
            "best_val": val, "best_test": test, "expected_best": result["expected_best"],
            "val_above_chance": val - result["expected_best"], "val_minus_test": val - test,
            "nets_per_s": result["nets_per_s"]}


def interval_columns(prefix: str, values: pd.Series) -> dict[str, float]:
    """<prefix>, <prefix>_low, <prefix>_high: the mean of the values and its 95% interval; nan where none."""
    i = stats.mean_interval(values) if len(values) else stats.Interval(math.nan, math.nan, math.nan, 0, math.nan)
    return {prefix: i.mean, f"{prefix}_low": i.low, f"{prefix}_high": i.high}


def across_draws(searches: pd.DataFrame) -> pd.DataFrame:
    """Per setting, over its draws: each metric's mean and 95% interval. A draw where no net passed the screen has
    no best net, so it counts in the pass rate but not in the best net's numbers (draws_passing says how many do)."""
    rows = []
    for key, part in searches.groupby(SETTING):
        row = {**dict(zip(SETTING, key)), "draws": len(part), "draws_passing": int(part["passing"].gt(0).sum()),
               "nets": int(part["evaluated"].sum())}
        for metric in METRICS:
            row.update(interval_columns(metric, part[metric].dropna()))
        rows.append(row)
    return pd.DataFrame(rows)


def best_setting(across: pd.DataFrame) -> pd.Series:
    """The setting whose best nets score highest on val, on average over the draws."""
    return across.sort_values("best_val", ascending=False, na_position="last", kind="stable").iloc[0]


def bounds(row: pd.Series, metric: str, scale: float = 1.0) -> tuple[float, float, float]:
    """A metric's mean, low and high from draws.csv's columns, times scale."""
    return tuple(scale * row[f"{metric}{end}"] for end in ("", "_low", "_high"))


def interval(row: pd.Series, metric: str, scale: float = 1.0) -> stats.Interval:
    """A metric's interval back from draws.csv's columns; n is the draws it is over."""
    n = int(row["draws"] if metric in ("pass_rate", "expected_best") else row["draws_passing"])
    return stats.Interval(*bounds(row, metric, scale), n, math.nan)


def versus(i: stats.Interval, what: str) -> str:
    """Where a difference's interval lies against zero, in words."""
    if i.n < 2:
        return f"against {what} (one draw: no interval)"
    if not i.excludes(0.0):
        return f"within noise of {what}"
    return f"clearly above {what}" if i.mean > 0 else f"clearly below {what}"


def answer(searches: pd.DataFrame, across: pd.DataFrame, settings: dict[str, Any]) -> str:
    """The answer for the best setting: its best net against chance, val against test, and how much the draw
    of images moves the screen's pass rate and the best net."""
    r = best_setting(across)
    part = searches[(searches[SETTING] == r[SETTING]).all(axis=1)]
    nets = part["evaluated"]
    count = f"{nets.iloc[0]:,}" if nets.nunique() == 1 else f"{nets.min():,} to {nets.max():,}"
    sizes = "/".join(f"{settings[k]:,}" for k in ("n_train", "n_val", "n_test"))
    text = (f"**{label(r)}**, over {int(r['draws'])} disjoint draws of {sizes} train/val/test images (the same "
            f"{count} nets screened on each): ")
    if r["draws_passing"]:
        above, gap = interval(r, "val_above_chance"), interval(r, "val_minus_test")
        chance = f"the best of {count} chance-level nets ({r['expected_best']:.4f})"
        text += (f"the best net reaches val {interval(r, 'best_val')}, {versus(above, chance)} by {above}, "
                 f"and test {interval(r, 'best_test')} where chance is 0.1; val minus test is {gap}, "
                 f"{versus(gap, 'zero')}. Across draws, ")
    else:
        text += "no net passed the screen on any draw. Across draws, "
    text += (f"the screen (train ≥ {r['threshold']:g}) passes {interval(r, 'pass_rate', 100)} percent of the nets, "
             f"from {part['pass_rate'].min():.2%} to {part['pass_rate'].max():.2%} per draw")
    if r["draws_passing"]:
        text += f", and the best val runs from {part['best_val'].min():.4f} to {part['best_val'].max():.4f}"
    if r["draws_passing"] < r["draws"]:
        text += f"; {int(r['draws'] - r['draws_passing'])} draws passed none"
    others = f" Best of {len(across)} settings by mean best val; the table has each." if len(across) > 1 else ""
    return text + "." + others


def cell(row: pd.Series, metric: str, scale: float = 1.0) -> str:
    """A metric's mean and 95% interval as a table shows it."""
    mean, low, high = bounds(row, metric, scale)
    return f"{mean:.4g} [{low:.4g}, {high:.4g}]" if row["draws"] > 1 else f"{mean:.4g}"


def key_table(across: pd.DataFrame) -> pd.DataFrame:
    """draws.csv as the report shows it: each metric's mean [95% interval] over the draws."""
    shown = {"pass rate (%)": ("pass_rate", 100), "best val": ("best_val", 1), "its test": ("best_test", 1),
             "expected best of chance": ("expected_best", 1), "val - test": ("val_minus_test", 1)}
    table = labelled(across)[["setting", "draws", "draws_passing"]].rename(columns={"draws_passing": "draws passing"})
    for title, (metric, scale) in shown.items():
        table[title] = [cell(r, metric, scale) for _, r in across.iterrows()]
    return table


def short(row: pd.Series, metric: str, scale: float = 1.0, unit: str = "") -> str:
    """A metric's mean[low,high] for the summary line."""
    mean, low, high = bounds(row, metric, scale)
    return f"{mean:.4f}{unit}[{low:.4f}{unit},{high:.4f}{unit}]"


def summary(searches: pd.DataFrame, across: pd.DataFrame) -> dict[str, Any]:
    """The summary line: the best setting's answers over its draws, as mean[95% interval]."""
    r = best_setting(across)
    return {"searches": len(searches), "nets": int(searches["evaluated"].sum()), "draws": int(r["draws"]),
            "pass_rate": short(r, "pass_rate", 100, "%"), "best_val": short(r, "best_val"),
            "best_test": short(r, "best_test"), "val_minus_test": short(r, "val_minus_test"),
            "expected_best_of_chance": round(float(r["expected_best"]), 4)}


def report(run_dir: Path, out: Path | None = None) -> None:
    """The figures (the draws compared, each search's four panels) and REPORT.md into `out`, from the run's
    searches.csv, draws.csv and search_results.json files."""
    out = Path(out or run_dir)
    searches, across = read_table(run_dir / "searches.csv"), read_table(run_dir / "draws.csv")
    settings = runs.read(run_dir)["settings"]
    md = for_run(run_dir, "random: how good are never-trained TinyCNNs, and how much does the draw of images matter?",
                 QUESTION)
    md.answer(answer(searches, across, settings))
    md.section("Across draws", "`draws.csv`: per setting, each number's mean over the draws and its 95% interval "
                               "(Student t over draws). Every draw screens the same nets, so the spread between draws "
                               "is the images' alone; the expected best of chance is p + sqrt(p(1-p)/n_val) * "
                               "sqrt(2 ln n) for n nets at chance rate p = 0.1.")
    md.table(key_table(across))
    md.section("Each search", "`searches.csv`: one row per (setting, data seed); the pass rate is passing / evaluated.")
    md.table(searches, [*SETTING, "data_seed", "evaluated", "passing", "pass_rate", "best_val", "best_test",
                        "expected_best", "val_minus_test"])
    md.section("Figures")
    panels = [("pass rate (passing / evaluated)", [("pass_rate", "pass rate")]),
              ("accuracy", [("best_val", "best val"), ("best_test", "its test"),
                            ("expected_best", "expected best of chance")])]
    plots.per_draw(out / "draws.png", labelled(searches), labelled(across), "data_seed", "setting", panels,
                   xlabel="data seed (disjoint draw of images)",
                   title="Each draw: points; mean over draws: dashed line, 95% interval: band")
    md.figure(out / "draws.png", "The draws compared: the screen's pass rate, and the best net's val and test "
                                 "accuracy against the expected best of chance, per data seed")
    for folder in sorted((run_dir / "searches").iterdir()):
        target = folder / "random_search.png" if out.resolve() == run_dir.resolve() else out / f"{folder.name}.png"
        plots.random_search(target, json.loads((folder / "search_results.json").read_text()))
        md.figure(target, f"{folder.name}: generalisation gap, train vs val, best so far against chance, val "
                          "accuracy of the passing nets")
    md.write(out)


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    searches = len(s.weight_scales) * len(s.bias_scales) * len(s.thresholds) * len(s.data_seeds)
    at_once = min(cluster.trial_slots(res), res.max_concurrent or searches)
    # Tune starts a waiting search only when one ends, and a search without --max-nets never ends
    require(s.max_nets > 0 or searches <= at_once, f"{searches} searches run until stopped but only {at_once:g} fit "
            "at once: pass --max-nets, or a smaller --cpus-per-trial or --gpus-per-trial")
    space = {k: getattr(s, k) for k in ("nets_per_step", "max_nets", "n_train", "n_val", "n_test", "seed")}
    space.update(weight_scale=tune.grid_search(s.weight_scales), bias_scale=tune.grid_search(s.bias_scales),
                 threshold=tune.grid_search(s.thresholds), data_seed=tune.grid_search(s.data_seeds))
    grid = runner.run(RandomSearch, run_dir, "searches", res, data, param_space=space,
                      metric="best_val", mode="max", shown=["weight_scale", "bias_scale", "data_seed", "evaluated"],
                      stop={"evaluated": s.max_nets} if s.max_nets else None,
                      time_budget_s=s.time_limit or None, checkpoint_every=1, stop_on_interrupt=True)
    rows = []
    for result in grid:
        if result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as d:
            state = models.load_state(Path(d) / "search.pt")
        out = write_search(run_dir / "searches" / tag(result.config), state, result.metrics, s.n_val,
                           result.config["data_seed"])
        rows.append(search_row(result.config, out))
    require(rows, "no search reported a result: give it more --time-limit")
    table = pd.DataFrame(rows).sort_values([*SETTING, "data_seed"], ignore_index=True)
    across = across_draws(table)
    write_csv(run_dir / "searches.csv", table)
    write_csv(run_dir / "draws.csv", across)
    report(run_dir)
    return summary(table, across)


def tables(s: Settings) -> list[Table]:
    searches = len(s.weight_scales) * len(s.bias_scales) * len(s.thresholds) * len(s.data_seeds)
    return [Table("searches.csv", (*SETTING, "data_seed", "evaluated", "passing", "pass_rate", "best_val", "best_test",
                                   "expected_best", "val_minus_test"), range(1, searches + 1),
                  finite=("evaluated", "passing", "pass_rate", "expected_best")),
            Table("draws.csv", tuple(SETTING))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, report, tables)
