"""The corruption study's answers, from its CSVs: each activation's lr, its retention (accuracy at p as a share of
clean accuracy), absolute accuracy and test loss over p, and the activations compared by paired tests; as CSVs,
figures and REPORT.md.

Every activation of a family trains on the same seeds (initialisation, data order, corruption noise), so a seed is
a pair: two activations are compared by a paired t-test over their shared seeds, every pair of a family and measure
in one Holm family.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_mnist import plots, runs, stats
from tune_mnist.files import read_table, save_figure, write_csv
from tune_mnist.report import for_run

FAMILIES = ("mlp", "cnn")
KEPT = 0.9  # a seed's threshold p is the largest p that keeps this share of its clean accuracy
QUESTION = "Which activation keeps its accuracy best as training pixels are corrupted, for MLPs and for CNNs?"
# measure: (what it is, lower is better); each a per-seed number from the seed's curve over p (area / p range)
MEASURES = {"retention": ("mean share of clean accuracy kept over p", False),
            "accuracy": ("mean test accuracy over p", False),
            "loss": ("mean test loss over p", True)}
LEVEL = 0.95
# stats.Comparison's columns that name other things here: its Holm family's size, its test's p
RENAMED = {"family": "tests", "p": "p_value"}
COMPARED = ["family", "measure", "a", "b", "difference", "difference_low", "difference_high", "p_value",
            "p_adjusted", "tests", "detected", "mde", "mde_first", "n", "n_b", "unit", "test"]
RANKED = ["family", "measure", "rank", "activation", "mean", "mean_low", "mean_high", "n", "beaten", "not_separated"]


# ----------------------------------------------------------------------------------------------------------------
# Tables

def choose_lr(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per family, activation and lr of the sweep (p = 0): mean validation accuracy with its interval over the
    sweep's seeds, mean validation loss, diverged seeds; `chosen` the lr with the highest mean validation
    accuracy among those where no seed diverged (ties: the lower validation loss), `at_edge` where it is the
    sweep's smallest or largest lr. A family and activation with no such lr has none chosen."""
    rows = []
    for (family, act), arm in sweep.groupby(["family", "activation"], sort=False):
        edges = (arm["lr"].min(), arm["lr"].max())
        part = []
        for lr, nets in arm.groupby("lr"):
            ok = nets[nets["error"].eq("")]
            acc = stats.mean_interval(ok["val_acc"]).columns("val_acc") if len(ok) else dict.fromkeys(
                ("val_acc", "val_acc_low", "val_acc_high"), math.nan)
            part.append({"family": family, "activation": act, "lr": lr, "seeds": len(nets), **acc,
                         "val_loss": ok["val_loss"].mean(), "diverged": len(nets) - len(ok)})
        eligible = [r for r in part if r["diverged"] == 0]
        best = max(eligible, key=lambda r: (r["val_acc"], -r["val_loss"])) if eligible else None
        for r in part:
            r["chosen"] = r is best
            r["at_edge"] = r is best and r["lr"] in edges
        rows += part
    return pd.DataFrame(rows)


