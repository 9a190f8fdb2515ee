"""The scaling study's answers, from its results.csv: power laws of test loss in width and data, the joint law with
its goodness of fit, twice the data against the next width at equal compute, and the check on the training budget;
as CSVs, figures and REPORT.md. scaling.py trains the grid; this module never imports it.

The grid's cells train at equal epochs (budget "epochs"); the check's at equal steps (budget "steps").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_mnist import laws, report as reports, runs, stats
from tune_mnist.files import read_table
from tune_mnist.studies import scaling_plots

QUESTION = "How does a CNN's test loss scale with its width and with the amount of training data?"
TERMS = {"width": ("A", "alpha"), "fraction": ("B", "beta")}  # each single law's coefficient and exponent
FIT = ["rmse", "lack_of_fit_F", "lack_of_fit_p", "lack_of_fit_df", "pure_error_df", "systematic", "E_at_bound",
       "rejected"]
LAWS = ["fit", "budget", "held", "points", "resampled", "units", "E", "E_low", "E_high", "A", "alpha", "alpha_low",
        "alpha_high", "B", "beta", "beta_low", "beta_high", "reason", *FIT]
TEXT = ["reason", "systematic", "rejected"]
MATCHED = (0.7, 1.4)  # compute ratios that count as equal compute: within about sqrt(2) either way
COMPARED = {"test_loss": True, "test_acc": False}  # the metrics compared at equal compute: is lower better?
COMPARISON = list(stats.Comparison(stats.Interval(0, 0, 0, 1, 0), 0, 0, 0, "", (1,)).row())  # row()'s columns


def finished(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs that trained to the end: what the answers see."""
    return frame[frame["error"].eq("") & frame["test_loss"].notna()]


def grid(frame: pd.DataFrame) -> pd.DataFrame:
    """The grid's runs (equal epochs), without the check's."""
    return frame[frame["budget"] == "epochs"]


def cells(part: pd.DataFrame) -> np.ndarray:
    """Each run's cell, the unit a fit's bootstrap resamples: a cell's seeds move together, so the intervals hold
    the seeds' spread and the law's misfit at the grid's points."""
    return (part["width"].astype(str) + "x" + part["fraction"].astype(str)).to_numpy()


def law_row(fit: str, budget: str, held: str, part: pd.DataFrame, **values: Any) -> dict[str, Any]:
    """A fits.csv row: the fit's values, nan (or "") for what it lacks."""
    return {**dict.fromkeys(LAWS, math.nan), **dict.fromkeys(TEXT, ""), "fit": fit, "budget": budget, "held": held,
            "points": len(part), "resampled": "cells", "units": len(set(cells(part))), "E_at_bound": False,
            **values}


def single_law(part: pd.DataFrame, x: str, held: str, budget: str = "epochs") -> dict[str, Any]:
    """Test loss as a power law a·x^−b in `x` (width or fraction), the other held where `held` says."""
    coefficient, exponent = TERMS[x]
    try:
        law = laws.power_law(part[x], part["test_loss"], seeds=cells(part))
    except ValueError as e:  # one width or one fraction: no line to fit
        return law_row(x, budget, held, part, reason=str(e))
    return law_row(x, budget, held, part, **{coefficient: law.a}, **law.b_interval.columns(exponent))


def joint_row(part: pd.DataFrame, law: laws.JointLaw) -> dict[str, Any]:
    if law.reason:
        return law_row("joint", "epochs", "every cell", part, reason=law.reason, rejected=law.rejected)
    return law_row("joint", "epochs", "every cell", part, A=law.A, B=law.B, **law.E_interval.columns("E"),
                   **law.alpha_interval.columns("alpha"), **law.beta_interval.columns("beta"), rmse=law.rmse,
                   lack_of_fit_F=law.lack_of_fit_F, lack_of_fit_p=law.lack_of_fit_p,
                   lack_of_fit_df=law.lack_of_fit_df, pure_error_df=law.pure_error_df, systematic=law.systematic,
                   E_at_bound=law.E_at_bound, rejected=law.rejected)


