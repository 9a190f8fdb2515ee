"""The figures every study draws, written atomically as PNG. Notebooks call these same functions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tune_mnist.files import save_figure


def _pyplot():
    """matplotlib's pyplot, imported when a figure is drawn rather than by every trial's worker, which imports
    its study's module (and so this one) but never draws: most of a second of each worker's start."""
    import matplotlib

    matplotlib.use("Agg")  # trials and CI have no display
    import matplotlib.pyplot as plt

    return plt


def lines(path: Path, frame: pd.DataFrame, x: str, ys: Sequence[str], group: str, *, title: str,
          logx: bool = False, logy: bool = False, yerr: Sequence[str] | None = None,
          reference: tuple[str, float] | None = None) -> None:
    """One subplot per y, one curve per value of `group`, optional error bars and a reference line (on the first)."""
    fig, axes = _pyplot().subplots(1, len(ys), figsize=(6 * len(ys), 4.5), squeeze=False, layout="constrained")
    for i, (ax, y) in enumerate(zip(axes.flat, ys)):
        for key, part in frame.groupby(group, sort=True):
            part = part.sort_values(x)
            ax.errorbar(part[x], part[y], yerr=part[yerr[i]] if yerr else None, marker="o", capsize=3,
                        label=f"{group}={key}")
        if reference and i == 0:
            ax.axhline(reference[1], color="k", linestyle="--", linewidth=1, label=reference[0])
        ax.set(xlabel=x, ylabel=y)
        if logx:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(path, fig)


def intervals(path: Path, frame: pd.DataFrame, x: str, series: Sequence[tuple[str, str, str, str]], panel: str, *,
              title: str, ylabel: str) -> None:
    """One subplot per value of `panel`; per series (label, mean, low, high columns), a point with its interval at
    each x (a category), the series side by side."""
    keys = sorted(frame[panel].unique())
    fig, axes = _pyplot().subplots(1, len(keys), figsize=(5.5 * len(keys), 4.5), squeeze=False, layout="constrained")
    for ax, key in zip(axes.flat, keys):
        part = frame[frame[panel] == key].reset_index(drop=True)
        for i, (label, mean, low, high) in enumerate(series):
            at = np.arange(len(part)) + (i - (len(series) - 1) / 2) * 0.2
            err = np.vstack([part[mean] - part[low], part[high] - part[mean]]).clip(min=0)
            ax.errorbar(at, part[mean], yerr=err, fmt="o", capsize=4, label=label)
        ax.set_xticks(np.arange(len(part)), part[x].astype(str))
        ax.set(title=f"{panel} = {key:,}" if isinstance(key, (int, np.integer)) else f"{panel} = {key}", xlabel=x,
               ylabel=ylabel)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(path, fig)


def panels(path: Path, frame: pd.DataFrame, panel: str, x: str, y: str, *, yerr: str | None = None,
           title: str = "", ylabel: str | None = None) -> None:
    """One subplot per value of `panel`, y (with error bars) against x."""
    keys = sorted(frame[panel].unique())
    cols = min(len(keys), 3)
    rows = -(-len(keys) // cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False, sharey=True,
                                   layout="constrained")
    for ax, key in zip(axes.flat, keys):
        part = frame[frame[panel] == key].sort_values(x)
        ax.errorbar(part[x], part[y], yerr=part[yerr] if yerr else None, marker="o", capsize=3)
        ax.set(title=f"{panel}={key}", xlabel=x, ylabel=ylabel or y)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title)
    save_figure(path, fig)


def heatmaps(path: Path, frame: pd.DataFrame, row: str, col: str, values: Sequence[str], *, title: str) -> None:
    """A heatmap of the mean of each value over (row, col) cells, one panel per value, two panels a row."""
    n_rows, n_cols = frame[row].nunique(), frame[col].nunique()
    across = min(len(values), 2)
    down = -(-len(values) // across)
    # cells wide enough for their three-decimal numbers
    fig, axes = _pyplot().subplots(down, across, squeeze=False, layout="constrained",
                                   figsize=(across * max(5.0, 2.0 + 0.6 * n_cols), down * max(4.0, 1.5 + 0.4 * n_rows)))
    for ax, value in zip(axes.flat, values):
        table = frame.pivot_table(index=row, columns=col, values=value, aggfunc="mean").sort_index(ascending=False)
        im = ax.imshow(table.to_numpy(), aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(table.columns)), [tick(c) for c in table.columns], rotation=45)
        ax.set_yticks(range(len(table.index)), [tick(r) for r in table.index])
        ax.set(xlabel=col, ylabel=row, title=value)
        for (i, j), v in np.ndenumerate(table.to_numpy()):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(im, ax=ax)
    for ax in list(axes.flat)[len(values):]:
        ax.axis("off")
    fig.suptitle(title)
    save_figure(path, fig)


def fits(path: Path, points: pd.DataFrame, curves: pd.DataFrame, x: str, y: str, group: str, *, title: str,
         xlabel: str, ylabel: str, name: str | None = None, yerr: str | None = None, logx: bool = False,
         logy: bool = False) -> None:
    """Measured points per value of `group` with fitted curves over them: a curve takes its group's colour (black
    for a group without points) and a line style per fit (the curves' "fit" column, named in the legend)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    keys = sorted(points[group].unique())
    # ordered groups (widths, fractions) read best on an ordered colour scale
    colours = dict(zip(keys, plt.cm.viridis(np.linspace(0, 0.9, len(keys)))))
    for key, part in points.groupby(group, sort=True):
        part = part.sort_values(x)
        ax.errorbar(part[x], part[y], yerr=part[yerr] if yerr else None, fmt="o", capsize=3, color=colours[key],
                    label=f"{name or group} = {tick(key)}")
    styles = {fit: ["-", "--", ":", "-."][i % 4] for i, fit in enumerate(curves["fit"].unique())}
    for (fit, key), part in curves.groupby(["fit", group], sort=False):
        part = part.sort_values(x)
        ax.plot(part[x], part[y], styles[fit], color=colours.get(key, "k"), linewidth=1.2)
    for fit, style in styles.items():
        ax.plot([], [], style, color="0.3", label=fit)  # one legend entry per line style
    _log_axes(ax, logx, logy)
    measured = sorted(points[x].unique())
    ax.set_xticks(measured, [tick(v) for v in measured])  # ticks where there are points
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.legend(loc="outside lower center", ncols=4, fontsize=8)  # below the axes: clear of title and data
    save_figure(path, fig)


def tick(value: float) -> str:
    """A number as a short label: 2^-j from 1/16 down as 1/16 ... 1/512 (0.00195312 beside 0.00390625 collide),
    the rest as %g."""
    j = -math.log2(value) if value > 0 else 0.0
    return f"1/{2 ** round(j)}" if j >= 4 and abs(j - round(j)) < 1e-9 else f"{value:g}"


def _log_axes(ax: "matplotlib.axes.Axes", logx: bool, logy: bool) -> None:  # noqa: F821
    """Log scales labelled in plain numbers (1.8, 0.0625), not powers, which a narrow range makes unreadable."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if logy:
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        # within a decade the minor ticks are the only labels; across decades they crowd
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g") if high / low < 10 else NullFormatter())


def choices(path: Path, frame: pd.DataFrame, row: str, col: str, value: str, *, title: str, xlabel: str,
            ylabel: str) -> None:
    """A map of the category `value` takes at each (row, col) cell, each cell coloured and named by it."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    table = frame.pivot(index=row, columns=col, values=value).sort_index(ascending=False)
    names = sorted(frame[value].unique())
    codes = table.apply(lambda c: c.map({n: i for i, n in enumerate(names)})).to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.0, 2 + 0.8 * len(table.columns)), max(3.5, 1.5 + 0.45 * len(table.index))),
                           layout="constrained")
    ax.imshow(codes, cmap=ListedColormap([f"C{i}" for i in range(len(names))]), vmin=-0.5,
              vmax=len(names) - 0.5, aspect="auto")
    ax.set_xticks(range(len(table.columns)), [tick(c) for c in table.columns], rotation=45)
    ax.set_yticks(range(len(table.index)), [tick(r) for r in table.index])
    for (i, j), category in np.ndenumerate(table.to_numpy()):
        ax.text(j, i, category, ha="center", va="center", fontsize=8, color="w")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    save_figure(path, fig)


