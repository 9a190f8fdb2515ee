"""The budget study's answers, from its trials.csv: which shape wins at each P, does a non-uniform shape beat
uniform, does weight decay help, which settings matter; as CSVs, figures and REPORT.md.

Differences between configurations are judged on the confirmation stage, where each configuration trains again
with the same seeds (0, 1, ...): a difference is paired by seed, and its 95% interval says whether it is beyond
the seed-to-seed noise. The search's own numbers (best and top-decile of each family) are the evidence beside.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_mnist import plots, report, runs, stats
from tune_mnist.files import read_table, write_csv

CONFIG = ["k", "widths", "shape", "activation", "lr", "weight_decay"]
QUESTION = ("At a fixed parameter budget P, which MLP shape (depth and layer widths) trains best on MNIST? Is a "
            "non-uniform shape better than a uniform one, and does weight decay help?")


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Members that trained to the end."""
    return trials[trials["error"].eq("") & trials["stopped_early"].eq(0)]


def confirmed(trials: pd.DataFrame) -> pd.DataFrame:
    """The confirmation stage's members where there is one, else every finished MLP (a run without stage 2)."""
    done = finished(trials)
    done = done[done["k"].gt(0) & done["checkpoint"].ne("")]
    return done[done["stage"].eq("confirm")] if done["stage"].eq("confirm").any() else done


def as_found(confirm: pd.DataFrame) -> pd.DataFrame:
    """Confirmation runs of each configuration as the search found it (with its own weight decay)."""
    if "config_weight_decay" not in confirm:
        return confirm
    return confirm[confirm["weight_decay"] == confirm["config_weight_decay"]]