def fits(ok: pd.DataFrame, law: laws.JointLaw) -> pd.DataFrame:
    """fits.csv: on the grid, the power law in width at the largest fraction, in fraction at the widest width, and
    the joint law; at each check width, the power law in fraction at equal epochs and at equal steps."""
    main = grid(ok)
    f_max, w_max = main["fraction"].max(), main["width"].max()
    rows = [single_law(main[main["fraction"] == f_max], "width", f"fraction = {f_max:g}"),
            single_law(main[main["width"] == w_max], "fraction", f"width = {w_max}"), joint_row(main, law)]
    for w in sorted(ok.loc[ok["budget"] == "steps", "width"].unique()):
        at = main[main["width"] == w]
        if w != w_max:
            rows.append(single_law(at, "fraction", f"width = {w}"))
        # the largest fraction's cell is the grid's: at equal steps it trains what equal epochs do
        steps = pd.concat([at[at["fraction"] == f_max], ok[(ok["budget"] == "steps") & (ok["width"] == w)]])
        rows.append(single_law(steps, "fraction", f"width = {w}", "steps"))
    return pd.DataFrame(rows, columns=LAWS)


def read_fits(run_dir: Path) -> pd.DataFrame:
    """fits.csv, its text columns "" (not nan) where empty."""
    return pd.read_csv(run_dir / "fits.csv", dtype=dict.fromkeys(TEXT, str)).fillna(dict.fromkeys(TEXT, ""))


def row_of(fitted: pd.DataFrame, fit: str, budget: str = "epochs", held: str | None = None) -> pd.Series:
    """fits.csv's row of a fit (the first: the grid's where a check width repeats it)."""
    rows = fitted[(fitted["fit"] == fit) & (fitted["budget"] == budget)]
    return (rows if held is None else rows[rows["held"] == held]).iloc[0]


def fitted_law(row: pd.Series) -> laws.PowerLaw | laws.JointLaw:
    """A fits.csv row that was fitted, as laws' law again (to predict from)."""
    n = int(row["units"])
    if row["fit"] == "joint":
        return laws.JointLaw(row["E"], row["A"], row["alpha"], row["B"], row["beta"],
                             *(stats.Interval.from_columns(row, name, n) for name in ("E", "alpha", "beta")))
    coefficient, exponent = TERMS[row["fit"]]
    return laws.PowerLaw(row[coefficient], row[exponent], stats.Interval.from_columns(row, exponent, n))


def drawn_laws(fitted: pd.DataFrame) -> dict[str, tuple[str, laws.PowerLaw | laws.JointLaw]]:
    """The grid's fitted laws by fit, each with its figure label."""
    found = {}
    for fit in ("width", "fraction", "joint"):
        row = row_of(fitted, fit)
        if not row["reason"]:
            name = (("joint law (rejected by its fit test)" if row["rejected"] else "joint law") if fit == "joint"
                    else f"power law in {fit} ({row['held']})")
            found[fit] = (name, fitted_law(row))
    return found


def equal_compute(main: pd.DataFrame) -> pd.DataFrame:
    """equal_compute.csv: from each cell (width, fraction), twice the data (the next fraction) against the next
    width, where the two cost about the same compute (their ratio within MATCHED). Per metric of COMPARED, Welch's
    t-test of wider − more data over the cells' seeds (different nets: unpaired), Holm over the pairs; `better`
    names the side that wins beyond noise, else "not detected" ("no test" with one seed)."""
    by_cell = {key: part for key, part in main.groupby(["width", "fraction"])}
    widths, fractions = sorted(main["width"].unique()), sorted(main["fraction"].unique())
    pairs = []
    for w, wider in zip(widths, widths[1:]):
        for f, more in zip(fractions, fractions[1:]):
            data, wide = by_cell.get((w, more)), by_cell.get((wider, f))
            if data is not None and wide is not None:
                ratio = wide["compute"].mean() / data["compute"].mean()
                if MATCHED[0] <= ratio <= MATCHED[1]:
                    pairs.append(({"width": w, "fraction": f, "wider": wider, "more_data": more,
                                   "compute_ratio": ratio}, data, wide))
    rows = []
    for metric, lower in COMPARED.items():
        tests = stats.holm_family([stats.welch_test(wide[metric], data[metric]) for _, data, wide in pairs])
        for (keys, data, wide), c in zip(pairs, tests):
            wins = "width" if (c.difference.mean < 0) == lower else "data"
            better = wins if c.detected else "no test" if math.isnan(c.p) else "not detected"
            rows.append({"metric": metric, **keys, "wider_mean": wide[metric].mean(),
                         "more_data_mean": data[metric].mean(), **c.row(), "better": better})
    columns = ["metric", "width", "fraction", "wider", "more_data", "compute_ratio", "wider_mean", "more_data_mean",
               *COMPARISON, "better"]
    return pd.DataFrame(rows, columns=columns)


