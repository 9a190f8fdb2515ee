"""scaling: how does a CNN's test loss scale with its width and with the amount of training data?

A grid of CNN width x training-set fraction, seeds per cell. Test loss is fitted as a power law in width (at the
largest fraction), in fraction (at the widest width), and jointly with an irreducible term,
L = E + A·w^−α + B·f^−β (needs 3 widths and 3 fractions), each with bootstrap intervals over seeds (over grid
points where the run has one seed): fits.csv. With the joint law, doubling.csv says at every cell whether doubling
the data or the width lowers the predicted loss more. REPORT.md states the exponents and where more data wins.

    python -m tune_mnist scaling --widths 6 11 23 47 --fractions 1 0.25 0.0625 --seeds 3
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray import tune

from tune_mnist import plots, report as reports, stats
from tune_mnist.data import Mnist, subset
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv
from tune_mnist.population import Member
from tune_mnist.runs import Table
from tune_mnist.settings import (Activation, Common, Fraction, NonEmpty, NonNegative, NonNegativeInt, Optimizer,
                                 Positive, PositiveInt, Seed)
from tune_mnist.studies import Study
from tune_mnist.train import TrainConfig
from tune_mnist.tuning import cluster, runner, trial

NAME = "scaling"
HELP = "CNN width x dataset fraction grid: power laws of test loss in width and data, and where more data wins"
METRICS = ["final_train_loss", "test_loss", "final_train_acc", "test_acc"]
QUESTION = "How does a CNN's test loss scale with its width and with the amount of training data?"
TERMS = {"width": ("A", "alpha"), "fraction": ("B", "beta")}  # each single law's coefficient and exponent in fits.csv
LAWS = ["fit", "held", "points", "resampled", "units", "E", "E_low", "E_high", "A", "alpha", "alpha_low",
        "alpha_high", "B", "beta", "beta_low", "beta_high", "reason"]
LOSS = "test loss (cross-entropy, nats)"


@dataclass
class Settings(Common):
    widths: NonEmpty[PositiveInt]
    fractions: NonEmpty[Fraction]
    seeds: PositiveInt
    master_seed: Seed
    population: PositiveInt
    epochs: PositiveInt
    min_steps: NonNegativeInt
    batch_size: PositiveInt
    optimizer: Optimizer
    lr: Positive
    weight_decay: NonNegative
    activation: Activation


def check(s: Settings) -> None:
    """Nothing beyond what the types say."""


def macs(width: int) -> int:
    """Multiply-adds of one forward pass of the width-w CNN on a 28x28 image."""
    return 28 * 28 * 9 * width + 14 * 14 * 9 * width * 2 * width + 7 * 7 * 2 * width * 10


def trainable(config: dict[str, Any], data: Mnist) -> None:
    """A cell's seeds on the cell's training subset, drawn with the master seed: the same for every seed of the
    cell and nested across fractions, so seeds vary initialisation and data order only."""
    train = TrainConfig(**config["train"])
    n = max(1, round(config["fraction"] * len(data.train_x)))
    epochs = max(train.epochs, math.ceil(config["min_steps"] / math.ceil(n / train.batch_size)))
    net = {"family": "cnn", "channels": [config["width"], 2 * config["width"]], "hidden": 0,
           "activation": config["activation"]}
    members = [Member(net, seed=m["seed"], lr=config["lr"], weight_decay=config["weight_decay"])
               for m in config["members"]]
    cfg = dataclasses.replace(train, epochs=epochs, eval_every=epochs)
    extra = {"n_train": n, "epochs_run": epochs, "compute": macs(config["width"]) * n * epochs}
    trial.train(subset(data, n_train=n, seed=config["master_seed"]), members, cfg, extra)


def seeds_for(s: Settings) -> list[int]:
    rng = random.Random(s.master_seed)
    return [rng.randrange(2**31) for _ in range(s.seeds)]


# ----------------------------------------------------------------------------------------------------------------
# Answers: the power laws (fits.csv) and, with the joint law, which doubling pays more at each cell (doubling.csv)

def finished(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs that trained to the end: what the fits see."""
    return frame[frame["error"].eq("") & frame["test_loss"].notna()]


