"""The random study's answers, from its searches.csv: per setting over its draws of images, the screen's pass rate,
the share of passing nets that generalise, and the best net against the best of chance and against its own test;
as CSVs, figures and REPORT.md. random_nets.py runs the searches; this module never imports it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_mnist import plots, runs, stats
from tune_mnist.files import read_table, save_figure
from tune_mnist.report import for_run

SETTING = ["weight_scale", "bias_scale", "threshold"]   # what a search's nets and screen are; data_seed is its draw
METRICS = ["pass_rate", "generalised_rate", "best_val", "best_test", "expected_best", "val_above_chance",
           "val_minus_test"]
PER_PASSING = ["generalised_rate", "best_val", "best_test", "val_above_chance", "val_minus_test"]  # need a passing net
QUESTION = ("How good can never-trained random TinyCNNs be, do they generalise, and how much does the answer depend "
            "on which images they are screened on?")
TESTS = {"chance": ("best_val", "expected_best", "best val", "the expected best of chance"),
         "test": ("best_val", "best_test", "best val", "its test")}  # the answer's tests, paired over draws


def across_draws(searches: pd.DataFrame) -> pd.DataFrame:
    """draws.csv: per setting, over its draws, each metric's mean and 95% t-interval (over draws); a draw where
    no net passed the screen counts in the pass rate only (draws_passing says how many passed any). The share of
    passing nets that generalise also pooled over the draws' nets, with its Wilson interval (over nets)."""
    rows = []
    for key, part in searches.groupby(SETTING):
        row = {**dict(zip(SETTING, key)), "draws": len(part), "draws_passing": int(part["passing"].gt(0).sum()),
               "nets": int(part["evaluated"].min()), "nets_equal": bool(part["evaluated"].nunique() == 1),
               "passing": int(part["passing"].sum()), "generalised": int(part["generalised"].sum())}
        pooled = (stats.proportion_interval(row["generalised"], row["passing"]) if row["passing"] else
                  stats.Interval(math.nan, math.nan, math.nan, 0, math.nan))
        row.update(pooled.columns("pooled_generalised_rate"))
        for metric in METRICS:
            values = part[metric].dropna()
            i = stats.mean_interval(values) if len(values) else stats.Interval(math.nan, math.nan, math.nan, 0,
                                                                                 math.nan)
            row.update(i.columns(metric))
        rows.append(row)
    return pd.DataFrame(rows)


def comparisons(searches: pd.DataFrame) -> pd.DataFrame:
    """comparisons.csv: per setting, TESTS as paired t-tests over the draws that passed a net, Holm over the two."""
    rows = []
    for key, part in searches.groupby(SETTING):
        part = part.dropna(subset=["best_val"]).set_index("data_seed")
        none = stats.Interval(math.nan, math.nan, math.nan, 0, math.nan, unit="draws")
        found = stats.holm_family([stats.paired_test(part[a], part[b], unit="draws") if len(part) else
                                   stats.Comparison(none, math.nan, math.nan, math.nan, "paired t-test", (0,))
                                   for a, b, *_ in TESTS.values()])
        rows += [{**dict(zip(SETTING, key)), "comparison": name, **c.row()} for name, c in zip(TESTS, found)]
    return pd.DataFrame(rows)


def best_setting(across: pd.DataFrame) -> pd.Series:
    """The setting whose best nets score highest on val, on average over the draws."""
    return across.sort_values("best_val", ascending=False, na_position="last", kind="stable").iloc[0]


