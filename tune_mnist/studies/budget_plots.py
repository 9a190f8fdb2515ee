"""The budget study's own figures (plots.py holds the ones studies share)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tune_mnist.files import save_figure
from tune_mnist import plots


def depth_curves(path: Path, depths: pd.DataFrame, reference: tuple[str, float] | None) -> None:
    """Final training loss and test loss against depth k, one curve per P (mean ± std over seeds at each depth's
    chosen lr); a depth that did not train is an open marker, off the curve, at its loss."""
    fig, axes = plots.pyplot().subplots(1, 2, figsize=(12, 4.5), squeeze=False, layout="constrained")
    ks = sorted(depths.loc[depths["k"] > 0, "k"].unique())
    for ax, (y, spread) in zip(axes.flat, (("final_train_loss", "train_spread"), ("test_loss", "test_spread"))):
        for P, part in depths[depths["k"] > 0].groupby("P", sort=True):
            part = part.sort_values("k")
            trained = part[part["trained"]]
            line = ax.errorbar(trained["k"], trained[y], yerr=trained[spread].fillna(0.0), marker="o", capsize=3,
                               label=f"P = {P:,}")
            failed = part[~part["trained"] & part[y].notna()]
            ax.plot(failed["k"], failed[y], "o", mfc="none", color=line[0].get_color(),
                    label=f"P = {P:,}: did not train" if len(failed) else None)
        if reference and y == "final_train_loss":
            ax.axhline(reference[1], color="k", linestyle="--", linewidth=1, label=reference[0])
        ax.set(xlabel="hidden layers k (uniform width m_P(k))", ylabel=y)
        plots.log_axes(ax, True, True)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Loss against depth at a fixed parameter budget (each depth at its best lr; mean ± std over seeds)")
    save_figure(path, fig)


def bars(path: Path, frame: pd.DataFrame, x: str, y: str, panel: str, *, title: str, ylabel: str) -> None:
    """One subplot per value of `panel`, a horizontal bar per x."""
    keys = sorted(frame[panel].unique())
    fig, axes = plots.pyplot().subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False,
                                         layout="constrained")
    for ax, key in zip(axes.flat, keys):
        part = frame[frame[panel] == key].sort_values(y)
        ax.barh(part[x].astype(str), part[y])
        ax.set(title=str(key), xlabel=ylabel)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    save_figure(path, fig)


def front(path: Path, frame: pd.DataFrame, best: pd.DataFrame, x: str, y: str, group: str, *, title: str,
          xlabel: str, ylabel: str) -> None:
    """A point per row, coloured by `group`, and the rows of `best` joined as a front."""
    fig, ax = plots.pyplot().subplots(figsize=(7.5, 5), layout="constrained")
    for key, part in frame.groupby(group, sort=True):
        ax.scatter(part[x], part[y], s=10, alpha=0.5, label=f"{group}={key}")
    ax.step(best[x], best[y], where="post", color="k", linewidth=1.5, label="Pareto front")
    ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(path, fig)