def bootstrap_units(part: pd.DataFrame) -> tuple[pd.Series | None, str]:
    """What a fit's bootstrap resamples: whole seeds where there are several, else grid points (one seed has no
    seed-to-seed spread to resample)."""
    return (part["seed"], "seeds") if part["seed"].nunique() > 1 else (None, "points")


def estimate(name: str, i: stats.Interval) -> dict[str, float]:
    return {name: i.mean, f"{name}_low": i.low, f"{name}_high": i.high}


def law_row(fit: str, held: str, part: pd.DataFrame, **values: Any) -> dict[str, Any]:
    """A fits.csv row: the fit's values, nan for the terms it lacks."""
    groups, how = bootstrap_units(part)
    units = len(part) if groups is None else int(groups.nunique())
    return {**dict.fromkeys(LAWS, math.nan), "fit": fit, "held": held, "points": len(part), "resampled": how,
            "units": units, "reason": "", **values}


def single_law(part: pd.DataFrame, x: str, held: str) -> dict[str, Any]:
    """Test loss as a power law a·x^−b in `x` (width or fraction), the other held where `held` says."""
    coefficient, exponent = TERMS[x]
    try:
        law = stats.power_law(part[x], part["test_loss"], seeds=bootstrap_units(part)[0])
    except ValueError as e:  # one width or one fraction: no line to fit
        return law_row(x, held, part, reason=str(e))
    return law_row(x, held, part, **{coefficient: law.a}, **estimate(exponent, law.b_interval))


def joint_law(ok: pd.DataFrame) -> stats.JointLaw:
    """L = E + A·w^−α + B·f^−β over every finished run; a grid under 3x3 gives the reason instead."""
    return stats.joint_power_law(ok["width"], ok["fraction"], ok["test_loss"], seeds=bootstrap_units(ok)[0])


def fits(ok: pd.DataFrame, law: stats.JointLaw) -> pd.DataFrame:
    """fits.csv: the power law in width at the largest fraction, in fraction at the widest width, and the joint."""
    f_max, w_max = ok["fraction"].max(), ok["width"].max()
    joint = law_row("joint", "every cell", ok, reason=law.reason)
    if not law.reason:
        joint.update(A=law.A, B=law.B, **estimate("E", law.E_interval), **estimate("alpha", law.alpha_interval),
                     **estimate("beta", law.beta_interval))
    return pd.DataFrame([single_law(ok[ok["fraction"] == f_max], "width", f"fraction = {f_max:g}"),
                         single_law(ok[ok["width"] == w_max], "fraction", f"width = {w_max}"), joint], columns=LAWS)


def doubling(law: stats.JointLaw, ok: pd.DataFrame) -> pd.DataFrame:
    """doubling.csv: at each grid cell, the joint law's loss there, with twice the data and with twice the width,
    and which doubling lowers it more."""
    rows = []
    for (w, f), _ in ok.groupby(["width", "fraction"]):
        better, twice_data, twice_width = law.better_doubling(w, f)
        rows.append({"width": w, "fraction": f, "predicted": float(law.predict(w, f)), "twice_data": twice_data,
                     "twice_width": twice_width, "better": better})
    return pd.DataFrame(rows)


def interval(row: pd.Series, name: str) -> stats.Interval:
    """A fits.csv estimate with its interval, as stats gave it."""
    return stats.Interval(row[name], row[f"{name}_low"], row[f"{name}_high"], int(row["units"]), math.nan)