def answers(frame: pd.DataFrame) -> dict[str, pd.DataFrame | None]:
    """Every table the report reads, by file name; None for a table this run has not (removed if present)."""
    ok = finished(frame)
    main = grid(ok)
    law = laws.joint_power_law(main["width"], main["fraction"], main["test_loss"], seeds=cells(main))
    frame = frame.assign(residual=math.nan)
    if law.residuals is not None:  # log test loss − log law, the grid's finished runs in their order
        frame.loc[main.index, "residual"] = law.residuals
    matched = None if law.rejected else laws.compute_matched(law, main["width"], main["fraction"], main["compute"])
    return {"results.csv": frame, "fits.csv": fits(ok, law), "equal_compute.csv": equal_compute(main),
            "residual_trend.csv": law.trend, "compute_matched.csv": matched}


# ----------------------------------------------------------------------------------------------------------------
# The answer in words


def stated(i: stats.Interval) -> str:
    """A bootstrap estimate with its percentile interval (often lopsided, so no ±), or why it has none."""
    if i.high > i.low and not math.isclose(i.low, i.high, rel_tol=1e-9):
        return f"{i.mean:.3g} (95% CI {i.low:.3g} to {i.high:.3g})"
    return f"{i.mean:.3g} (no interval: the points fix the fit exactly)"


def single_words(row: pd.Series) -> str:
    if row["reason"]:
        return f"fits no power law in {row['fit']} ({row['held']}: {row['reason']})"
    symbol = "w^−α with α" if row["fit"] == "width" else "f^−β with β"
    return f"scales as {symbol} = {stated(fitted_law(row).b_interval)} in {row['fit']} ({row['held']})"


def joint_words(row: pd.Series) -> str:
    """The joint law: not fitted, rejected (and so no conclusion from it), or its exponents and fit."""
    if row["reason"]:
        return f"The joint law L = E + A·w^−α + B·f^−β was not fitted: {row['reason']}."
    if row["rejected"]:
        return (f"The separable law L = E + A·w^−α + B·f^−β does not fit the grid ({row['rejected']}; rmse of log "
                f"residuals {row['rmse']:.3g}): no conclusion is drawn from it, and it is not used to say where more "
                "data or width pays.")
    quality = (f"lack-of-fit F({int(row['lack_of_fit_df'])}, {int(row['pure_error_df'])}) = "
               f"{row['lack_of_fit_F']:.3g}, p = {row['lack_of_fit_p']:.2g}" if math.isfinite(row["lack_of_fit_p"])
               else "no lack-of-fit test with one seed a cell, and no trend of residuals with width detected")
    quality += f"; rmse of log residuals {row['rmse']:.3g}"
    law = fitted_law(row)
    E = (f"E = 0 at its bound (95% upper limit {row['E_high']:.3g})" if row["E_at_bound"]
         else f"E = {stated(law.E_interval)}")
    return (f"The separable law L = E + A·w^−α + B·f^−β is not rejected by its test of fit ({quality}): "
            f"α = {stated(law.alpha_interval)}, β = {stated(law.beta_interval)}, {E}.")


def counts(part: pd.DataFrame, what: str) -> str:
    found = part["better"].value_counts()
    return (f"twice the data gives the {what} at {found.get('data', 0)} of {len(part)} cells, the next width at "
            f"{found.get('width', 0)}, and no difference is detected at "
            f"{found.get('not detected', 0) + found.get('no test', 0)}")


def compute_words(table: pd.DataFrame) -> str:
    """The measured answer at equal compute: how often each side wins, by test loss and by test accuracy, and
    where the two metrics name opposite winners."""
    loss, acc = (table[table["metric"] == m].reset_index(drop=True) for m in COMPARED)
    if loss.empty:
        return ("No two cells of the grid cost about the same compute (next width against twice the data), so the "
                "run cannot say which pays more: the widths must step by about √2")
    seeds = int(loss["n"].min())
    mde = loss["mde"].median()
    power = (f"; the median difference detectable with 80% power before the correction is {mde:.2g} nats"
             if math.isfinite(mde) else "")
    text = (f"At about equal compute (the next width costs {loss['compute_ratio'].min():.2f} to "
            f"{loss['compute_ratio'].max():.2f} times what twice the data does), {counts(loss, 'lower test loss')} "
            f"(Welch t-tests over {seeds} seeds a side, Holm over {len(loss)}{power}); by test accuracy, "
            f"{counts(acc, 'higher accuracy')}")
    opposite = loss[(loss["better"].isin(["data", "width"])) & (acc["better"].isin(["data", "width"]))
                    & (loss["better"] != acc["better"])]
    where = ", ".join(f"width {r.width} at fraction {r.fraction:g}" for r in opposite.itertuples())
    return text + (f"; the two metrics name opposite winners at {where}" if where else
                   "; where both detect a winner, loss and accuracy agree")


