"""The scaling study's figures, from its CSVs: the fitted laws over the measured cells, the joint law's residuals,
which side wins at equal compute, the budget check, and the grid's heatmaps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_mnist import plots
from tune_mnist.files import save_figure

LOSS = "test loss (cross-entropy, nats)"
METRICS = ["final_train_loss", "test_loss", "final_train_acc", "test_acc"]  # the heatmaps' panels


def tick(value: float) -> str:
    """A number as a short label: 2^-j from 1/16 down as 1/16 ... 1/512 (0.00195312 beside 0.00390625 collide),
    the rest as %g."""
    j = -math.log2(value) if value > 0 else 0.0
    return f"1/{2 ** round(j)}" if j >= 4 and abs(j - round(j)) < 1e-9 else f"{value:g}"


def fitted_curves(path: Path, points: pd.DataFrame, curves: pd.DataFrame, x: str, y: str, group: str, *, title: str,
                  xlabel: str, ylabel: str, yerr: str | None = None) -> None:
    """Measured points per value of `group` with fitted curves over them, log-log: a curve takes its group's colour
    (black for a group without points) and a line style per fit (the curves' "fit" column, named in the legend)."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    keys = sorted(points[group].unique())
    # ordered groups (widths, fractions) read best on an ordered colour scale
    colours = dict(zip(keys, plt.cm.viridis(np.linspace(0, 0.9, len(keys)))))
    for key, part in points.groupby(group, sort=True):
        part = part.sort_values(x)
        ax.errorbar(part[x], part[y], yerr=part[yerr] if yerr else None, fmt="o", capsize=3, color=colours[key],
                    label=f"{group} = {tick(key)}")
    styles = {fit: ["-", "--", ":", "-."][i % 4] for i, fit in enumerate(curves["fit"].unique())}
    for (fit, key), part in curves.groupby(["fit", group], sort=False):
        part = part.sort_values(x)
        ax.plot(part[x], part[y], styles[fit], color=colours.get(key, "k"), linewidth=1.2)
    for fit, style in styles.items():
        ax.plot([], [], style, color="0.3", label=fit)  # one legend entry per line style
    plots.log_axes(ax, True, True)
    measured = sorted(points[x].unique())
    ax.set_xticks(measured, [tick(v) for v in measured])  # ticks where there are points
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.legend(loc="outside lower center", ncols=4, fontsize=8)  # below the axes: clear of title and data
    save_figure(path, fig)


def choices(path: Path, frame: pd.DataFrame, row: str, col: str, value: str, *, title: str, xlabel: str,
            ylabel: str) -> None:
    """A map of the category `value` takes at each (row, col) cell, each cell coloured and named by it."""
    plt = plots.pyplot()
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
        ax.text(j, i, "" if pd.isna(category) else category, ha="center", va="center", fontsize=8, color="w")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    save_figure(path, fig)


def heatmaps(path: Path, frame: pd.DataFrame, row: str, col: str, values: list[str], *, title: str) -> None:
    """A heatmap of the mean of each value over (row, col) cells, one panel per value, two panels a row."""
    n_rows, n_cols = frame[row].nunique(), frame[col].nunique()
    across = min(len(values), 2)
    down = -(-len(values) // across)
    # cells wide enough for their three-decimal numbers
    fig, axes = plots.pyplot().subplots(down, across, squeeze=False, layout="constrained",
                                        figsize=(across * max(5.0, 2.0 + 0.6 * n_cols),
                                                 down * max(4.0, 1.5 + 0.4 * n_rows)))
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


def curves(fitted: dict[str, tuple[str, Any]], main: pd.DataFrame, along: str) -> pd.DataFrame:
    """Fitted test loss along `along` (width or fraction) over the grid's range: the joint law at each value of the
    other, and the single law in `along` at the other's largest value, where `fitted` has them (by fit: its label
    and a law of tune_mnist.laws)."""
    other = "fraction" if along == "width" else "width"
    xs = np.geomspace(main[along].min(), main[along].max(), 60)
    frames = []
    if "joint" in fitted:
        name, law = fitted["joint"]
        for v in sorted(main[other].unique()):
            w, f = (xs, v) if along == "width" else (v, xs)
            frames.append(pd.DataFrame({along: xs, other: v, "test_loss": law.predict(w, f), "fit": name}))
    if along in fitted:
        name, law = fitted[along]
        frames.append(pd.DataFrame({along: xs, other: main[other].max(), "test_loss": law.predict(xs), "fit": name}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[along, other, "test_loss", "fit"])


def cell_means(runs: pd.DataFrame, by: list[str], values: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of each value per cell (std 0 where a cell has one seed)."""
    grouped = runs.groupby(by, as_index=False)
    return grouped[values].mean().merge(
        grouped[values].std().fillna(0.0).rename(columns={v: f"{v}_sd" for v in values}), on=by)


def draw(ok: pd.DataFrame, fitted: dict[str, tuple[str, Any]], compared: pd.DataFrame,
         matched: pd.DataFrame | None, out: Path) -> list[tuple[str, str]]:
    """The run's figures in `out`; (file, caption) of each. `fitted`: the laws to draw, as `curves` takes them."""
    main = ok[ok["budget"] == "epochs"]
    largest = main.loc[main["fraction"].idxmax()]  # the smaller fractions' counts are rounded
    images = round(float(largest["n_train"] / largest["fraction"]))
    fraction_label = f"training-set fraction f (1 = {images:,} images)"
    width_label = "CNN width w (conv channels w, then 2w)"
    cells = cell_means(main, ["width", "fraction"], ["test_loss", "compute", "residual"])
    for along, other, label in (("fraction", "width", fraction_label), ("width", "fraction", width_label)):
        fitted_curves(out / f"test_loss_vs_{along}.png", cells, curves(fitted, main, along), along, "test_loss",
                      other, yerr="test_loss_sd", xlabel=label, ylabel=LOSS,
                      title=f"Test loss against {along}, one colour per {other} (mean ± std over seeds)")
    drawn = [("test_loss_vs_fraction.png", "Test loss against training fraction with the fitted laws"),
             ("test_loss_vs_width.png", "Test loss against width with the fitted laws")]
    if cells["residual"].notna().any():
        plots.lines(out / "residuals.png", cells, "width", ["residual"], "fraction", yerr=["residual_sd"], logx=True,
                    reference=("the law", 0.0), title="Joint law: log test loss − log law against width, "
                    "one curve per fraction (mean ± std over seeds)")
        drawn.append(("residuals.png", "The joint law's residuals: a law that fits leaves flat curves around 0"))
    loss = compared[compared["metric"] == "test_loss"]
    if len(loss):
        choices(out / "equal_compute.png", loss, "width", "fraction", "better", xlabel=fraction_label,
                ylabel=width_label, title="Measured at equal compute: twice the data or the next width?")
        drawn.append(("equal_compute.png", "From each cell, which side lowers test loss beyond noise: twice the "
                                           "data or the next width"))
    if matched is not None:
        choices(out / "compute_matched.png", matched, "width", "fraction", "better", xlabel=fraction_label,
                ylabel=width_label, title="By the joint law: twice the compute spent on data or on width")
        drawn.append(("compute_matched.png", "Where the joint law would spend twice the compute"))
    check_widths = ok.loc[ok["budget"] == "steps", "width"].unique()
    if len(check_widths):
        both = ok[ok["width"].isin(check_widths)]
        full = both[(both["budget"] == "epochs") & (both["fraction"] == main["fraction"].max())]
        both = pd.concat([both, full.assign(budget="steps")])  # the largest fraction's cell serves both budgets
        named = both.assign(series=[f"width {w}, equal {b}" for w, b in zip(both["width"], both["budget"])])
        series = cell_means(named, ["series", "fraction"], ["test_loss"])
        plots.lines(out / "budget_check.png", series, "fraction", ["test_loss"], "series", yerr=["test_loss_sd"],
                    logx=True, logy=True, title="Check: test loss against data at equal epochs and at equal steps")
        drawn.append(("budget_check.png", "The check: test loss against training fraction at equal epochs and at "
                                          "equal steps"))
    heatmaps(out / "heatmaps.png", main, "width", "fraction", METRICS,
             title="Model width x training fraction (mean over seeds)")
    cells["log2_compute"] = np.log2(cells["compute"])
    plots.lines(out / "test_loss_vs_compute.png", cells, "log2_compute", ["test_loss"], "width",
                title="Test loss against training compute (log2 forward multiply-adds x images seen)")
    drawn += [("heatmaps.png", "Training and test loss and accuracy over the grid"),
              ("test_loss_vs_compute.png", "Test loss against training compute, one curve per width")]
    return drawn