def laws(fitted: pd.DataFrame) -> dict[str, stats.PowerLaw | stats.JointLaw]:
    """fits.csv's fits that worked, as stats' laws again (to predict and to print)."""
    found: dict[str, stats.PowerLaw | stats.JointLaw] = {}
    for row in (r for _, r in fitted.iterrows() if not r["reason"]):
        if row["fit"] == "joint":
            found["joint"] = stats.JointLaw(row["E"], row["A"], row["alpha"], row["B"], row["beta"],
                                            interval(row, "E"), interval(row, "alpha"), interval(row, "beta"))
        else:
            coefficient, exponent = TERMS[row["fit"]]
            found[row["fit"]] = stats.PowerLaw(row[coefficient], row[exponent], interval(row, exponent))
    return found


def read_fits(run_dir: Path) -> pd.DataFrame:
    """fits.csv, its reason empty (not nan) where a fit worked."""
    return pd.read_csv(run_dir / "fits.csv", dtype={"reason": str}).fillna({"reason": ""})


def curves(fitted: pd.DataFrame, ok: pd.DataFrame, along: str) -> pd.DataFrame:
    """Fitted test loss along `along` (width or fraction) over the grid's range: the joint law at each value of the
    other, and the single law at the other's largest value, where they were fitted."""
    other = "fraction" if along == "width" else "width"
    xs = np.geomspace(ok[along].min(), ok[along].max(), 60)
    found, frames = laws(fitted), []
    if "joint" in found:
        for v in sorted(ok[other].unique()):
            w, f = (xs, v) if along == "width" else (v, xs)
            frames.append(pd.DataFrame({along: xs, other: v, "test_loss": found["joint"].predict(w, f),
                                        "fit": "joint law"}))
    if along in found:
        held = ok[other].max()
        frames.append(pd.DataFrame({along: xs, other: held, "test_loss": found[along].predict(xs),
                                    "fit": f"power law in {along} ({other} {held:g})"}))
    if not frames:  # no fit worked: the points alone
        return pd.DataFrame(columns=[along, other, "test_loss", "fit"])
    return pd.concat(frames, ignore_index=True)


def where_data_wins(doubled: pd.DataFrame) -> str:
    """Where on the grid doubling the data beats doubling the width, as a sentence."""
    wins = doubled[doubled["better"] == "data"]
    if len(wins) in (0, len(doubled)):
        first, second = ("data", "width") if len(wins) else ("width", "data")
        return (f"at every cell of the grid, doubling the {first} lowers the predicted test loss more than doubling "
                f"the {second}")
    # the law's gain from twice the data shrinks as the fraction grows, so at each width data wins up to a fraction
    upto = wins.groupby("width")["fraction"].max().reindex(sorted(doubled["width"].unique()), fill_value=0.0)
    spans = []
    for f, group in itertools.groupby(upto.items(), key=lambda kv: kv[1]):
        widths = [w for w, _ in group]
        at = f"width {widths[0]}" if len(widths) == 1 else f"widths {widths[0]}–{widths[-1]}"
        spans.append(f"at no fraction for {at}" if f == 0 else f"up to fraction {f:g} for {at}")
    return (f"doubling the data lowers the predicted test loss more than doubling the width at {len(wins)} of "
            f"{len(doubled)} grid cells: {'; '.join(spans)}; elsewhere doubling the width helps more")


def answer(fitted: pd.DataFrame, doubled: pd.DataFrame | None) -> str:
    """Two sentences: the exponents with their intervals, and where more data beats a wider net."""
    rows, found = fitted.set_index("fit"), laws(fitted)
    parts = [f"scales as {symbol} = {stated(found[fit].b_interval)} in {fit} ({rows.loc[fit, 'held']})"
             if fit in found else f"fits no power law in {fit} ({rows.loc[fit, 'reason']})"
             for fit, symbol in (("width", "w^−α with α"), ("fraction", "f^−β with β"))]
    joint = rows.loc["joint"]
    if "joint" in found:
        law = found["joint"]
        jointly = (f"jointly, L = E + A·w^−α + B·f^−β over all {joint['points']} runs gives "
                   f"α = {stated(law.alpha_interval)}, β = {stated(law.beta_interval)} and irreducible "
                   f"E = {stated(law.E_interval)}")
    else:
        jointly = f"the joint law L = E + A·w^−α + B·f^−β was not fitted: {joint['reason']}"
    where = (f"With the joint law, {where_data_wins(doubled)}." if doubled is not None
             else "So this run cannot say where more data beats a wider net.")
    return f"Test loss {' and '.join(parts)}; {jointly}. {where}"