def per_repeat(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per family, activation and seed with a run at every p: its clean (p = 0) accuracy; its retention, accuracy
    and loss (the mean over p of test accuracy / clean accuracy, of test accuracy, of test loss: the area under
    the curve through the p run, linear in between, over the p range); the largest p keeping KEPT of its clean
    accuracy (`threshold`)."""
    keys = ["family", "activation", "seed"]
    ok = per_run[per_run["error"].eq("")].set_index([*keys, "p"])
    grid = sorted(per_run["p"].unique())
    # a failed run leaves its seed a curve over other p: not comparable
    acc = ok["test_acc"].unstack("p").reindex(columns=grid).dropna()
    loss = ok["test_loss"].unstack("p").reindex(index=acc.index, columns=grid)
    clean = acc[0.0].to_numpy()
    rows = [{"clean_acc": c, "retention": stats.area_under(grid, a / c), "accuracy": stats.area_under(grid, a),
             "loss": stats.area_under(grid, l), "threshold": stats.threshold_crossing(grid, a, KEPT * c)}
            for a, l, c in zip(acc.to_numpy(), loss.to_numpy(), clean)]
    lr = ok["lr"].groupby(level=keys).first()
    out = pd.DataFrame(rows, index=acc.index, columns=["clean_acc", *MEASURES, "threshold"]).join(lr).reset_index()
    out = out.sort_values("family", key=lambda f: f.map(FAMILIES.index), kind="stable")  # as the settings order them
    return out[["family", "activation", "seed", "lr", "clean_acc", *MEASURES, "threshold"]]


def summarise(per_run: pd.DataFrame, repeats: pd.DataFrame) -> pd.DataFrame:
    """Per family, activation and p, over the seeds of per_repeat: test accuracy, retention and test loss, each
    with its 95% interval."""
    keys = ["family", "activation", "seed"]
    nets = per_run[per_run["error"].eq("")].merge(repeats[[*keys, "clean_acc"]], on=keys)
    nets = nets.assign(retention=nets["test_acc"] / nets["clean_acc"])
    values = ("test_acc", "retention", "test_loss")
    rows = [{"family": f, "activation": a, "p": p, "repeats": len(part),
             **{k: v for column in values for k, v in stats.mean_interval(part[column]).columns(column).items()}}
            for (f, a, p), part in nets.groupby(["family", "activation", "p"], sort=False)]
    return pd.DataFrame(rows, columns=["family", "activation", "p", "repeats",
                                       *[f"{v}{end}" for v in values for end in ("", "_low", "_high")]])


def robustness(repeats: pd.DataFrame) -> pd.DataFrame:
    """Per family and activation: its lr, seeds, clean accuracy and threshold p, with 95% intervals over seeds."""
    rows = [{"family": f, "activation": a, "lr": part["lr"].iloc[0], "repeats": len(part),
             **stats.mean_interval(part["clean_acc"]).columns("clean_acc"),
             **stats.mean_interval(part["threshold"]).columns("threshold")}
            for (f, a), part in repeats.groupby(["family", "activation"], sort=False)]
    return pd.DataFrame(rows, columns=["family", "activation", "lr", "repeats", "clean_acc", "clean_acc_low",
                                       "clean_acc_high", "threshold", "threshold_low", "threshold_high"])


def by_seed(repeats: pd.DataFrame, family: str, measure: str) -> pd.DataFrame:
    """A family's values of a measure, a row per seed, a column per activation, best mean first."""
    wide = repeats[repeats["family"] == family].pivot(index="seed", columns="activation", values=measure)
    return wide[wide.mean().sort_values(ascending=MEASURES[measure][1], kind="stable").index]


def families(frame: pd.DataFrame) -> list[str]:
    return [f for f in FAMILIES if f in set(frame["family"])]


def comparisons(repeats: pd.DataFrame) -> pd.DataFrame:
    """Per family and measure, every pair of activations (a before b in the best-first order): a − b, paired by
    seed, Holm-corrected over the family's pairs of that measure (stats.Comparison's columns), and `mde_first`, the
    difference detectable at the first Holm step's level (5% over the pairs), where the correction is strictest."""
    rows = []
    for family in families(repeats):
        for measure in MEASURES:
            wide = by_seed(repeats, family, measure)
            values = {name: wide[name].to_numpy() for name in wide.columns}
            pairs = [(a, b) for i, a in enumerate(wide.columns) for b in wide.columns[i + 1:]]
            tested = []
            for a, b in pairs:
                shared = ~np.isnan(values[a]) & ~np.isnan(values[b])
                tested.append(stats.paired_test(values[a][shared], values[b][shared], level=LEVEL))
            for (a, b), c in zip(pairs, stats.holm_family(tested)):
                first = stats.strictest_power(c).mde
                row = {RENAMED.get(k, k): v for k, v in c.row().items()}
                rows.append({**row, "family": family, "measure": measure, "a": a, "b": b, "mde_first": first})
    return pd.DataFrame(rows, columns=COMPARED)


def comparison(row: Any) -> stats.Comparison:
    """A row of comparisons.csv as the stats.Comparison it was written from."""
    return stats.Comparison.from_row({**row, **{k: row[v] for k, v in RENAMED.items()}})


def ranking(repeats: pd.DataFrame, compared: pd.DataFrame) -> pd.DataFrame:
    """Per family and measure, the activations best first with their mean and 95% interval over seeds; `beaten`
    where the best is better beyond noise (its pair detected), else `not_separated` (the best itself included)."""
    rows = []
    for family in families(repeats):
        for measure in MEASURES:
            wide = by_seed(repeats, family, measure)
            pairs = compared[(compared["family"] == family) & (compared["measure"] == measure)]
            beaten = set(pairs[(pairs["a"] == wide.columns[0]) & pairs["detected"]]["b"])
            for rank, name in enumerate(wide.columns, 1):
                i = stats.mean_interval(wide[name].dropna())
                rows.append({"family": family, "measure": measure, "rank": rank, "activation": name,
                             **i.columns("mean"), "n": i.n, "beaten": name in beaten,
                             "not_separated": name not in beaten})
    return pd.DataFrame(rows, columns=RANKED)


def write_answers(run_dir: Path, per_run: pd.DataFrame) -> dict[str, Any]:
    """The answers' CSVs from stage 2's rows, then REPORT.md; the summary line's fields."""
    repeats = per_repeat(per_run)
    compared = comparisons(repeats)
    ranked = ranking(repeats, compared)
    write_csv(run_dir / "results_summary.csv", summarise(per_run, repeats))
    write_csv(run_dir / "robustness.csv", robustness(repeats))
    write_csv(run_dir / "comparisons.csv", compared)
    write_csv(run_dir / "ranking.csv", ranked)
    report(run_dir)
    clean = per_run[per_run["error"].eq("") & per_run["p"].eq(0)]["test_acc"].mean()
    found = {"runs": len(per_run), "errors": int(per_run["error"].ne("").sum()),
             "mean_test_acc_at_p0": round(float(clean), 4)}
    for family, part in ranked[ranked["measure"].eq("retention")].groupby("family", sort=False):
        best = part.iloc[0]
        found[f"{family}_most_robust"] = best["activation"]
        found[f"{family}_retention"] = f"{best['mean']:.4f}[{best['mean_low']:.4f},{best['mean_high']:.4f}]"
        others = part.iloc[1:]
        found[f"{family}_not_separated"] = ",".join(others[others["not_separated"]]["activation"]) or "none"
    return found


# ----------------------------------------------------------------------------------------------------------------
# Words

def answer(family: str, ranked: pd.DataFrame, compared: pd.DataFrame) -> str:
    """A family's answer: the best by retention and each other activation against it in words; the absolute
    accuracy's and the test loss's verdicts beside; whether the three name the same activation first."""
    def rows(measure: str) -> pd.DataFrame:
        return ranked[ranked["measure"] == measure]

    def interval(row: Any) -> stats.Interval:
        return stats.Interval.from_columns(row, "mean", int(row["n"]), "seeds")

    best = rows("retention").iloc[0]
    text = (f"**{family.upper()}.** {best['activation']} has the highest retention ({MEASURES['retention'][0]}): "
            f"{interval(best)}.")
    if len(rows("retention")) == 1:
        return text + " It is the only activation of this family in the run."
    pairs = compared[(compared["measure"] == "retention") & (compared["a"] == best["activation"])]
    text += " Against the others: " + "; ".join(
        stats.in_words(comparison(r), r["a"], r["b"], metric="retention") for _, r in pairs.iterrows()) + "."
    for measure in ("accuracy", "loss"):
        part = rows(measure)
        lead, others = part.iloc[0], part.iloc[1:]
        worse, close = others[others["beaten"]]["activation"], others[~others["beaten"]]["activation"]
        text += (f" By {MEASURES[measure][0]}, {lead['activation']} comes first at {interval(lead)}; worse beyond "
                 f"noise: {', '.join(worse) or 'none'}; not separated from it at n = {int(lead['n'])} seeds: "
                 f"{', '.join(close) or 'none'}.")
    bests = {m: rows(m).iloc[0]["activation"] for m in MEASURES}
    if len(set(bests.values())) == 1:
        return text + " Retention, accuracy and loss name the same activation first."
    text += " The measures name different activations first (" + ", ".join(f"{m}: {a}" for m, a in bests.items())
    text += "; loss and accuracy disagree)" if bests["accuracy"] != bests["loss"] else ")"
    return text + (". Retention divides out each activation's clean accuracy, which the absolute measures keep; a "
                   "first place not separated from the next is no verdict.")


def seeds(first: int, count: int) -> str:
    return f"{first}" if count == 1 else f"{first}–{first + count - 1}"


def method(s: dict[str, Any], lrs: pd.DataFrame, compared: pd.DataFrame) -> str:
    """The Method section: what was compared on which seeds, how the lr was chosen, the test, the correction,
    what the intervals cover, and the power."""
    chosen = lrs[lrs["chosen"]]
    given = ", ".join(f"{r.family} {r.activation} {r.lr:g}" for r in chosen.itertuples())
    if len(set(s["lrs"])) > 1:
        lr = (f"**Learning rate.** Each family and activation trained at p = 0 with every lr of "
              f"{', '.join(f'{v:g}' for v in s['lrs'])} on seeds {seeds(s['repeats'], s['sweep_seeds'])}, used for "
              f"nothing else; the lr with the highest mean validation accuracy was chosen (`lr.csv`): {given}.")
        if chosen["at_edge"].any():
            lr += (" At the edge of the sweep, where a wider sweep might find a better lr: "
                   f"{', '.join(f'{r.family} {r.activation}' for r in chosen[chosen['at_edge']].itertuples())}.")
        missing = [f"{f} {a}" for (f, a), arm in lrs.groupby(["family", "activation"], sort=False)
                   if not arm["chosen"].any()]
        if missing:
            lr += f" Every lr diverged on some seed for {', '.join(missing)}: left out of stage 2."
    else:
        lr = f"**Learning rate.** One lr was given, not tuned: {given}."
    tests = (f"**Estimates.** Seeds {seeds(0, s['repeats'])} at every p, with the chosen lr. Every activation of a "
             "family trains on these same seeds, so each pair of activations is compared by a paired t-test over "
             "their shared seeds; all pairs of a family and measure are one family of tests, Holm-corrected at the "
             f"{1 - LEVEL:.0%} level. Retention is the primary measure; accuracy and loss are each a Holm family "
             "of their own.")
    power = [f"{family} {measure} {part['mde'].median():.2g}"
             + (f" ({part['mde_first'].median():.2g} at the first Holm step)" if len(part) > 1 else "")
             for (family, measure), part in compared.groupby(["family", "measure"], sort=False)]
    if power:
        tests += (f" **Power:** with n = {s['repeats']} seeds, the paired tests detect differences of about (median "
                  f"over pairs, 80% power at the 5% level): {'; '.join(power)}.")
    epochs = f"{s['epochs']} epoch{'s' * (s['epochs'] != 1)}"
    return "\n\n".join([
        "**Compared.** Per family, the activations' retention (each seed's test accuracy at p divided by its clean, "
        f"p = 0, accuracy, averaged over p = {', '.join(f'{p:g}' for p in sorted(s['p']))} as the area under the "
        "curve over the p range), its absolute test accuracy and its test loss averaged the same way. Every net "
        f"trains {epochs} ({s['optimizer']}, batch {s['batch_size']}); an activation that learns more slowly is "
        "judged at that budget. The test images are never corrupted and never used to choose anything.",
        lr, tests,
        "**Intervals.** 95% Student t over seeds, the independent unit: they cover what varies with the seed "
        "(initialisation, data order, corruption noise) at this lr and budget; not the uncertainty of the lr "
        "choice, other widths or training lengths, nor the sampling of the 10,000 test images every net shares."])


# ----------------------------------------------------------------------------------------------------------------
# Figures

def curves(path: Path, summary: pd.DataFrame) -> None:
    """Retention (top) and test accuracy (bottom) against p, a panel per family, a line per activation (95% CI)."""
    shown = families(summary)
    fig, axes = plots.pyplot().subplots(2, len(shown), figsize=(5.5 * len(shown), 8), squeeze=False, sharex=True,
                                         layout="constrained")
    for col, family in enumerate(shown):
        for row, (value, label) in enumerate((("retention", "retention (accuracy / clean accuracy)"),
                                              ("test_acc", "test accuracy"))):
            ax = axes[row, col]
            for name, part in summary[summary["family"] == family].groupby("activation", sort=True):
                part = part.sort_values("p")
                err = np.vstack([part[value] - part[f"{value}_low"], part[f"{value}_high"] - part[value]])
                ax.errorbar(part["p"], part[value], yerr=err.clip(min=0), marker="o", capsize=3, label=name)
            ax.set(title=f"{family}", xlabel="corruption probability p of each training pixel", ylabel=label)
            ax.grid(alpha=0.3)
            ax.legend(title="activation", fontsize=8)
    fig.suptitle("Retention and test accuracy against p (mean and 95% CI over seeds)")
    save_figure(path, fig)


def points(path: Path, ranked: pd.DataFrame) -> None:
    """A panel per measure: each activation's mean and 95% interval over seeds, the families side by side."""
    shown, names = families(ranked), list(dict.fromkeys(ranked["activation"]))
    fig, axes = plots.pyplot().subplots(1, len(MEASURES), figsize=(max(5.0, 1.1 * len(names) + 3) * len(MEASURES),
                                                                    4.5), squeeze=False, layout="constrained")
    for ax, (measure, (label, _)) in zip(axes.flat, MEASURES.items()):
        for i, family in enumerate(shown):
            part = ranked[(ranked["family"] == family) & (ranked["measure"] == measure)].set_index("activation")
            part = part.reindex(names)
            at = np.arange(len(names)) + (i - (len(shown) - 1) / 2) * 0.2
            err = np.vstack([part["mean"] - part["mean_low"], part["mean_high"] - part["mean"]]).clip(min=0)
            ax.errorbar(at, part["mean"], yerr=err, fmt="o", capsize=4, label=family)
        ax.set_xticks(np.arange(len(names)), names)
        ax.set(xlim=(-0.5, len(names) - 0.5), xlabel="activation", ylabel=label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle("Each measure per activation: mean and 95% CI over seeds")
    save_figure(path, fig)


def sweep_lines(path: Path, lrs: pd.DataFrame) -> None:
    """The sweep: mean validation accuracy at p = 0 against lr, a panel per family, the chosen lr marked."""
    shown = families(lrs)
    fig, axes = plots.pyplot().subplots(1, len(shown), figsize=(5.5 * len(shown), 4.5), squeeze=False,
                                         layout="constrained")
    for ax, family in zip(axes.flat, shown):
        for i, (name, part) in enumerate(lrs[lrs["family"] == family].groupby("activation", sort=True)):
            part = part.sort_values("lr")
            ax.plot(part["lr"], part["val_acc"], marker="o", color=f"C{i}", label=name)
            ax.plot(part[part["chosen"]]["lr"], part[part["chosen"]]["val_acc"], "*", ms=14, color=f"C{i}")
        ax.set_xscale("log")
        ax.set(title=family, xlabel="learning rate", ylabel="validation accuracy at p = 0 (mean over seeds)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(title="activation (star: chosen)", fontsize=8)
    fig.suptitle("Stage 1: each activation's lr, chosen on validation accuracy at p = 0")
    save_figure(path, fig)


# ----------------------------------------------------------------------------------------------------------------
# REPORT.md

def cells(summary: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean ± 95% half-width of a value per family and activation (rows) and p (columns)."""
    half = (summary[f"{value}_high"] - summary[f"{value}_low"]) / 2
    table = summary.assign(cell=[f"{m:.4f} ± {h:.4f}" for m, h in zip(summary[value], half)])
    table = table.pivot(index=["family", "activation"], columns="p", values="cell")
    table = table.set_axis([f"p = {p:g}" for p in table.columns], axis=1).reset_index()
    return table.sort_values("family", key=lambda f: f.map(FAMILIES.index), kind="stable")


def report(run_dir: Path, out: Path | None = None) -> None:
    """Figures and REPORT.md into `out` (default the run folder), from the run's CSVs and run.json."""
    out = Path(out or run_dir)
    s = runs.read(run_dir)["settings"]
    summary, ranked = read_table(run_dir / "results_summary.csv"), read_table(run_dir / "ranking.csv")
    compared, lrs = read_table(run_dir / "comparisons.csv"), read_table(run_dir / "lr.csv")
    md = for_run(run_dir, "corruption: which activation keeps its accuracy as training pixels are corrupted?",
                 QUESTION)
    md.answer("\n\n".join(answer(f, part, compared[compared["family"] == f])
                          for f, part in ranked.groupby("family", sort=False))
              or "No seed trained at every p, so nothing can be compared.")
    md.section("Method", method(s, lrs, compared))
    md.section("Ranking", "`ranking.csv`: per family and measure, the activations best first, mean and 95% interval "
                          "over seeds; `beaten`: the best is better beyond noise (its paired test, Holm-corrected).")
    md.table(ranked, max_rows=60)
    md.section("Comparisons", "`comparisons.csv`: every pair a − b (a first in the ranking), paired by seed; "
                              "`p_adjusted` Holm over the family's pairs of that measure; `mde` the difference "
                              "detectable with 80% power at 5%, `mde_first` at the first Holm step.")
    md.table(compared[[c for c in COMPARED if c not in ("n_b", "unit", "test")]], max_rows=60)
    md.section("Learning rate", "`lr.csv`: stage 1, each lr at p = 0, validation accuracy over the sweep's seeds.")
    md.table(lrs, max_rows=60)
    md.section("Robustness", f"`robustness.csv`: per seed, the largest p keeping {KEPT:.0%} of its clean accuracy "
                             "(`threshold`, read off the curve through the p run, linear in between); mean and 95% "
                             "interval over seeds.")
    md.table(read_table(run_dir / "robustness.csv"))
    if len(summary):
        for value, text in (("retention", "Retention"), ("test_acc", "Test accuracy")):
            md.section(text, "`results_summary.csv`: mean ± 95% half-width over seeds; the test set is never "
                             "corrupted.")
            md.table(cells(summary, value))
    md.section("Figures")
    if len(summary):
        curves(out / "retention_vs_p.png", summary)
        md.figure(out / "retention_vs_p.png", "Retention and test accuracy against p, a line per activation")
    if len(ranked):
        points(out / "ranking.png", ranked)
        md.figure(out / "ranking.png", "Retention, accuracy and loss over p per activation, the families side by side")
    if "val_acc" in lrs and lrs["val_acc"].notna().any():
        sweep_lines(out / "lr_sweep.png", lrs)
        md.figure(out / "lr_sweep.png", "Stage 1: validation accuracy at p = 0 against lr, the chosen lr starred")
    md.write(out)