def ranked_configs(part: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """A P's configurations, each with its runs (seeds), best mean validation loss first."""
    return sorted(as_found(part).groupby(CONFIG, sort=False), key=lambda g: g[1]["val_loss"].mean())


def label(row: Any) -> str:
    return f"{row['widths']} {row['activation']}"


# ----------------------------------------------------------------------------------------------------------------
# Tables

def shapes(trials: pd.DataFrame) -> pd.DataFrame:
    """Per P and shape family: the search's best and top-decile validation and test loss (with intervals over the
    decile's trials), and the family's confirmed best (with intervals over seeds)."""
    search, confirm = finished(trials), as_found(confirmed(trials))
    search = search[search["stage"].eq("optuna")]
    rows = []
    for (P, shape), part in search.groupby(["P", "shape"]):
        top = part.nsmallest(max(1, math.ceil(len(part) / 10)), "val_loss")
        best = part.nsmallest(1, "val_loss").iloc[0]
        row = {"P": P, "shape": shape, "trials": len(part), "best": label(best), "best_val_loss": best.val_loss,
               "best_test_loss": best.test_loss, "top_decile": len(top), **stats.interval_columns("top_val_loss", top.val_loss),
               **stats.interval_columns("top_test_loss", top.test_loss)}
        family = confirm[(confirm["P"] == P) & (confirm["shape"] == shape)]
        if len(family):
            config, runs_ = ranked_configs(family)[0]
            row.update({"confirmed": label(runs_.iloc[0]), "seeds": len(runs_),
                        **stats.interval_columns("confirmed_val_loss", runs_.val_loss),
                        **stats.interval_columns("confirmed_test_loss", runs_.test_loss),
                        "confirmed_test_acc": runs_.test_acc.mean()})
        rows.append(row)
    return pd.DataFrame(rows)


def comparison(trials: pd.DataFrame) -> pd.DataFrame:
    """Per P: the best confirmed non-uniform configuration against the best confirmed uniform one, test loss paired
    by seed (negative: the non-uniform shape is better)."""
    rows = []
    for P, part in as_found(confirmed(trials)).groupby("P"):
        ranked = ranked_configs(part)
        best = {kind: next((runs_ for _, runs_ in ranked if (runs_["shape"].iloc[0] == "uniform") == uniform), None)
                for kind, uniform in (("non_uniform", False), ("uniform", True))}
        if best["non_uniform"] is None or best["uniform"] is None:
            continue
        a, b = (best[k].set_index("seed")["test_loss"] for k in ("non_uniform", "uniform"))
        seeds = a.index.intersection(b.index)
        if len(seeds) < 2:
            continue
        d = stats.paired_difference(a.loc[seeds], b.loc[seeds])
        rows.append({"P": P, "non_uniform": label(best["non_uniform"].iloc[0]),
                     "non_uniform_shape": best["non_uniform"]["shape"].iloc[0], "uniform": label(best["uniform"].iloc[0]),
                     "seeds": d.n, "difference": d.mean, "low": d.low, "high": d.high,
                     "verdict": verdict(d, "non-uniform", "uniform")})
    return pd.DataFrame(rows)


def weight_decay(trials: pd.DataFrame) -> pd.DataFrame:
    """Per confirmed configuration with weight decay, and over all of them ("all"): test loss with its weight decay
    minus without, paired by seed (negative: weight decay helps)."""
    confirm = confirmed(trials)
    if "config_weight_decay" not in confirm:
        return pd.DataFrame()
    confirm = confirm[confirm["config_weight_decay"] > 0]
    rows, pooled = [], []
    for (P, config), part in confirm.groupby(["P", "config"]):
        on = part[part["weight_decay"] > 0].set_index("seed")["test_loss"]
        off = part[part["weight_decay"] == 0].set_index("seed")["test_loss"]
        seeds = on.index.intersection(off.index)
        if len(seeds) < 2:
            continue
        diffs = on.loc[seeds] - off.loc[seeds]
        pooled.append(diffs.to_frame("d").assign(P=P))
        d = stats.mean_interval(diffs)
        rows.append({"P": P, "config": label(part.iloc[0]), "weight_decay": part["config_weight_decay"].iloc[0],
                     "seeds": d.n, "difference": d.mean, "low": d.low, "high": d.high,
                     "verdict": verdict(d, "weight decay", "none")})
    for P, part in pd.concat(pooled).groupby("P") if pooled else []:
        d = stats.mean_interval(part["d"])
        rows.append({"P": P, "config": "all", "weight_decay": np.nan, "seeds": d.n, "difference": d.mean,
                     "low": d.low, "high": d.high, "verdict": verdict(d, "weight decay", "none")})
    return pd.DataFrame(rows)


def verdict(d: stats.Interval, a: str, b: str) -> str:
    """What a paired difference of losses (a minus b) says."""
    if not d.excludes(0.0):
        return "no difference beyond noise"
    return f"{a} better" if d.mean < 0 else f"{b} better"


def importance(run_dir: Path, Ps: list[int]) -> pd.DataFrame:
    """Optuna's parameter importances (its default evaluator) per P, over the search's completed trials."""
    import optuna

    from tune_mnist.studies.budget import study_name
    from tune_mnist.tuning.search import journal

    rows = []
    if not (run_dir / "optuna.journal").is_file():
        return pd.DataFrame(rows)
    for P in Ps:
        try:
            study = optuna.load_study(study_name=study_name(P), storage=journal(run_dir / "optuna.journal"))
            done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            # only what every trial sampled: a shape's own settings (ratio, r0, ...) exist for that shape alone
            shared = sorted(set.intersection(*(set(t.params) for t in done))) if done else []
            with warnings.catch_warnings():  # Optuna's caveat on thinly sampled values
                warnings.simplefilter("ignore")
                found = optuna.importance.get_param_importances(study, params=shared)
        except (KeyError, ValueError, RuntimeError):  # no study, or too few completed trials to say
            continue
        rows += [{"P": P, "param": k, "importance": v} for k, v in found.items()]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# Figures and REPORT.md

def draw(run_dir: Path, trials: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
    """The run's figures in `out`; (file, caption) of each."""
    drawn = []
    grid = trials[(trials["stage"] == "grid") & trials["error"].eq("")]
    depths = grid[grid["k"] > 0].groupby(["P", "k"], as_index=False).agg(
        final_train_loss=("final_train_loss", "mean"), test_loss=("test_loss", "mean"),
        train_spread=("final_train_loss", "std"), test_spread=("test_loss", "std")).fillna(0.0)
    plots.lines(out / "loss_vs_k.png", depths, "k", ["final_train_loss", "test_loss"], "P", logx=True, logy=True,
                yerr=["train_spread", "test_spread"], title="Loss vs depth at a fixed parameter budget (mean ± std "
                "over seeds)", reference=reference(trials, runs.read(run_dir)["settings"]["linear_run"]))
    drawn.append(("loss_vs_k.png", "Stage 1: final training and test loss against depth k, uniform widths m_P(k)"))
    if len(shaped := table(run_dir, "shapes.csv")):
        series = [("search: top decile (val)", "top_val_loss", "top_val_loss_low", "top_val_loss_high")]
        if "confirmed_test_loss" in shaped:
            series.append(("confirmed best (test)", "confirmed_test_loss", "confirmed_test_loss_low",
                           "confirmed_test_loss_high"))
        plots.intervals(out / "shapes.png", shaped, "shape", series, "P", ylabel="loss (95% CI)",
                        title="Shape families: the search's top decile and each family's confirmed best")
        drawn.append(("shapes.png", "Each shape family: the search's top-decile validation loss and its confirmed "
                                    "best's test loss over seeds, with 95% intervals"))
    if len(important := table(run_dir, "importance.csv")):
        plots.bars(out / "importance.png", important, "param", "importance", "P", ylabel="importance (Optuna)",
                   title="Which settings the validation loss depends on")
        drawn.append(("importance.png", "Optuna's parameter importances"))
    done = finished(trials)
    done = done[done["test_acc"].notna()]
    if done["P"].nunique() > 1:  # one budget's nets all sit at P
        plots.front(out / "pareto.png", done, stats.pareto_front(done, "params", "test_acc"), "params", "test_acc",
                    "P", xlabel="parameters", ylabel="test accuracy",
                    title="Test accuracy against parameters, every trained net")
        drawn.append(("pareto.png", "Every net that trained to the end; the line is the Pareto front"))
    return drawn


def reference(trials: pd.DataFrame, linear_run: str) -> tuple[str, float] | None:
    """The 7,850-parameter linear model's training loss: a linear run's best, else this run's k = 0 members."""
    if linear_run:
        linear = read_table(Path(linear_run) / "trials.csv")
        return "linear study best (7,850 params)", float(linear["final_train_loss"].min())
    own = trials[(trials["stage"] == "grid") & (trials["k"] == 0) & trials["error"].eq("")]
    return ("linear, same training (7,850 params)", float(own["final_train_loss"].min())) if len(own) else None


def answers(trials: pd.DataFrame, best: dict[str, Any], compared: pd.DataFrame, decay: pd.DataFrame) -> list[str]:
    """The answer, a sentence or two per P."""
    lines = []
    for P, entries in best.items():
        if not entries:
            continue
        e = entries[0]
        part = as_found(confirmed(trials))
        runs_ = part[(part["P"] == int(P)) & (part["widths"] == e["widths"]) & (part["activation"] == e["activation"])]
        acc = stats.mean_interval(runs_["test_acc"]) if len(runs_) else None
        line = (f"**P = {int(P):,}:** the best net is {e['shape']} {e['widths']} ({e['activation']}, lr {e['lr']:.2g}, "
                f"weight decay {e['weight_decay']:.2g}), test accuracy {acc} over seeds." if acc else "")
        row = compared[compared["P"] == int(P)] if len(compared) else compared
        if len(row):
            r = row.iloc[0]
            line += (f" Best non-uniform ({r.non_uniform_shape} {r.non_uniform}) minus best uniform ({r.uniform}) test "
                     f"loss: {r.difference:+.4f} (95% CI {r.low:+.4f} to {r.high:+.4f}, {r.seeds} seeds): {r.verdict}.")
        pooled = decay[(decay["P"] == int(P)) & (decay["config"] == "all")] if len(decay) else decay
        if len(pooled):
            r = pooled.iloc[0]
            line += (f" Weight decay changed test loss by {r.difference:+.4f} (95% CI {r.low:+.4f} to {r.high:+.4f}, "
                     f"{r.seeds} seed pairs): {r.verdict}.")
        lines.append(line)
    return lines


def write(run_dir: Path, trials: pd.DataFrame, best: dict[str, Any]) -> dict[str, Any]:
    """The answers' tables, figures and REPORT.md; the summary line's fields."""
    Ps = sorted(trials["P"].unique().tolist())
    for name, frame in (("shapes.csv", shapes(trials)), ("comparison.csv", comparison(trials)),
                        ("weight_decay.csv", weight_decay(trials)), ("importance.csv", importance(run_dir, Ps))):
        if len(frame):  # a run without stage 2 has none of these answers
            write_csv(run_dir / name, frame)
    write_report(run_dir, run_dir, trials)
    summary: dict[str, Any] = {"trials": len(trials), "errors": int(trials["error"].ne("").sum()),
                               "stopped_early": int(trials["stopped_early"].sum())}
    compared = table(run_dir, "comparison.csv")
    for P, entries in best.items():
        if entries:
            summary[f"P{P}_best"] = f"{entries[0]['widths']}/{entries[0]['activation']}"
            summary[f"P{P}_test_acc"] = round(entries[0]["test_acc_mean"], 4)
        row = compared[compared["P"] == int(P)] if len(compared) else compared
        if len(row):
            r = row.iloc[0]
            summary[f"P{P}_nonuniform_minus_uniform"] = f"{r.difference:+.4f}[{r.low:+.4f},{r.high:+.4f}]"
    return summary


def table(run_dir: Path, name: str) -> pd.DataFrame:
    """One of the answers' CSVs, empty where the run has none."""
    return read_table(run_dir / name) if (run_dir / name).is_file() else pd.DataFrame()


def write_report(run_dir: Path, out: Path, trials: pd.DataFrame) -> None:
    """Figures and REPORT.md into `out`, from the run's CSVs."""
    import json

    best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").is_file() else {}
    compared, decay = table(run_dir, "comparison.csv"), table(run_dir, "weight_decay.csv")
    Ps = ", ".join(f"{int(P):,}" for P in sorted(trials["P"].unique()))
    md = report.for_run(run_dir, f"budget: which MLP shape trains best at P = {Ps}?", QUESTION)
    md.answer("\n\n".join(answers(trials, best, compared, decay)) or "No net trained to the end.")
    figures = draw(run_dir, trials, out)
    for name, text in (("shapes.csv", "Shape families"), ("comparison.csv", "Non-uniform against uniform"),
                       ("weight_decay.csv", "Weight decay"), ("importance.csv", "What matters")):
        if len(frame := table(run_dir, name)):
            md.section(text, f"`{name}`")
            md.table(frame)
    md.section("Figures")
    for name, caption in figures:
        md.figure(out / name, caption)
    md.section("The best nets", "`best.json`, and the files under `best/`: `tune_mnist.models.load(path)` "
                                "rebuilds each, taking raw images in [0, 1].")
    md.table(pd.DataFrame([e for entries in best.values() for e in entries]))
    md.write(out)