def matched_words(matched: pd.DataFrame | None) -> str:
    if matched is None:
        return ""
    data = int((matched["better"] == "data").sum())
    return (f" By the law, twice the compute is better spent on data than on width at {data} of {len(matched)} cells "
            f"(at {int(matched['outside_grid'].sum())} of them, one choice or both extrapolate past the grid).")


def check_words(fitted: pd.DataFrame, ok: pd.DataFrame) -> str:
    """The check: at each check width, the data exponent at equal steps beside the one at equal epochs."""
    check = ok[ok["budget"] == "steps"]
    parts = []
    for w in sorted(check["width"].unique()):
        held = f"width = {w}"
        epochs, steps = row_of(fitted, "fraction", "epochs", held), row_of(fitted, "fraction", "steps", held)
        if epochs["reason"] or steps["reason"]:
            continue
        parts.append(f"at width {w}, β = {stated(fitted_law(steps).b_interval)} at equal steps against "
                     f"{stated(fitted_law(epochs).b_interval)} at equal epochs")
    if not parts:
        return ""
    return (f" Check on the budget (every fraction trained {largest_steps(ok):,} steps, as the largest does, "
            f"rounded up to whole epochs): {'; '.join(parts)}.")


def answer(ok: pd.DataFrame, fitted: pd.DataFrame, compared: pd.DataFrame, matched: pd.DataFrame | None) -> str:
    main = grid(ok)
    seeds = main.groupby(["width", "fraction"]).size()
    design = (f"Over {len(seeds)} cells ({main['width'].nunique()} widths x {main['fraction'].nunique()} fractions, "
              f"{seeds.min()}{'' if seeds.min() == seeds.max() else f'–{seeds.max()}'} seeds a cell, equal epochs), "
              "test loss ")
    singles = " and ".join(single_words(row_of(fitted, fit)) for fit in TERMS)
    return (f"{design}{singles}. {joint_words(row_of(fitted, 'joint'))}{matched_words(matched)}\n\n"
            f"{compute_words(compared)}.{check_words(fitted, ok)}")


def largest_steps(ok: pd.DataFrame) -> int:
    """The steps the grid's largest fraction trains (at every width): what each of the check's cells trains."""
    main = grid(ok)
    return int(main.loc[main["fraction"] == main["fraction"].max(), "steps"].iloc[0])


def method(ok: pd.DataFrame, settings: dict[str, Any]) -> str:
    widths = sorted(ok.loc[ok["budget"] == "steps", "width"].unique())
    times = "once" if settings["epochs"] == 1 else f"{settings['epochs']} times"
    check = (f"The check trains width{'s' if len(widths) > 1 else ''} {', '.join(map(str, widths))} again at equal "
             f"steps: every fraction {largest_steps(ok):,} steps (rounded up to whole epochs), what the largest "
             "fraction trains, so that more distinct images are compared at one training length. "
             if widths else "No check at equal steps was run. ")
    return (
        f"**Grid.** CNN widths x nested subsets of the training split (drawn with the master seed), "
        f"{settings['seeds']} seeds a cell; a cell's seeds train together as one population and differ in "
        "initialisation and data order only. **Budget: equal epochs.** Every cell passes over its own images "
        f"{times}, so twice the data trains twice the steps and costs twice the compute (forward "
        f"multiply-adds x images seen; the next width costs about twice as much too). {check}"
        "**Fits.** Power laws in width (at the largest fraction) and in fraction (at the widest width) by least "
        "squares in logs; the joint law L = E + A·w^−α + B·f^−β fitted robustly (Huber loss of log residuals "
        "from a grid of starts, as Hoffmann et al. 2022). Intervals: 95% bootstrap percentile intervals resampling "
        "the cells, each with all its seeds: they hold the seeds' spread and the law's misfit at the grid's "
        "points, and run narrow with few cells. Goodness of fit: the lack-of-fit F-test of the law's least-squares "
        "fit against the spread between seeds of a cell, at 5% (with one seed a cell, the residuals' trend with "
        "width per fraction, Holm over fractions); a law it rejects is reported as such and no conclusion is drawn "
        "from it. **Data or width at equal compute** is measured, not read off a law: from each cell, twice the "
        "data (the next fraction) against the next width, where their compute ratio lies within "
        f"{MATCHED[0]:g} to {MATCHED[1]:g}; Welch's t-test over seeds (the two cells' nets are different nets, "
        "so unpaired), Holm over the pairs, for test loss and for test accuracy separately. The intervals hold "
        "seed-to-seed variation at the cells' fixed data subsets; they do not hold the draw of the subsets (one "
        "nested draw) or the choice of hyperparameters (one learning rate for every width and fraction)."
    )