def marked_lines(path: Path, frame: pd.DataFrame, x: str, y: str, group: str, marks: Sequence[tuple[str, float]],
                 *, title: str, xlabel: str, ylabel: str, name: str | None = None, logx: bool = False,
                 logy: bool = False) -> None:
    """One curve per value of `group`, and a vertical line at each (label, x) of `marks`."""
    fig, ax = _pyplot().subplots(figsize=(8, 4.5), layout="constrained")
    for key, part in frame.groupby(group, sort=True):
        part = part.sort_values(x)
        ax.plot(part[x], part[y], marker="o", markersize=3, label=f"{name or group} = {key:g}")
    for i, (label, at) in enumerate(marks):
        ax.axvline(at, color="k", linestyle=["--", ":", "-."][i % 3], linewidth=1, label=label)
    _log_axes(ax, logx, logy)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.legend(loc="outside lower center", ncols=4, fontsize=8)  # below the axes: clear of title and data
    save_figure(path, fig)


def grouped_bars(path: Path, frame: pd.DataFrame, x: str, group: str, y: str, yerr: str, *, title: str) -> None:
    fig, ax = _pyplot().subplots(figsize=(8, 4.5), layout="constrained")
    groups = sorted(frame[group].unique())
    xs = sorted(frame[x].unique())
    width = 0.8 / len(groups)
    for i, key in enumerate(groups):
        part = frame[frame[group] == key].set_index(x).reindex(xs)
        ax.bar(np.arange(len(xs)) + i * width, part[y], width, yerr=part[yerr], capsize=3, label=str(key))
    ax.set_xticks(np.arange(len(xs)) + width * (len(groups) - 1) / 2, [str(v) for v in xs])
    ax.set(xlabel=x, ylabel=y, title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    save_figure(path, fig)


def grouped_lines(path: Path, frame: pd.DataFrame, panel: str, x: str, y: str, group: str, *, yerr: str, title: str,
                  xlabel: str, ylabel: str) -> None:
    """One subplot per value of `panel`, a line (with error bars) per value of `group`: groups compared in a panel."""
    keys = sorted(frame[panel].unique())
    fig, axes = _pyplot().subplots(1, len(keys), figsize=(5.5 * len(keys), 4.5), squeeze=False, sharey=True,
                                   layout="constrained")
    for ax, key in zip(axes.flat, keys):
        for name, part in frame[frame[panel] == key].groupby(group, sort=True):
            part = part.sort_values(x)
            ax.errorbar(part[x], part[y], yerr=part[yerr], marker="o", capsize=3, label=str(name))
        ax.set(title=f"{panel} = {key}", xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(title=group, fontsize=8)
    fig.suptitle(title)
    save_figure(path, fig)


def interval_points(path: Path, frame: pd.DataFrame, x: str, group: str, measures: Sequence[tuple[str, str, str, str]],
                    *, title: str, xlabel: str) -> None:
    """One subplot per measure (mean, low, high columns and its axis label); per x (a category, in the frame's
    order) a point with its interval for each value of `group`, side by side."""
    xs, groups = list(dict.fromkeys(frame[x])), sorted(frame[group].unique())
    fig, axes = _pyplot().subplots(1, len(measures), figsize=(max(5.5, 1.1 * len(xs) + 3) * len(measures), 4.5),
                                   squeeze=False, layout="constrained")
    for ax, (mean, low, high, label) in zip(axes.flat, measures):
        for i, key in enumerate(groups):
            part = frame[frame[group] == key].set_index(x).reindex(xs)
            at = np.arange(len(xs)) + (i - (len(groups) - 1) / 2) * 0.2
            err = np.vstack([part[mean] - part[low], part[high] - part[mean]]).clip(min=0)
            ax.errorbar(at, part[mean], yerr=err, fmt="o", capsize=4, label=f"{group} = {key}")
        ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs])
        ax.set(xlim=(-0.5, len(xs) - 0.5), xlabel=xlabel, ylabel=label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(path, fig)


def random_search(path: Path, result: dict) -> None:
    """Four panels: generalisation gap, train vs val with the bests, best-so-far vs chance, val histogram."""
    pairs = np.array(result["pairs"] or [[np.nan, np.nan, 0]])   # rows: train, val, nets with that pair
    history = pd.DataFrame(result["history"])
    fig, axes = _pyplot().subplots(2, 2, figsize=(11, 8))
    gap, scatter, best, hist = axes.flat
    gap.hist(pairs[:, 0] - pairs[:, 1], bins=40, weights=pairs[:, 2])
    gap.set(title="generalisation gap of passing nets", xlabel="train acc - val acc", ylabel="nets")
    scatter.scatter(pairs[:, 0], pairs[:, 1], s=4 * np.sqrt(pairs[:, 2]), alpha=0.4, label="passing nets (area: how many)")
    if len(history):
        scatter.scatter(history["train"], history["val"], color="r", s=16, label="new bests")
        best.plot(history["index"], history["val"], "o-", label="best val")
        best.plot(history["index"], history["test"], "s-", label="its test")
        best.plot(history["index"], history["expected_best"], "k--", label="expected best of chance")
    scatter.set(title="train vs val accuracy", xlabel="train acc", ylabel="val acc")
    scatter.legend(fontsize=8)
    best.set_xscale("log")
    best.set(title=f"best so far ({result['evaluated']:,} nets)", xlabel="nets evaluated", ylabel="accuracy")
    best.legend(fontsize=8)
    hist.hist(pairs[:, 1], bins=40, weights=pairs[:, 2])
    hist.set(title=f"val accuracy of the {result['passing']:,} passing nets", xlabel="val acc", ylabel="nets")
    fig.tight_layout()
    save_figure(path, fig)


def per_draw(path: Path, frame: pd.DataFrame, across: pd.DataFrame, x: str, group: str,
          panels: Sequence[tuple[str, Sequence[tuple[str, str]]]], *, xlabel: str, title: str) -> None:
    """A row of subplots per value of `group`, one per (ylabel, [(column, label)]) panel: each column's value at each
    x (a category, such as a draw of data) as points, and its mean (dashed) and 95% interval (band) from `across`."""
    keys = list(dict.fromkeys(frame[group]))
    fig, axes = _pyplot().subplots(len(keys), len(panels), figsize=(5.5 * len(panels), 3.8 * len(keys)),
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
