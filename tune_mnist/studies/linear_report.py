"""The linear study's answers, from its CSVs: where training stops paying (the plateau of the training loss) and
whether the start matters (each metric's verdict), as tables, figures and REPORT.md.

The step size is chosen on validation loss with seed 0 (grid 1); both answers come from grid 2, which trains at
that step size on fresh seeds 1..n. The plateau is read per run (stats.plateau_start: "not reached" is an answer).
Init scales are compared with the reference scale (the first of the settings) on the same seeds, paired, for test
loss, test accuracy and training loss, all in one family under Holm's correction.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from tune_mnist import plots, report as reports, runs, stats
from tune_mnist.files import read_table, save_figure

QUESTION = "Where does training the linear baseline stop paying, and does its starting point matter?"
RUN = ["grid", "lr", "seed", "init_scale"]  # what sets one run, and so one curve, apart
# the end results compared across init scales: their words, and whether lower is better
METRICS = {"test_loss": ("test loss", True), "test_acc": ("test accuracy", False),
           "final_train_loss": ("training loss", True)}


def chosen_lr(trials: pd.DataFrame) -> float:
    """The step size of grid 1 with the lowest validation loss at the end of the run."""
    by_lr = trials[(trials["grid"] == "step_size") & trials["error"].eq("")]
    return float(by_lr.loc[by_lr["val_loss"].idxmin(), "lr"])


def init_name(scale: float) -> str:
    return "zero init" if scale == 0 else "PyTorch's init" if scale == 1 else f"{scale:g} x PyTorch's init"


# ----------------------------------------------------------------------------------------------------------------
# Where training stops paying

def plateaus(curve: pd.DataFrame, rate: float, window: int) -> pd.DataFrame:
    """plateaus.csv: per run, the first evaluated epoch after which its training loss improves by less than `rate`
    of itself per `window` epochs (empty where not reached), and the relative gain over the run's last window; the
    training loss and test accuracy there and at the end."""
    rows = []
    for key, part in curve.groupby(RUN, sort=False):
        part = part.sort_values("epoch").set_index("epoch")
        x, y = part.index.to_numpy(dtype=float), part["train_loss"].to_numpy()
        at = stats.plateau_start(x, y, rate, window)
        before = np.interp(x[-1] - window, x, y) if x[-1] - window >= x[0] else math.nan
        row = {**dict(zip(RUN, key)), "rate": rate, "window": window, "plateau_epoch": at,
               "reached": at is not None, "last_epoch": int(x[-1]), "last_window_gain": (before - y[-1]) / before,
               "train_loss_last": y[-1], "test_acc_last": part["test_acc"].iloc[-1]}
        row["train_loss_at_plateau"] = part["train_loss"].get(at, math.nan)
        row["test_acc_at_plateau"] = part["test_acc"].get(at, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def plateau_answer(trials: pd.DataFrame, stops: pd.DataFrame, reference: float) -> str:
    """The chosen step size, and where its training loss stops improving by the rate, over grid 2's reference
    runs; "not reached" where it did not within the run."""
    lr = chosen_lr(trials)
    steps = trials[trials["grid"] == "step_size"]
    own = stops[(stops["grid"] == "init") & (stops["init_scale"] == reference)]
    first = own.iloc[0]
    rate, window, end = f"{first['rate'] * 100:g}%", int(first["window"]), int(first["last_epoch"])
    chosen = (f"Step size {lr:g} has the lowest validation loss of the {len(steps)} tried after {end} epochs "
              f"(grid 1, seed 0). At that step size from {init_name(reference)}, on {len(own)} fresh seeds, ")
    reached = own[own["reached"].astype(bool)]
    if reached.empty:
        gain = own["last_window_gain"]
        return (chosen + f"the training loss still improves by {rate} or more per {window} epochs at the end of the "
                f"run: its plateau is not reached within {end} epochs (over the last {window} epochs it fell by "
                f"{gain.min():.2%} to {gain.max():.2%} of itself); train longer to see where it stops.")
    epochs = reached["plateau_epoch"]
    where = (f"from epoch {epochs.min():g} on" if epochs.min() == epochs.max()
             else f"from epoch {epochs.median():g} on (median; seeds from {epochs.min():g} to {epochs.max():g})")
    text = (chosen + f"the training loss improves by less than {rate} of itself per {window} epochs {where}"
            f"{' in every seed' if len(reached) == len(own) else f' in {len(reached)} of {len(own)} seeds'}: "
            f"training stops paying there. From the plateau to epoch {end} the training loss falls from "
            f"{reached['train_loss_at_plateau'].mean():.4g} to {reached['train_loss_last'].mean():.4g} and test "
            f"accuracy moves from {reached['test_acc_at_plateau'].mean():.4f} to {reached['test_acc_last'].mean():.4f} "
            "(means over these seeds).")
    if len(reached) < len(own):
        text += (f" In the other {len(own) - len(reached)} the plateau is not reached within {end} epochs.")
    return text


# ----------------------------------------------------------------------------------------------------------------
# Does the start matter

def init_summary(trials: pd.DataFrame, scales: list[float]) -> pd.DataFrame:
    """init.csv: per init scale of grid 2 (in the settings' order), its seeds and diverged seeds, and each compared
    metric's mean over seeds with its 95% interval."""
    init = trials[trials["grid"] == "init"]
    rows = []
    for scale in scales:
        part = init[init["init_scale"] == scale]
        done = part[part["error"].eq("")]
        row = {"init_scale": scale, "seeds": len(done), "diverged": len(part) - len(done)}
        for metric in METRICS:
            row.update(stats.mean_interval(done[metric]).columns(metric) if len(done) else {metric: math.nan})
        rows.append(row)
    return pd.DataFrame(rows)


def init_tests(trials: pd.DataFrame, scales: list[float]) -> pd.DataFrame:
    """init_tests.csv: each init scale against the first (the reference) on the seeds both trained without error
    (paired t-test), per metric; Holm over every test of the table; power at its strictest step."""
    done = trials[(trials["grid"] == "init") & trials["error"].eq("")]
    reference = scales[0]
    base = done[done["init_scale"] == reference].set_index("seed")
    keys, found = [], []
    for scale in scales[1:]:
        part = done[done["init_scale"] == scale].set_index("seed")
        shared = part.index.intersection(base.index)
        for metric in METRICS:
            with warnings.catch_warnings():  # differences without spread (both sides alike in every seed): no test
                warnings.simplefilter("ignore", RuntimeWarning)
                found.append(stats.paired_test(part.loc[shared, metric], base.loc[shared, metric]))
            keys.append({"init_scale": scale, "reference": reference, "metric": metric})
    return pd.DataFrame([{**k, **stats.strictest_power(c).row()} for k, c in zip(keys, stats.holm_family(found))])


def verdict(row: pd.Series) -> str:
    """better, worse or none: a detected test's direction for the init scale against the reference, by its metric."""
    if not row["detected"]:
        return "none"
    return "worse" if (row["difference"] > 0) == METRICS[row["metric"]][1] else "better"


def sentence(row: pd.Series) -> str:
    words, lower = METRICS[row["metric"]]
    return stats.in_words(stats.Comparison.from_row(row), init_name(row["init_scale"]), init_name(row["reference"]),
                          lower_is_better=lower, metric=words)


def init_answer(tests: pd.DataFrame, summary: pd.DataFrame) -> str:
    """Each metric's verdict on the start, every init scale against the reference; where the metrics disagree."""
    detected = tests[tests["detected"].astype(bool)]
    which = [METRICS[m][0] for m in METRICS if m in set(detected["metric"])]
    opening = (f"The start matters by {', '.join(which)}: a difference from {init_name(tests['reference'].iloc[0])} "
               "is detected there." if which else
               f"No difference from {init_name(tests['reference'].iloc[0])} is detected at n = "
               f"{int(tests['n'].min())} seeds by test loss, test accuracy or training loss (not detected, not shown "
               "equal: each comparison below gives its 95% CI and the difference the run could detect).")
    lines = [opening, ""]
    for metric, (words, _) in METRICS.items():
        lines.append(f"- By {words}: " + "; ".join(sentence(r) for _, r in tests[tests["metric"] == metric].iterrows())
                     + ".")
    for scale, part in tests.groupby("init_scale", sort=False):
        verdicts = {METRICS[r["metric"]][0]: verdict(r) for _, r in part.iterrows()}
        if len(set(verdicts.values())) > 1:
            lines.append(f"\nThe metrics disagree on {init_name(scale)}: " + ", ".join(
                f"{v if v != 'none' else 'no difference detected'} by {words}" for words, v in verdicts.items()) + ".")
    diverged = summary[summary["diverged"] > 0]
    if len(diverged):
        lines.append("\nSeeds diverged at " + "; ".join(f"{init_name(r.init_scale)} ({r.diverged})"
                                                      for r in diverged.itertuples()) + ".")
    return "\n".join(lines)


def method(s: dict, tests: pd.DataFrame) -> str:
    """The Method section: what was compared, on which seeds, how chosen, which tests and correction, what the
    intervals hold, and the power."""
    end, reference = max(s["epoch_counts"]), s["init_scales"][0]
    mde = {m: tests[tests["metric"] == m]["mde"].dropna() for m in METRICS}
    power = "; ".join(f"{METRICS[m][0]} {v.min():.2g}" + (f" to {v.max():.2g}" if v.max() > v.min() else "")
                      for m, v in mde.items() if len(v)) or "not computable at this n"
    rate = f"{s['plateau_rate'] * 100:g}%"
    images = f"{s['train_limit']:,}" if s["train_limit"] else "55,000"
    return (f"Full-batch gradient descent (every step sees all {images} training images) on the 784→10 softmax, "
            f"inputs x − 0.5, {end} epochs each. **Grid 1** trains each of {len(s['step_sizes'])} step sizes from "
            "PyTorch's initialisation with seed 0; the one with the lowest validation loss at the end is chosen. "
            f"**Grid 2** trains, at that step size, seeds 1 to {s['seeds']} at each init scale "
            f"({', '.join(f'{x:g}' for x in s['init_scales'])}): fresh seeds, not the one the step size was chosen "
            "with.\n\n"
            f"**Plateau.** The first evaluated epoch after which the training loss falls by less than {rate} of "
            f"itself over every following window of {s['plateau_window']} epochs (losses between evaluations, every "
            f"{s['eval_every']} epochs, interpolated); not reached when the run's last window still falls by "
            f"{rate} or more. Read for each run; the answer gives grid 2's runs at {init_name(reference)}.\n\n"
            "**The start.** With full batches the data order plays no part, so a seed sets only the initial weights: "
            "seed s at init scale k starts from k times seed s's PyTorch initialisation (zeros at scale 0, the same "
            "for every seed, so zero init has no spread over seeds). Comparing init scales on one seed is therefore "
            "a real pairing: the same initial direction, a different size. Each init scale is compared with "
            f"{init_name(reference)} (scale {reference:g}) by a paired t-test over the seeds both trained without "
            "error, for test loss, test accuracy and the training loss of the final weights on the whole training "
            f"split; all {len(tests)} tests are one family under Holm's correction at 5%. Each metric's verdict is "
            "stated; where they disagree, the answer says so.\n\n"
            "Intervals are 95% t-intervals over seeds: they hold the variation of the initial weights, not that of "
            "data order (there is none), of the test set's sampling (every run sees the same images) or of other "
            "step sizes. A difference not detected is not shown to be absent: the tests detect, with 80% power at "
            f"the Bonferroni level 0.05/{max(len(tests), 1)} (Holm's strictest step) and the observed spread, "
            f"differences of about: {power}.")


# ----------------------------------------------------------------------------------------------------------------
# Figures and REPORT.md

def draw_plateau(path: Path, curve: pd.DataFrame, stops: pd.DataFrame, lr: float, reference: float) -> None:
    """Left: training loss against epochs per step size of grid 1. Right: for grid 2's reference runs, the relative
    gain of the training loss over the next window against the epoch, the rate and the plateaus marked."""
    fig, (loss, gain) = plots.pyplot().subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    for step, part in curve[curve["grid"] == "step_size"].groupby("lr"):
        loss.plot(part["epoch"], part["train_loss"], lw=2.5 if step == lr else 1, label=f"step size {step:g}")
    loss.set(xscale="log", yscale="log", xlabel="epoch (full-batch steps)", ylabel="training loss (nats)",
             title="Grid 1: training loss per step size (seed 0)")
    own = stops[(stops["grid"] == "init") & (stops["init_scale"] == reference)]
    window, rate = int(own["window"].iloc[0]), float(own["rate"].iloc[0])
    ref = curve[(curve["grid"] == "init") & (curve["init_scale"] == reference)]
    for i, (_, part) in enumerate(ref.groupby("seed")):
        x, y = part["epoch"].to_numpy(dtype=float), part["train_loss"].to_numpy()
        starts = x[x + window <= x[-1]]
        ahead = np.interp(starts + window, x, y)
        gain.plot(starts, (y[:len(starts)] - ahead) / y[:len(starts)], color="C0", lw=0.8, alpha=0.6,
                  label=f"seeds at step size {lr:g}" if i == 0 else None)
    gain.axhline(rate, color="k", ls="--", lw=1, label=f"rate {rate * 100:g}% per {window} epochs")
    for i, at in enumerate(own["plateau_epoch"].dropna().unique()):
        gain.axvline(at, color="C3", ls=":", lw=1, label="plateau" if i == 0 else None)
    gain.set(xscale="log", yscale="log", xlabel="epoch", ylabel=f"relative fall over the next {window} epochs",
             title=f"Grid 2, {init_name(reference)}: where the gain falls below the rate")
    for ax in (loss, gain):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    save_figure(path, fig)


def draw(curve: pd.DataFrame, stops: pd.DataFrame, summary: pd.DataFrame, lr: float, reference: float,
         out: Path) -> list[tuple[str, str]]:
    """The run's figures in `out`; (file, caption) of each."""
    draw_plateau(out / "plateau.png", curve, stops, lr, reference)
    panels = pd.concat([summary.assign(metric=words, mean=summary[m], low=summary[f"{m}_low"],
                                       high=summary[f"{m}_high"]) for m, (words, _) in METRICS.items()])
    scale = "init scale (x PyTorch's default)"
    plots.intervals(out / "init.png", panels.dropna(subset=["mean"]).rename(columns={"init_scale": scale}), scale,
                    [("mean over seeds", "mean", "low", "high")], "metric", ylabel="mean over seeds (95% CI)",
                    title=f"End result per init scale at step size {lr:g}")
    steps = curve[curve["grid"] == "step_size"]
    plots.lines(out / "loss_curves.png", steps, "epoch", ["train_loss", "test_loss"], "lr", logx=True,
                title="Linear model: loss per full-batch step size")
    plots.lines(out / "init_curves.png", curve[curve["grid"] == "init"].groupby(
        ["init_scale", "epoch"], as_index=False)[["train_loss", "test_loss"]].mean(), "epoch",
        ["train_loss", "test_loss"], "init_scale", logx=True, title="Linear model: mean loss per init scale")
    return [("plateau.png", "Training loss per step size, and where the chosen step size's gain falls below the rate"),
            ("init.png", "Test loss, test accuracy and training loss per init scale: mean over seeds, 95% intervals"),
            ("loss_curves.png", "Training and test loss against epochs per step size"),
            ("init_curves.png", "Training and test loss against epochs per init scale (mean over seeds)")]


def write(run_dir: Path, out: Path) -> None:
    """Figures and REPORT.md into `out`, from the run's CSVs and run.json."""
    s = runs.read(run_dir)["settings"]
    trials, curve = read_table(run_dir / "trials.csv"), read_table(run_dir / "curves.csv")
    stops, summary = read_table(run_dir / "plateaus.csv"), read_table(run_dir / "init.csv")
    tests = read_table(run_dir / "init_tests.csv")
    lr, reference = chosen_lr(trials), float(s["init_scales"][0])
    md = reports.for_run(run_dir, "linear: where does training the 7,850-parameter baseline stop paying?", QUESTION)
    md.answer(f"{plateau_answer(trials, stops, reference)}\n\n{init_answer(tests, summary)}")
    md.section("Method", method(s, tests))
    md.section("Step sizes", "`plateaus.csv`, grid 1: each step size's plateau (empty: not reached), the relative "
                             "fall of its training loss over the run's last window, and its validation loss.")
    grid1 = stops[stops["grid"] == "step_size"].merge(trials[trials["grid"] == "step_size"][["lr", "val_loss"]],
                                                     on="lr")
    md.table(grid1, ["lr", "plateau_epoch", "last_window_gain", "train_loss_last", "test_acc_last", "val_loss"])
    md.section("Step size x epochs", "`step_size_x_epochs.csv`: each step size's losses at each epoch count.")
    md.table(read_table(run_dir / "step_size_x_epochs.csv"), max_rows=60)
    md.section("Initialisation", f"`init.csv`, grid 2 at step size {lr:g}: per init scale, each metric's mean over "
                                 "seeds with its 95% interval. `init_tests.csv`: each init scale against "
                                 f"{init_name(reference)}, paired by seed (difference: that scale − reference).")
    md.table(summary)
    md.table(tests, ["init_scale", "metric", "difference", "difference_low", "difference_high", "p", "p_adjusted",
                     "detected", "mde", "n"])
    md.section("Plateaus of grid 2", "`plateaus.csv`: each seed and init scale at the chosen step size.")
    md.table(stops[stops["grid"] == "init"], ["seed", "init_scale", "plateau_epoch", "last_window_gain",
                                              "train_loss_at_plateau", "train_loss_last"], max_rows=60)
    md.section("Figures")
    for name, caption in draw(curve, stops, summary, lr, reference, out):
        md.figure(out / name, caption)
    md.write(out)
