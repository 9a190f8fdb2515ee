"""linear: the 7,850-parameter softmax baseline (784 -> 10), full-batch SGD on x/255 - 0.5.

Grid 1, step size x epochs: where does training stop paying? The step size with the lowest final training loss is
chosen; its curve's plateau is the first epoch from which the training loss falls by at most --plateau-tolerance
(relative) to the end (plateaus.csv, every run's). Grid 2, seeds x init scales at the chosen step size: does the end
result depend on the start? Per init scale, test loss and accuracy over seeds with 95% intervals, and whether the
best init scale's test loss beats each other's beyond noise (init.csv). Figures and REPORT.md state the answers.

    python -m tune_mnist linear --step-sizes 0.1 0.5 1 2 --epoch-counts 50 200 800
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from annotated_types import Gt, Lt
from ray import tune

from tune_mnist import plots, report as reports, stats
from tune_mnist.data import Mnist
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv
from tune_mnist.population import Member
from tune_mnist.runs import Table
from tune_mnist.settings import Common, NonEmpty, NonNegative, Positive, PositiveInt
from tune_mnist.studies import Study
from tune_mnist.train import TrainConfig
from tune_mnist.tuning import cluster, runner, trial

NAME = "linear"
HELP = "the 7,850-parameter softmax baseline: step size x epochs, then seeds x init scales"
QUESTION = "Where does training the linear baseline stop paying, and does its starting point matter?"
RUN = ["grid", "lr", "seed", "init_scale"]  # what sets one run, and so one curve, apart
LOSS = "training loss (cross-entropy, nats)"


@dataclass
class Settings(Common):
    step_sizes: NonEmpty[Positive]
    epoch_counts: NonEmpty[PositiveInt]
    eval_every: PositiveInt
    init_scales: NonEmpty[NonNegative]
    seeds: PositiveInt
    plateau_tolerance: Annotated[float, Gt(0), Lt(1)]


def check(s: Settings) -> None:
    """Nothing beyond what the types say."""


def trainable(config: dict[str, Any], data: Mnist) -> None:
    (entry,) = config["members"]
    net = {"family": "mlp", "widths": [], "init_scale": entry["init_scale"]}
    trial.train(data, [Member(net, seed=entry["seed"], lr=entry["lr"])], TrainConfig(**config["train"]))


def curves(grid: tune.ResultGrid, label: str) -> pd.DataFrame:
    """Every reported point of every trial (epoch, losses, accuracies) with its config."""
    frames = []
    for result in grid:
        if result.error is None and result.metrics_dataframe is not None:
            frame = result.metrics_dataframe[["epoch", "train_loss", "val_loss", "test_loss", "train_acc", "test_acc"]]
            (entry,) = result.config["members"]
            frames.append(frame.assign(grid=label, lr=entry["lr"], seed=entry["seed"], init_scale=entry["init_scale"]))
    return pd.concat(frames, ignore_index=True)


def at_counts(curve: pd.DataFrame, counts: list[int]) -> pd.DataFrame:
    """The step size x epochs table: each trial's point at the last report not after each count."""
    rows = []
    for lr, part in curve.groupby("lr"):
        for n in counts:
            upto = part[part["epoch"] <= n]
            if len(upto):
                rows.append({"lr": lr, "epochs": n, **upto.iloc[-1][["train_loss", "test_loss", "test_acc"]].to_dict()})
    return pd.DataFrame(rows)


def grid(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources, name: str,
         runs: list[dict[str, Any]]) -> tuple[pd.DataFrame, tune.ResultGrid]:
    """One trial a run (its lr, seed and init scale), its rows and its Tune results (for the curves)."""
    epochs = max(s.epoch_counts)
    train = TrainConfig.from_settings(s, epochs=epochs, eval_every=min(s.eval_every, epochs), optimizer="sgd",
                                      batch_size=0, inputs="center")
    space = {"train": train.as_dict(), "grid": name, "members": tune.grid_search([[r] for r in runs])}
    results = runner.run(trainable, run_dir, name, res, data, param_space=space, shown=["lr", "seed", "init_scale"],
                         tensorboard=run_dir / "tensorboard" / name, hparams=["grid"])
    return runner.member_rows(runner.rows(results, ["grid", "members"])), results


# ----------------------------------------------------------------------------------------------------------------
# Answers: the chosen step size and where its training stops paying (plateaus.csv); whether the init matters
# (init.csv)