def of_setting(frame: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    return frame[(frame[SETTING] == row[SETTING]).all(axis=1)]


def interval(row: pd.Series, metric: str, scale: float = 1.0) -> stats.Interval:
    """A metric's interval back from draws.csv's columns; n is the draws it is over."""
    n = row["draws_passing"] if metric in PER_PASSING else row["draws"]
    return stats.Interval.from_columns(row, metric, int(n), "draws", scale)


def percent(i: stats.Interval) -> str:
    return (f"{i.mean:.2%} (95% CI {i.low:.2%} to {i.high:.2%}, {i.n:,} {i.unit})" if i.n > 1 and i.high > i.low
            else f"{i.mean:.2%} ({i.n:,} {i.unit}: no interval)")


def answer(searches: pd.DataFrame, across: pd.DataFrame, compared: pd.DataFrame, settings: dict[str, Any]) -> str:
    """The answer for the best setting: the screen's pass rate and how much the draw moves it, the share of passing
    nets that generalise, and its best net against chance and against its own test."""
    r = best_setting(across)
    part, tests = of_setting(searches, r), of_setting(compared, r).set_index("comparison")
    count = f"{r['nets']:,}" if r["nets_equal"] else f"{part['evaluated'].min():,} to {part['evaluated'].max():,}"
    sizes = "/".join(f"{settings[k]:,}" for k in ("n_train", "n_val", "n_test"))
    text = (f"**{label(r)}**, over {int(r['draws'])} disjoint draws of {sizes} train/val/test images, each screening "
            f"the same {count} nets: the screen (train ≥ {r['threshold']:g}) passes "
            f"{percent(interval(r, 'pass_rate'))} of them, from {part['pass_rate'].min():.2%} to "
            f"{part['pass_rate'].max():.2%} per draw.")
    if not r["draws_passing"]:
        return text + " No net passed the screen on any draw."
    pooled = stats.Interval.from_columns(r, "pooled_generalised_rate", int(r["passing"]), "passing nets")
    per_draw_rate = percent(interval(r, "generalised_rate"))
    text += (f" **Passing generalises for {int(r['generalised']):,} of the {int(r['passing']):,} passing nets:** "
             f"{percent(pooled)} keep val and test ≥ {r['threshold']:g}; per draw {per_draw_rate}, from "
             f"{part['generalised_rate'].min():.2%} to {part['generalised_rate'].max():.2%}.")
    chance, gap = (stats.Comparison.from_row(tests.loc[name]) for name in TESTS)
    text += (f" The best net (highest val) reaches val {interval(r, 'best_val')} and test {interval(r, 'best_test')};"
             f" {stats.in_words(chance, *TESTS['chance'][2:])}; {stats.in_words(gap, *TESTS['test'][2:])}.")
    if r["draws_passing"] < r["draws"]:
        text += f" {int(r['draws'] - r['draws_passing'])} draws passed no net."
    others = f" Best of {len(across)} settings by mean best val; the tables have each." if len(across) > 1 else ""
    return text + others


def method(across: pd.DataFrame) -> str:
    draws = int(across["draws"].min())
    return (
        "**Design.** Each setting samples its nets from one seed and screens the very same nets on every draw of "
        "images (disjoint blocks of one fixed shuffle of the 60,000 training images), the draws in lock-step, so "
        "that whenever the search stops every draw has screened the same number of nets: differences between "
        "draws are the images' alone. **Screen and scores.** A net passes when its accuracy on the draw's train "
        "images reaches the threshold; every passing net is scored on the draw's val and test images. **Does "
        "passing generalise?** The share of passing nets whose val and test accuracy both stay at or above the "
        "threshold: per draw and pooled over the draws with Wilson intervals over the nets (the draw's images "
        "held fixed), and as a mean over draws with a t-interval over the draws (which holds the images' "
        "variation). **Best net.** The passing net with the highest val; its test is the unbiased estimate, and "
        "val − test is the optimism of choosing it on val. Chance: the expected best val of k chance-level nets "
        "(p = 0.1) scored on n_val images, p + sqrt(p(1−p)/n_val)·sqrt(2 ln k), with k the nets actually scored on "
        "val (the passing ones). Best val against chance and against its test: paired t-tests over the draws, "
        f"Holm over the two. Intervals over draws are Student t with {draws - 1} degrees of freedom: with "
        f"{draws} draws they are wide; they hold the images' variation, not that of another sampling seed."
        + (f" Of the {len(across)} settings, the Answer states the one with the highest mean best val, chosen on val "
           "alone: its test numbers played no part in the choice." if len(across) > 1 else "")
    )


def label(row: Any) -> str:
    """A setting as the report names it."""
    return f"weight scale {row['weight_scale']:g}, bias scale {row['bias_scale']:g}, threshold {row['threshold']:g}"


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with each row's setting named in a column "setting"."""
    return frame.assign(setting=[label(r) for _, r in frame.iterrows()])


def cell(row: pd.Series, metric: str, scale: float = 1.0) -> str:
    """A metric's mean and 95% interval as a table shows it."""
    i = interval(row, metric, scale)
    return f"{i.mean:.4g} [{i.low:.4g}, {i.high:.4g}]" if i.n > 1 else f"{i.mean:.4g}"


def key_table(across: pd.DataFrame) -> pd.DataFrame:
    """draws.csv as the report shows it: each metric's mean [95% interval] over the draws."""
    shown = {"pass rate (%)": ("pass_rate", 100), "generalised (%)": ("generalised_rate", 100),
             "best val": ("best_val", 1), "its test": ("best_test", 1), "expected best of chance": ("expected_best", 1),
             "val - test": ("val_minus_test", 1)}
    table = labelled(across)[["setting", "draws", "draws_passing", "nets"]].rename(
        columns={"draws_passing": "draws passing", "nets": "nets per draw"})
    for title, (metric, scale) in shown.items():
        table[title] = [cell(r, metric, scale) for _, r in across.iterrows()]
    return table


def short(row: pd.Series, metric: str, scale: float = 1.0, unit: str = "") -> str:
    """A metric's mean[low,high] for the summary line."""
    i = interval(row, metric, scale)
    return f"{i.mean:.4f}{unit}[{i.low:.4f}{unit},{i.high:.4f}{unit}]"


def summary(searches: pd.DataFrame, across: pd.DataFrame) -> dict[str, Any]:
    """The summary line: the best setting's answers over its draws, as mean[95% interval]."""
    r = best_setting(across)
    pooled = stats.Interval.from_columns(r, "pooled_generalised_rate", int(r["passing"]), scale=100)
    return {"searches": len(searches), "nets": int(searches["evaluated"].sum()), "draws": int(r["draws"]),
            "nets_per_draw": int(r["nets"]), "pass_rate": short(r, "pass_rate", 100, "%"),
            "generalised": f"{pooled.mean:.2f}%[{pooled.low:.2f}%,{pooled.high:.2f}%]",
            "best_val": short(r, "best_val"), "best_test": short(r, "best_test"),
            "val_minus_test": short(r, "val_minus_test"),
            "expected_best_of_chance": round(float(r["expected_best"]), 4)}


# ----------------------------------------------------------------------------------------------------------------
# Figures and REPORT.md, from the run's CSVs and search_results.json files


def per_draw(path: Path, frame: pd.DataFrame, across: pd.DataFrame, x: str, group: str,
             panels: Sequence[tuple[str, Sequence[tuple[str, str]]]], *, xlabel: str, title: str) -> None:
    """A row of subplots per value of `group`, one per (ylabel, [(column, label)]) panel: each column's value at each
    x (a category, such as a draw of data) as points, and its mean (dashed) and 95% interval (band) from `across`."""
    keys = list(dict.fromkeys(frame[group]))
    fig, axes = plots.pyplot().subplots(len(keys), len(panels), figsize=(5.5 * len(panels), 3.8 * len(keys)),
                                        squeeze=False, layout="constrained")
    for row, key in zip(axes, keys):
        part = frame[frame[group] == key].sort_values(x)
        summary = across[across[group] == key].iloc[0]
        at = np.arange(len(part))
        for ax, (ylabel, columns) in zip(row, panels):
            for i, (column, label) in enumerate(columns):
                ax.plot(at, part[column], "o", color=f"C{i}", label=label)
                if np.isfinite(summary[column]):  # a setting where no draw has the value has no mean to draw
                    ax.axhline(summary[column], color=f"C{i}", ls="--", lw=1)
                    ax.axhspan(summary[f"{column}_low"], summary[f"{column}_high"], color=f"C{i}", alpha=0.15, lw=0)
            ax.set_xticks(at, part[x].astype(str))
            ax.set(title=str(key), xlabel=xlabel, ylabel=ylabel)
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: never over a point
    fig.suptitle(title)
    save_figure(path, fig)


def search_panels(path: Path, result: dict) -> None:
    """Four panels: generalisation gap, train vs val with the bests, best-so-far vs chance, val histogram."""
    pairs = np.array(result["pairs"] or [[np.nan, np.nan, 0]])   # rows: train, val, nets with that pair
    history = pd.DataFrame(result["history"])
    fig, axes = plots.pyplot().subplots(2, 2, figsize=(11, 8))
    gap, scatter, best, hist = axes.flat
    gap.hist(pairs[:, 0] - pairs[:, 1], bins=40, weights=pairs[:, 2])
    gap.set(title="generalisation gap of passing nets", xlabel="train acc - val acc", ylabel="nets")
    scatter.scatter(pairs[:, 0], pairs[:, 1], s=4 * np.sqrt(pairs[:, 2]), alpha=0.4,
                    label="passing nets (area: how many)")
    threshold = result["settings"]["threshold"]
    scatter.axhline(threshold, color="k", ls=":", lw=1, label="threshold")
    if len(history):
        scatter.scatter(history["train"], history["val"], color="r", s=16, label="new bests")
        best.plot(history["scored"], history["val"], "o-", label="best val")
        best.plot(history["scored"], history["test"], "s-", label="its test")
        best.plot(history["scored"], history["expected_best"], "k--", label="expected best of chance")
    scatter.set(title="train vs val accuracy", xlabel="train acc", ylabel="val acc")
    scatter.legend(fontsize=8)
    best.set_xscale("log")
    best.set(title=f"best so far ({result['passing']:,} of {result['evaluated']:,} nets scored on val)",
             xlabel="nets scored on val", ylabel="accuracy")
    best.legend(fontsize=8)
    hist.hist(pairs[:, 1], bins=40, weights=pairs[:, 2])
    hist.axvline(threshold, color="k", ls=":", lw=1)
    hist.set(title=f"val accuracy of the {result['passing']:,} passing nets ({result['val_above']:,} ≥ threshold)",
             xlabel="val acc", ylabel="nets")
    fig.tight_layout()
    save_figure(path, fig)


def report(run_dir: Path, out: Path | None = None) -> None:
    """The figures (the draws compared, each search's four panels) and REPORT.md into `out`, from the run's
    searches.csv, draws.csv, comparisons.csv and search_results.json files."""
    out = Path(out or run_dir)
    searches, across = read_table(run_dir / "searches.csv"), read_table(run_dir / "draws.csv")
    compared = read_table(run_dir / "comparisons.csv")
    md = for_run(run_dir, "random: how good are never-trained TinyCNNs, do they generalise, and how much does the "
                          "draw of images matter?", QUESTION)
    md.answer(answer(searches, across, compared, runs.read(run_dir)["settings"]))
    md.section("Method", method(across))
    md.section("Across draws", "`draws.csv`: per setting, each number's mean over the draws and its 95% interval "
                               "(Student t over draws); every draw screened `nets per draw` nets, the same nets.")
    md.table(key_table(across))
    md.section("Tests", "`comparisons.csv`: per setting, paired over draws, Holm over the two.")
    md.table(compared, [*SETTING, "comparison", "difference", "difference_low", "difference_high", "p", "p_adjusted",
                        "mde", "n"])
    md.section("Each search", "`searches.csv`: one row per (setting, data seed); `generalised` passing nets keep val "
                              "and test at or above the threshold (`generalised_rate`, Wilson bounds over nets).")
    md.table(searches, [*SETTING, "data_seed", "evaluated", "passing", "pass_rate", "generalised", "generalised_rate",
                        "generalised_rate_low", "generalised_rate_high", "best_val", "best_test", "expected_best",
                        "val_minus_test"])
    md.section("Figures")
    panels = [("pass rate (passing / evaluated)", [("pass_rate", "pass rate")]),
              ("share of passing nets", [("generalised_rate", "val and test ≥ threshold")]),
              ("accuracy", [("best_val", "best val"), ("best_test", "its test"),
                            ("expected_best", "expected best of chance")])]
    per_draw(out / "draws.png", labelled(searches), labelled(across), "data_seed", "setting", panels,
             xlabel="data seed (disjoint draw of images)",
             title="Each draw: points; mean over draws: dashed line, 95% interval: band")
    md.figure(out / "draws.png", "The draws compared: the screen's pass rate, the share of passing nets that "
                                 "generalise, and the best net's val and test against the expected best of chance")
    for folder in sorted((run_dir / "searches").iterdir()):
        target = folder / "random_search.png" if out.resolve() == run_dir.resolve() else out / f"{folder.name}.png"
        search_panels(target, json.loads((folder / "search_results.json").read_text()))
        md.figure(target, f"{folder.name}: generalisation gap, train vs val, best so far against chance, val "
                          "accuracy of the passing nets")
    md.write(out)