def stated(i: stats.Interval) -> str:
    """A bootstrap estimate with its percentile interval (often lopsided, so no ±), or why it has none."""
    if i.high > i.low and not math.isclose(i.low, i.high, rel_tol=1e-9):
        return f"{i.mean:.3g} (95% CI {i.low:.3g} to {i.high:.3g})"
    return f"{i.mean:.3g} (no interval: the points fix the fit exactly)"


def short(row: pd.Series, name: str) -> str:
    """An estimate and its interval for the summary line, as value[low,high]."""
    if row["reason"]:
        return "nan"
    return f"{row[name]:.3g}[{row[f'{name}_low']:.3g},{row[f'{name}_high']:.3g}]"


def summary(frame: pd.DataFrame, fitted: pd.DataFrame, doubled: pd.DataFrame | None) -> dict[str, Any]:
    """The summary line's fields: the exponents, and how many cells data wins."""
    rows = fitted.set_index("fit")
    found = {"runs": len(frame), "errors": int(frame["error"].ne("").sum()),
             "width_alpha": short(rows.loc["width"], "alpha"), "data_beta": short(rows.loc["fraction"], "beta"),
             "joint_alpha": short(rows.loc["joint"], "alpha"), "joint_beta": short(rows.loc["joint"], "beta"),
             "joint_E": short(rows.loc["joint"], "E")}
    if doubled is not None:
        found["data_wins"] = f"{int((doubled['better'] == 'data').sum())}/{len(doubled)}"
    return found


# ----------------------------------------------------------------------------------------------------------------
# Figures and REPORT.md, from the run's CSVs

def draw(ok: pd.DataFrame, fitted: pd.DataFrame, doubled: pd.DataFrame | None, out: Path) -> list[tuple[str, str]]:
    """The run's figures in `out`; (file, caption) of each."""
    largest = ok.loc[ok["fraction"].idxmax()]  # the smaller fractions' counts are rounded
    images = round(float(largest["n_train"] / largest["fraction"]))
    fraction_label = f"training-set fraction f (1 = {images:,} images)"
    width_label = "CNN width w (conv channels w, then 2w)"
    cells = ok.groupby(["width", "fraction"], as_index=False).agg(
        test_loss=("test_loss", "mean"), spread=("test_loss", "std"), compute=("compute", "mean")).fillna(0.0)
    plots.fits(out / "test_loss_vs_fraction.png", cells, curves(fitted, ok, "fraction"), "fraction", "test_loss",
               "width", name="width", yerr="spread", logx=True, logy=True, xlabel=fraction_label, ylabel=LOSS,
               title="Test loss against training data, one colour per width (mean ± std over seeds)")
    plots.fits(out / "test_loss_vs_width.png", cells, curves(fitted, ok, "width"), "width", "test_loss", "fraction",
               name="fraction", yerr="spread", logx=True, logy=True, xlabel=width_label, ylabel=LOSS,
               title="Test loss against width, one colour per training fraction (mean ± std over seeds)")
    drawn = [("test_loss_vs_fraction.png", "Test loss against training fraction with the fitted power laws"),
             ("test_loss_vs_width.png", "Test loss against width with the fitted power laws")]
    if doubled is not None:
        plots.choices(out / "doubling.png", doubled, "width", "fraction", "better", xlabel=fraction_label,
                      ylabel=width_label, title="Which doubling lowers predicted test loss more")
        drawn.append(("doubling.png", "At each cell, the doubling (data or width) the joint law says pays more"))
    plots.heatmaps(out / "heatmaps.png", ok, "width", "fraction", METRICS,
                   title="Model width x training fraction (mean over seeds)")
    cells["log2_compute"] = np.log2(cells["compute"])
    plots.lines(out / "test_loss_vs_compute.png", cells, "log2_compute", ["test_loss"], "width",
                title="Test loss against training compute (log2 multiply-adds)")
    drawn += [("heatmaps.png", "Training and test loss and accuracy over the grid"),
              ("test_loss_vs_compute.png", "Test loss against training compute, one curve per width")]
    return drawn