def chosen_lr(trials: pd.DataFrame) -> float:
    """The step size of grid 1 with the lowest final training loss."""
    by_lr = trials[trials["grid"] == "step_size"]
    return float(by_lr.loc[by_lr["final_train_loss"].idxmin(), "lr"])


def plateaus(curve: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """plateaus.csv: per run, the first evaluated epoch from which its training loss falls by at most `tolerance`
    (relative) to the end, and the evaluated epoch before it (0 when it is the first)."""
    rows = []
    for key, part in curve.groupby(RUN, sort=False):
        part = part.sort_values("epoch").reset_index(drop=True)
        i = int(part.index[part["epoch"] == stats.plateau(part["epoch"], part["train_loss"], tolerance)][0])
        rows.append({**dict(zip(RUN, key)), "tolerance": tolerance, "plateau_epoch": int(part["epoch"][i]),
                     "evaluated_before": int(part["epoch"][i - 1]) if i else 0,
                     "last_epoch": int(part["epoch"].iloc[-1]), "train_loss_at_plateau": part["train_loss"][i],
                     "train_loss_last": part["train_loss"].iloc[-1]})
    return pd.DataFrame(rows)


def init_table(trials: pd.DataFrame) -> pd.DataFrame:
    """init.csv: per init scale of grid 2, test loss (ranked, best first) and accuracy over seeds with 95% intervals,
    whether the best's test loss beats each beyond noise (Holm-corrected Welch t-tests), and seeds that diverged."""
    init = trials[trials["grid"] == "init"]
    done = init[init["error"].eq("")]
    with warnings.catch_warnings():  # zero init trains the same for every seed: scipy warns of no spread
        warnings.simplefilter("ignore", RuntimeWarning)
        ranked = stats.rank_with_ties(done, "test_loss", "init_scale", lower_is_better=True).drop(columns="stderr")
        acc = stats.rank_with_ties(done, "test_acc", "init_scale")[["init_scale", "mean", "low", "high"]]
    ranked = ranked.rename(columns={"mean": "test_loss", "low": "test_loss_low", "high": "test_loss_high",
                                    "n": "seeds"})
    acc = acc.rename(columns={"mean": "test_acc", "low": "test_acc_low", "high": "test_acc_high"})
    diverged = init.groupby("init_scale")["error"].agg(lambda e: int(e.ne("").sum())).rename("diverged")
    table = ranked.merge(acc, on="init_scale").merge(diverged.reset_index(), on="init_scale", how="outer")
    return table.sort_values("test_loss", na_position="last", kind="stable").reset_index(drop=True)


def init_matters(table: pd.DataFrame) -> str:
    """yes where an init scale ends beyond noise of the best (or diverges), no where none does, unknown with one
    seed (no noise to judge by)."""
    if table["diverged"].gt(0).any() or table["beaten"].fillna(False).astype(bool).any():
        return "yes"
    return "unknown" if table["seeds"].min() < 2 else "no"


def plateau_answer(trials: pd.DataFrame, stops: pd.DataFrame) -> str:
    """The chosen step size, and the epoch past which its training loss improves by less than the tolerance."""
    lr = chosen_lr(trials)
    steps = trials[trials["grid"] == "step_size"]
    row = stops[(stops["grid"] == "step_size") & (stops["lr"] == lr)].iloc[0]
    others = stops[stops["grid"] == "init"]["plateau_epoch"]
    epochs = f"epoch {others.min()}" if others.min() == others.max() else f"epochs {others.min()}–{others.max()}"
    spread = f"; grid 2's {len(others)} runs at this step size (seeds x init scales) plateau at {epochs}"
    chosen = (f"Step size {lr:g} gives the lowest final training loss of the {len(steps)} tried "
              f"({steps['final_train_loss'].min():.4g})")
    if row["plateau_epoch"] == row["last_epoch"]:
        return (f"{chosen}, and its training loss still improved by more than {row['tolerance'] * 100:g}% after epoch "
                f"{row['evaluated_before']}: training paid to the end ({row['last_epoch']} epochs), so train longer "
                f"to see where it stops{spread}.")
    return (f"{chosen}; past epoch {row['plateau_epoch']} its training loss improves by less than "
            f"{row['tolerance'] * 100:g}% (from {row['train_loss_at_plateau']:.4g} to {row['train_loss_last']:.4g} at "
            f"epoch {row['last_epoch']}), so training stops paying between the evaluated epochs "
            f"{row['evaluated_before']} and {row['plateau_epoch']}{spread}.")


def init_answer(table: pd.DataFrame) -> str:
    """Whether the initialisation changes the end result, with the intervals behind the verdict."""
    def stated(row: pd.Series, name: str) -> str:
        i = stats.Interval(row[name], row[f"{name}_low"], row[f"{name}_high"], int(row["seeds"]), math.nan)
        return str(i) if i.high > i.low or i.n == 1 else f"{i.mean:.4g} (the same for all {i.n} seeds)"

    done = table[table["seeds"].notna()]
    scales = "; ".join(f"init scale {r['init_scale']:g}: test loss {stated(r, 'test_loss')}, accuracy "
                       f"{stated(r, 'test_acc')}" for _, r in done.iterrows())
    diverged = table[table["diverged"] > 0]
    broke = (" Seeds diverged at init scale " + ", ".join(f"{s:g}" for s in diverged["init_scale"]) + "."
             if len(diverged) else "")
    verdict = init_matters(table)
    if verdict == "unknown":
        return f"With one seed per init scale there is no noise to judge the differences by ({scales}).{broke}"
    beaten = done[done["beaten"].fillna(False).astype(bool)]
    behind = (f"init scale {', '.join(f'{s:g}' for s in beaten['init_scale'])} ends behind the best "
              f"(init scale {done['init_scale'].iloc[0]:g}) beyond noise" if len(beaten)
              else "no init scale's test loss differs from the best's beyond noise")
    opening = "The starting point matters" if verdict == "yes" else "The starting point does not matter"
    return f"{opening}: {behind} (Holm-corrected Welch t-tests on test loss over seeds; {scales}).{broke}"


# ----------------------------------------------------------------------------------------------------------------

def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    by_lr, first = grid(s, run_dir, data, res, "step_size",
                        [{"lr": lr, "seed": 0, "init_scale": 1.0} for lr in s.step_sizes])
    require(by_lr["final_train_loss"].notna().any(), "every step size diverged: try smaller --step-sizes")
    best_lr = chosen_lr(by_lr)
    by_init, second = grid(s, run_dir, data, res, "init", [{"lr": best_lr, "seed": seed, "init_scale": scale}
                                                           for seed in range(s.seeds) for scale in s.init_scales])
    require(by_init["error"].eq("").any(), f"every run of the init grid diverged at step size {best_lr:g}")
    trials = pd.concat([by_lr, by_init], ignore_index=True)
    curve = pd.concat([curves(first, "step_size"), curves(second, "init")], ignore_index=True)
    stops, init = plateaus(curve, s.plateau_tolerance), init_table(trials)
    write_csv(run_dir / "trials.csv", trials)
    write_csv(run_dir / "curves.csv", curve)
    write_csv(run_dir / "step_size_x_epochs.csv", at_counts(curve[curve["grid"] == "step_size"], s.epoch_counts))
    write_csv(run_dir / "plateaus.csv", stops)
    write_csv(run_dir / "init.csv", init)
    report(run_dir)
    best = trials.loc[trials["final_train_loss"].idxmin()]
    chosen = stops[(stops["grid"] == "step_size") & (stops["lr"] == best_lr)].iloc[0]
    return {"trials": len(trials), "errors": int(trials["error"].ne("").sum()), "best_lr": best_lr,
            "plateau_epoch": int(chosen["plateau_epoch"]), "init_matters": init_matters(init),
            "min_train_loss": round(float(best["final_train_loss"]), 4),
            "test_loss": round(float(best["test_loss"]), 4), "train_acc": round(float(best["final_train_acc"]), 4),
            "test_acc": round(float(best["test_acc"]), 4)}


# ----------------------------------------------------------------------------------------------------------------
# Figures and REPORT.md, from the run's CSVs

def draw(curve: pd.DataFrame, stops: pd.DataFrame, init: pd.DataFrame, lr: float,
         out: Path) -> list[tuple[str, str]]:
    """The run's figures in `out`; (file, caption) of each."""
    steps = curve[curve["grid"] == "step_size"]
    chosen = stops[(stops["grid"] == "step_size") & (stops["lr"] == lr)].iloc[0]
    mark = f"plateau of step size {lr:g} ({chosen['tolerance'] * 100:g}%): epoch {chosen['plateau_epoch']}"
    plots.marked_lines(out / "plateau.png", steps, "epoch", "train_loss", "lr", [(mark, chosen["plateau_epoch"])],
                       name="step size", logy=True, xlabel="epoch (full-batch SGD steps)", ylabel=LOSS,
                       title="Where training stops paying: training loss per step size")
    intervals = pd.concat([init.assign(metric=label, mean=init[m], low=init[f"{m}_low"], high=init[f"{m}_high"])
                           for m, label in (("test_loss", "test loss (nats)"), ("test_acc", "test accuracy"))])
    scale = "init scale (x PyTorch's default)"
    plots.intervals(out / "init.png", intervals.dropna(subset=["mean"]).rename(columns={"init_scale": scale}), scale,
                    [("mean over seeds", "mean", "low", "high")], "metric", ylabel="mean over seeds (95% CI)",
                    title=f"End result per init scale at step size {lr:g}")
    plots.lines(out / "loss_curves.png", steps, "epoch", ["train_loss", "test_loss"], "lr", logx=True,
                title="Linear model: loss per full-batch step size")
    plots.lines(out / "init_curves.png", curve[curve["grid"] == "init"].groupby(
        ["init_scale", "epoch"], as_index=False)[["train_loss", "test_loss"]].mean(), "epoch",
        ["train_loss", "test_loss"], "init_scale", logx=True, title="Linear model: mean loss per init scale")
    return [("plateau.png", "Training loss against epochs per step size, the chosen one's plateau marked"),
            ("init.png", "Test loss and accuracy per init scale: mean over seeds with 95% intervals"),
            ("loss_curves.png", "Training and test loss against epochs per step size"),
            ("init_curves.png", "Training and test loss against epochs per init scale (mean over seeds)")]


def report(run_dir: Path, out: Path | None = None) -> None:
    """Figures and REPORT.md into `out` (default the run folder), from the run's CSVs."""
    out = Path(out or run_dir)
    trials, curve = read_table(run_dir / "trials.csv"), read_table(run_dir / "curves.csv")
    stops, init = read_table(run_dir / "plateaus.csv"), read_table(run_dir / "init.csv")
    lr = chosen_lr(trials)
    md = reports.for_run(run_dir, "linear: where does training the 7,850-parameter baseline stop paying?", QUESTION)
    md.answer(f"{plateau_answer(trials, stops)}\n\n{init_answer(init)}")
    md.section("Step sizes", "`plateaus.csv`, grid 1: each step size's plateau (the first evaluated epoch from which "
                             "its training loss falls by at most the tolerance to the end).")
    md.table(stops[stops["grid"] == "step_size"].drop(columns=["grid", "seed", "init_scale"]))
    md.section("Step size x epochs", "`step_size_x_epochs.csv`: each step size's losses at each epoch count.")
    md.table(read_table(run_dir / "step_size_x_epochs.csv"))
    md.section("Initialisation", f"`init.csv`, grid 2 at step size {lr:g}: per init scale, best test loss first; "
                                 "`p_holm` compares each with the best, `beaten` when beyond noise at 95%.")
    md.table(init)
    md.section("Plateaus of grid 2", "`plateaus.csv`: each seed and init scale at the chosen step size.")
    md.table(stops[stops["grid"] == "init"].drop(columns=["grid", "lr"]))
    md.section("Figures")
    for name, caption in draw(curve, stops, init, lr, out):
        md.figure(out / name, caption)
    md.write(out)


def tables(s: Settings) -> list[Table]:
    runs = len(s.step_sizes) + s.seeds * len(s.init_scales)
    return [Table("trials.csv", (*RUN, "final_train_loss", "final_train_acc", "test_loss", "test_acc", "error"),
                  range(runs, runs + 1), finite=("final_train_loss", "test_loss", "test_acc")),
            Table("curves.csv", ("epoch", "train_loss", "test_loss", "grid", "lr", "seed", "init_scale")),
            Table("plateaus.csv", (*RUN, "tolerance", "plateau_epoch", "evaluated_before", "last_epoch",
                                   "train_loss_at_plateau", "train_loss_last"), range(1, runs + 1)),
            Table("init.csv", ("init_scale", "test_loss", "test_loss_low", "test_loss_high", "seeds", "beaten",
                               "test_acc", "test_acc_low", "test_acc_high", "diverged"),
                  range(1, len(s.init_scales) + 1)),
            Table("step_size_x_epochs.csv", ("lr", "epochs", "train_loss", "test_loss", "test_acc"),
                  range(1, len(s.step_sizes) * len(s.epoch_counts) + 1))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, report, tables)
