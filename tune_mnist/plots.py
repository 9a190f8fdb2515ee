"""The figures more than one study draws, written atomically as PNG, and what every study's figures share (pyplot,
log axes). Notebooks call these same functions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tune_mnist.files import save_figure


def pyplot():
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
    fig, axes = pyplot().subplots(1, len(ys), figsize=(6 * len(ys), 4.5), squeeze=False, layout="constrained")
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
    fig, axes = pyplot().subplots(1, len(keys), figsize=(5.5 * len(keys), 4.5), squeeze=False, layout="constrained")
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


def log_axes(ax: "matplotlib.axes.Axes", logx: bool, logy: bool) -> None:  # noqa: F821
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