def report(run_dir: Path, out: Path | None = None) -> None:
    """Figures and REPORT.md into `out` (default the run folder), from the run's CSVs."""
    out = Path(out or run_dir)
    ok = finished(read_table(run_dir / "results.csv"))
    fitted = read_fits(run_dir)
    doubled = read_table(run_dir / "doubling.csv") if (run_dir / "doubling.csv").is_file() else None
    md = reports.for_run(run_dir, "scaling: how does test loss scale with CNN width and training data?", QUESTION)
    md.answer(answer(fitted, doubled))
    how = ("whole seeds (`units` of them; with few seeds the intervals run narrow: read them as a floor)"
           if (fitted["resampled"] == "seeds").all() else
           "grid points (`units` of them; with one seed per cell, seed-to-seed noise is not in the intervals)")
    md.section("Fits", "`fits.csv`: L = E + A·w^−α + B·f^−β, each single law keeping its own term (E and the other "
                       f"term empty). `_low`/`_high`: 95% bootstrap percentile interval, resampling {how}.")
    md.table(fitted)
    if doubled is not None:
        md.section("Where more data beats a wider net", "`doubling.csv`: at each cell (width down, fraction across), "
                   "the doubling that lowers the joint law's predicted test loss more. A doubling from the widest "
                   "width or the largest fraction extrapolates the law beyond the grid.")
        md.table(doubled.pivot(index="width", columns="fraction", values="better").rename(columns="f={:g}".format)
                 .reset_index())
    cells = ok.pivot_table(index="width", columns="fraction", values="test_loss", aggfunc="mean")
    md.section("Test loss per cell", "Mean over seeds, from `results.csv` (width down, fraction across).")
    md.table(cells.rename(columns="f={:g}".format).reset_index())
    md.section("Figures")
    for name, caption in draw(ok, fitted, doubled, out):
        md.figure(out / name, caption)
    md.write(out)


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    space = {"train": TrainConfig.from_settings(s).as_dict(), "lr": s.lr, "weight_decay": s.weight_decay,
             "activation": s.activation, "min_steps": s.min_steps, "master_seed": s.master_seed,
             "width": tune.grid_search(s.widths), "fraction": tune.grid_search(s.fractions)}
    frame = runner.populations(trainable, run_dir, "grid", res, data, space,
                               groups=runner.chunks([{"seed": seed} for seed in seeds_for(s)], s.population),
                               keep=["width", "fraction"], shown=["width", "fraction"],
                               tensorboard=run_dir / "tensorboard", metric="test_loss")
    write_csv(run_dir / "results.csv", frame)
    ok = finished(frame)
    require(len(ok) > 0, "no run of the grid trained to the end: see the error column of results.csv")
    law = joint_law(ok)
    fitted = fits(ok, law)
    write_csv(run_dir / "fits.csv", fitted)
    doubled = None if law.reason else doubling(law, ok)
    if doubled is None:
        (run_dir / "doubling.csv").unlink(missing_ok=True)  # a resumed run's answer must not outlive its fit
    else:
        write_csv(run_dir / "doubling.csv", doubled)
    report(run_dir)
    return summary(frame, fitted, doubled)


def tables(s: Settings) -> list[Table]:
    runs = len(s.widths) * len(s.fractions) * s.seeds
    return [Table("results.csv", ("width", "fraction", "seed", "test_loss", "test_acc", "final_train_loss",
                                  "final_train_acc", "params", "n_train", "compute", "error"),
                  range(runs, runs + 1), finite=("test_loss", "test_acc", "final_train_loss")),
            Table("fits.csv", tuple(LAWS), range(3, 4))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, report, tables)