# ----------------------------------------------------------------------------------------------------------------
# The summary line, the figures and REPORT.md, from the run's CSVs


def short(row: pd.Series, name: str) -> str:
    """An estimate and its interval for the summary line, as value[low,high]."""
    if row["reason"]:
        return "nan"
    return f"{row[name]:.3g}[{row[f'{name}_low']:.3g},{row[f'{name}_high']:.3g}]"


def summary(found: dict[str, pd.DataFrame | None]) -> dict[str, Any]:
    """The summary line's fields: the exponents, the joint law's fate, and the equal-compute counts."""
    frame, fitted, compared = found["results.csv"], found["fits.csv"], found["equal_compute.csv"]
    joint = row_of(fitted, "joint")
    loss = compared[compared["metric"] == "test_loss"]["better"].value_counts()
    return {"runs": len(frame), "errors": int(frame["error"].ne("").sum()),
            "width_alpha": short(row_of(fitted, "width"), "alpha"),
            "data_beta": short(row_of(fitted, "fraction"), "beta"),
            "joint_law": "not fitted" if joint["reason"] else "rejected" if joint["rejected"] else "not rejected",
            "lack_of_fit_p": f"{joint['lack_of_fit_p']:.2g}",
            "equal_compute_data_wins": f"{loss.get('data', 0)}/{loss.sum()}",
            "equal_compute_width_wins": f"{loss.get('width', 0)}/{loss.sum()}"}


def optional(run_dir: Path, name: str) -> pd.DataFrame | None:
    return read_table(run_dir / name) if (run_dir / name).is_file() else None


def report(run_dir: Path, out: Path | None = None) -> None:
    """Figures and REPORT.md into `out` (default the run folder), from the run's CSVs."""
    out = Path(out or run_dir)
    ok = finished(read_table(run_dir / "results.csv"))
    fitted, compared = read_fits(run_dir), read_table(run_dir / "equal_compute.csv")
    trend, matched = optional(run_dir, "residual_trend.csv"), optional(run_dir, "compute_matched.csv")
    md = reports.for_run(run_dir, "scaling: how does test loss scale with CNN width and training data?", QUESTION)
    md.answer(answer(ok, fitted, compared, matched))
    md.section("Method", method(ok, runs.read(run_dir)["settings"]))
    md.section("Data or width at equal compute", "`equal_compute.csv`, test loss: from each cell (width, fraction), "
               "the next width (`wider`) against twice the data (`more_data`); `difference` = wider − more data "
               "with its 95% interval, `p_adjusted` Holm over the pairs, `better` the side that wins beyond noise.")
    md.table(compared[compared["metric"] == "test_loss"], ["width", "fraction", "wider", "more_data", "compute_ratio",
             "wider_mean", "more_data_mean", "difference", "difference_low", "difference_high", "p_adjusted", "mde",
             "better"])
    md.section("Fits", "`fits.csv`: each single law keeps its own term (E and the other term empty); `units` "
               "cells resampled by the bootstrap; the joint row's goodness of fit in `rmse` (of log residuals), "
               "`lack_of_fit_F`/`_p` and `rejected`.")
    md.table(fitted, ["fit", "budget", "held", "points", "units", "E", "E_low", "E_high", "alpha", "alpha_low",
                      "alpha_high", "beta", "beta_low", "beta_high", "rmse", "lack_of_fit_p", "rejected", "reason"])
    if trend is not None:
        md.section("Residuals of the joint law", "`residual_trend.csv`: per fraction, the slope of the log "
                   "residuals against log width (a law that fits leaves none), its p and Holm-adjusted p; each "
                   "run's residual is `residual` in `results.csv`.")
        md.table(trend)
    if matched is not None:
        md.section("Where the law would spend twice the compute", "`compute_matched.csv` (`laws.compute_matched`): "
                   "at each cell, the law's loss with the compute doubled on data or on width.")
        md.table(matched)
    means = ok.pivot_table(index=["budget", "width"], columns="fraction", values="test_loss", aggfunc="mean")
    md.section("Test loss per cell", "Mean over seeds, from `results.csv` (budget and width down, fraction across).")
    md.table(means.rename(columns="f={:g}".format).reset_index())
    md.section("Figures")
    for name, caption in scaling_plots.draw(ok, drawn_laws(fitted), compared, matched, out):
        md.figure(out / name, caption)
    md.write(out)
