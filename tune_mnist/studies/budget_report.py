"""The budget study's report: its answers' tables (budget_answers), figures (budget_plots) and REPORT.md, from
trials.csv and run.json; redrawn from the CSVs alone by `report`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tune_mnist import plots, report, runs, stats
from tune_mnist.files import read_table, write_csv
from tune_mnist.studies import budget_answers as answers, budget_design as design, budget_plots

QUESTION = ("At a fixed parameter budget P, which MLP shape trains best on MNIST? At equal depth, are uniform, "
            "decreasing, increasing or free layer widths better? Does any non-uniform net beat the best uniform one, "
            "whatever its depth? Does weight decay help when both sides are tuned?")
TABLES = ("depths.csv", "coverage.csv", "shapes.csv", "any_depth.csv", "weight_decay.csv", "ablation.csv",
          "confirmed.csv", "importance.csv")
DISAGREE = {"opposite": "loss and accuracy disagree: each finds the other side better",
            "loss only": "loss and accuracy disagree: accuracy does not detect the difference that loss does",
            "accuracy only": "loss and accuracy disagree: loss does not detect the difference that accuracy does"}


def table(run_dir: Path, name: str) -> pd.DataFrame:
    """One of the answers' CSVs, empty where the run has none."""
    return read_table(run_dir / name) if (run_dir / name).is_file() else pd.DataFrame()


def write(run_dir: Path, trials: pd.DataFrame, best: dict[str, Any]) -> dict[str, Any]:
    """The answers' tables, figures and REPORT.md; the summary line's fields."""
    settings = runs.read(run_dir)["settings"]
    frames = {"depths.csv": design.depth_table(trials), "confirmed.csv": answers.confirmed_table(trials)}
    if len(answers.search_rows(trials)):  # a run without a search has none of its answers
        covered = answers.coverage(trials, settings["shapes"])
        frames.update({"coverage.csv": covered, "shapes.csv": answers.shapes(trials, covered),
                       "any_depth.csv": answers.any_depth(trials, covered),
                       "weight_decay.csv": answers.weight_decay(trials), "ablation.csv": answers.ablation(trials),
                       "importance.csv": answers.importance(run_dir, trials, settings["prune_grace"])})
    for name, frame in frames.items():
        if len(frame):
            write_csv(run_dir / name, frame)
    write_report(run_dir, run_dir, trials)
    summary: dict[str, Any] = {"trials": len(trials), "errors": int(trials["error"].ne("").sum()),
                               "stopped_early": int(trials["stopped_early"].sum())}
    for P, entries in best.items():
        if entries:
            summary[f"P{P}_best"] = f"{entries[0]['widths']}/{entries[0]['activation']}"
            summary[f"P{P}_test_acc"] = round(entries[0]["test_acc_mean"], 4)
        shaped = frames.get("shapes.csv", pd.DataFrame())
        if "loss_detected" in shaped:
            tested = shaped[(shaped["P"] == int(P)) & shaped["loss_p"].notna()]
            summary[f"P{P}_shape_differences"] = f"{int(tested['loss_detected'].sum())}/{len(tested)}"
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Words

def halving_words(s: dict) -> str:
    """What successive halving did to the search's strata: with one member of each a population it stops none."""
    if s["search_population"] // design.strata(s["shapes"]) > 1:
        return (f"successive halving (at epoch {s['prune_grace']}, then x{s['prune_factor']}) keeps the same share "
                "of each, so each finishes as many")
    return (f"with one member of each a population, successive halving stops none: every trial trains "
            f"{s['epochs']} epochs")


def sentence(row: pd.Series, a: str, b: str, short_a: str, short_b: str) -> str:
    """A comparison's verdict in test loss (naming the nets) and in test accuracy (short names), and where the two
    disagree."""
    loss, acc = answers.comparison(row, "loss"), answers.comparison(row, "acc")
    text = (f"{stats.in_words(loss, a, b, lower_is_better=True, metric='test loss')}; "
            f"{stats.in_words(acc, short_a, short_b, metric='test accuracy')}")
    return text + (f". **{DISAGREE[row['metrics']]}**" if row["metrics"] in DISAGREE else "")


def comparisons(frame: pd.DataFrame, P: int, where: str) -> str:
    """How many of the comparisons at P detect a difference in test loss, then a bullet per row of the table: the
    verdict, or why it was not compared."""
    lines, found, tested = [], [], 0
    for _, row in (frame[frame["P"] == P] if len(frame) else frame).iterrows():
        at = f"k = {row['k']}, {row['shape']}" if "k" in row else row["shape"]
        if pd.isna(row.get("loss_p", math.nan)):
            lines.append(f"- {at}: not compared: {row['note']}.")
            continue
        tested += 1
        lines.append(f"- {at}: {sentence(row, row['a'], row['b'], row['shape'], 'uniform')}.")
        if row["loss_detected"]:
            winner, loser = (row["shape"], "uniform") if row["loss_difference"] < 0 else ("uniform", row["shape"])
            found.append(f"{winner} better than {loser}" + (f" at k = {row['k']}" if "k" in row else ""))
    head = (f"{len(found)} of {tested} comparison{'s detect' if tested > 1 else ' detects'} a difference in test "
            f"loss{' (' + '; '.join(found) + ')' if found else ''}.\n\n" if tested else "")
    return head + "\n".join(lines or [f"- nothing to compare {where}"])


def stage1(depths: pd.DataFrame, P: int, searched: list[int]) -> str:
    part = depths[(depths["P"] == P) & (depths["k"] > 0)]
    best = design.best_depth(depths, P)
    failed = part[~part["trained"]]
    text = (f"Stage 1 (uniform nets, each depth at the best of {int(part['lrs'].max())} learning rates on "
            f"validation): the lowest validation loss is at k = {best}" if best is not None
            else "Stage 1: no depth trained")
    if len(failed):
        text += (f"; k = {', '.join(map(str, failed['k']))} did not train (loss at chance at every learning rate "
                 "tried): shown as such, not as a capacity result")
    return text + (f". The search covered k = {', '.join(map(str, searched))}." if searched else
                   ". There was no search.")


def balance(covered: pd.DataFrame, P: int) -> str:
    part = covered[covered["P"] == P]
    low, high = part["finished"].min(), part["finished"].max()
    each = f"{low}" if low == high else f"{low} to {high}"
    return (f"each family finished {each} of {part['started'].max()} search trials at each depth "
            f"(depth, family and weight decay balanced within every population)")


def answer(trials: pd.DataFrame, t: dict[str, pd.DataFrame]) -> str:
    paragraphs = []
    for P in sorted(trials["P"].unique()):
        covered = t["coverage.csv"]
        searched = sorted(covered.loc[covered["P"] == P, "k"].unique()) if len(covered) else []
        confirmed = t["confirmed.csv"]
        top = confirmed[confirmed["P"] == P].head(1) if len(confirmed) else confirmed
        head = f"**P = {P:,}.**"
        if len(top):
            r = top.iloc[0]
            how, unit = (("chosen by the search on validation; on fresh seeds", answers.UNIT) if searched else
                         ("stage 1 alone, chosen and measured on the same seeds", "seeds"))
            head += (f" The best net found is {r.net} (lr {r.lr:.2g}, weight decay {r.weight_decay:.2g}; {how}): test "
                     f"loss {stats.Interval.from_columns(r, 'test_loss', r.seeds, unit)}, test accuracy "
                     f"{stats.Interval.from_columns(r, 'test_acc', r.seeds, unit)}.")
        paragraphs.append(f"{head} {stage1(t['depths.csv'], P, searched)}")
        if not searched:
            continue
        paragraphs.append(f"*Shape at equal depth* (each family's best net of depth k against the uniform net of "
                          f"that depth; {balance(covered, P)}):\n\n"
                          + comparisons(t["shapes.csv"], P, "at a depth k >= 2"))
        paragraphs.append("*Whatever the depth* (a separate question: each family's best net at any depth of the "
                          "search against the best uniform net at any depth):\n\n"
                          + comparisons(t["any_depth.csv"], P, "at any depth"))
        decay = t["weight_decay.csv"]
        decay = decay[decay["P"] == P] if len(decay) else decay
        if len(decay) and pd.notna(decay.iloc[0].get("loss_p", math.nan)):
            r = decay.iloc[0]
            paragraphs.append(f"*Weight decay, tuned against tuned* (the best net with weight decay against the best "
                              f"without, each with its own lr): "
                              f"{sentence(r, f'{r.a} with weight decay', f'{r.b} without', 'with', 'without')}.")
        elif len(decay):
            paragraphs.append(f"*Weight decay*: not compared: {decay.iloc[0]['note']}.")
    return "\n\n".join(paragraphs) or "No net trained to the end."


def method(settings: dict[str, Any], t: dict[str, pd.DataFrame]) -> str:
    s, searched = settings, len(t["coverage.csv"]) > 0
    mdes = pd.Series([v for n in ("shapes.csv", "any_depth.csv", "weight_decay.csv") if "loss_mde" in t[n]
                      for v in t[n]["loss_mde"]], dtype=float).dropna()
    power = (f"with {s['confirm_seeds']} evaluation seeds a paired test detects, with 80% power at the 5% level, "
             f"a test-loss difference of about {mdes.median():.2g} (the median over the comparisons; each row of the "
             "tables gives its own, `loss_mde`)" if len(mdes) else "no comparison had two evaluation seeds")
    depths = f"--search-depths {' '.join(map(str, s['search_depths']))}" if s["search_depths"] else (
        f"the best depth of stage 1 and {s['depth_window']} neighbour(s) on each side")
    lines = [
        f"**Stage 1** trains uniform nets of every depth k of the grid (up to {s['max_depth']}) at width m_P(k), "
        f"each depth at learning rates {', '.join(f'{lr:g}' for lr in s['lrs'])} x {s['seeds']} seed(s) (seeds 0, "
        "1, ...) as one population, and keeps the lr with the lowest mean validation loss. A depth whose final "
        f"training loss at that lr stays above {design.DID_NOT_TRAIN:.0%} of chance (ln 10) is reported as \"did "
        "not train\", not as a capacity result. Its numbers are from the seeds that chose the lr.",
        f"Every net trains {s['epochs']} epochs (batch {s['batch_size']}, {s['optimizer']}); the test set never "
        "chooses anything."]
    if not searched:
        return "\n".join(f"- {line}" for line in [*lines, "There was no search (stages 2 and 3: --trials 0)."])
    lines[1:1] = [
        f"**Stage 2** searches {depths}, one Optuna (TPE) study per depth with {s['trials']} trials in "
        f"populations of {s['search_population']} that share depth and activation. The members of every population "
        f"cycle through the shape families ({', '.join(s['shapes'])}) x weight decay (off, or tuned in "
        f"{s['weight_decay_range'][0]:g} to {s['weight_decay_range'][1]:g}), so each gets the same number of trials, "
        f"and {halving_words(s)}. At k = 1 every family is the one-layer net. Each trial trains with its own "
        "seed (its trial number); the best trial of each family at each depth, of each family at any depth, without "
        f"and with weight decay, and the {s['confirm_top']} best overall are chosen by its validation loss.",
        f"**Stage 3** trains each chosen configuration again on {s['confirm_seeds']} evaluation seeds "
        f"({design.EVALUATION_SEED:,} and up) that no choice saw, so its estimates carry no winner's curse. What is "
        "compared: at equal depth, each family's best net of that depth against the uniform net of that depth; at "
        "any depth, each family's best net against the best uniform net; the best net with weight decay against the "
        "best without, each with its own lr. Test loss (the primary metric) and test accuracy are each compared by "
        "paired t-tests over the evaluation seeds, with Holm's correction over the comparisons of one question at "
        "one P. The ablation of weight decay (secondary) pools over configurations, the configuration its unit "
        "(\"n configurations x m seeds\").",
        "**The intervals** (95%) cover the spread of training over seeds (initialisation, data order) for the chosen "
        "nets; they do not cover the search's own chance (another search could choose other nets: a comparison is "
        "between the nets found, with the same effort on each side), nor other validation splits or data sets. Not "
        f"detected is not the same as equal: {power}.",
        "**Importances** are Optuna's (PED-ANOVA) over every search trial, by its validation loss at epoch "
        f"{s['prune_grace']} (which every trial reached), and over the finished trials by their final one."]
    return "\n".join(f"- {line}" for line in lines)


# ----------------------------------------------------------------------------------------------------------------
# Figures and REPORT.md

def reference(trials: pd.DataFrame, linear_run: str) -> tuple[str, float] | None:
    """The 7,850-parameter linear model's training loss: a linear run's best, else this run's k = 0 members."""
    if linear_run:
        linear = read_table(Path(linear_run) / "trials.csv")
        return "linear study best (7,850 params)", float(linear["final_train_loss"].min())
    own = design.finished(trials[(trials["stage"] == "grid") & (trials["k"] == 0)])
    return ("linear, same training (7,850 params)", float(own["final_train_loss"].min())) if len(own) else None


def draw(trials: pd.DataFrame, t: dict[str, pd.DataFrame], settings: dict[str, Any],
         out: Path) -> list[tuple[str, str]]:
    """The run's figures in `out`; (file, caption) of each."""
    drawn = []
    if len(t["depths.csv"]):
        budget_plots.depth_curves(out / "loss_vs_k.png", t["depths.csv"], reference(trials, settings["linear_run"]))
        drawn.append(("loss_vs_k.png", "Stage 1: final training and test loss against depth k, uniform widths, each "
                                       "depth at its best learning rate; open markers did not train"))
    confirmed = t["confirmed.csv"]
    if "roles" in confirmed:
        rows = []
        for _, r in confirmed.iterrows():
            for role in str(r["roles"]).split(";"):
                if role.startswith("k="):
                    k, family = role[2:].split(" ")
                    rows.append({**r, "family": family, "P, k": f"{r['P']:,}, {k}"})
        if rows:
            plots.intervals(out / "shapes.png", pd.DataFrame(rows), "family",
                            [("test loss (evaluation seeds)", "test_loss", "test_loss_low", "test_loss_high")], "P, k",
                            ylabel="test loss (95% CI)", title="Each family's best net at each depth")
            drawn.append(("shapes.png", "Each family's best net of each depth of the search: test loss over the "
                                        "evaluation seeds, with 95% intervals"))
    if len(important := t["importance.csv"]):
        budget_plots.bars(out / "importance.png", important.assign(panel=[f"P={P:,}: {o}" for P, o in zip(
            important["P"], important["over"])]), "param", "importance", "panel", ylabel="importance (PED-ANOVA)",
            title="Which settings the validation loss depends on")
        drawn.append(("importance.png", "Optuna's importances (PED-ANOVA), over all search trials and over the "
                                        "finished ones"))
    done = design.finished(trials)
    done = done[done["test_acc"].notna()]
    if done["P"].nunique() > 1:  # one budget's nets all sit at P
        budget_plots.front(out / "pareto.png", done, stats.pareto_front(done, "params", "test_acc"), "params",
                           "test_acc", "P", xlabel="parameters", ylabel="test accuracy",
                           title="Test accuracy against parameters, every trained net")
        drawn.append(("pareto.png", "Every net that trained to the end; the line is the Pareto front"))
    return drawn


EVIDENCE = (("depths.csv", "Stage 1: depth", "Each depth at its chosen lr (means over seeds)."),
            ("shapes.csv", "Shape at equal depth", "a: the family's best net of depth k; b: the uniform one; "
             "differences a − b over evaluation seeds, Holm-adjusted within each metric."),
            ("any_depth.csv", "Shape at any depth", "a: the family's best net at any depth; b: the best uniform."),
            ("weight_decay.csv", "Weight decay, tuned against tuned", "a: the best with weight decay; b: without."),
            ("ablation.csv", "Weight decay removed from each configuration (secondary)",
             "Test loss with minus without, paired by seed; the row `all` pools over configurations "
             "(its n counts configurations)."),
            ("confirmed.csv", "Every confirmed configuration", "Its roles, the search's validation loss that chose "
             "it, and its test loss and accuracy over the evaluation seeds."),
            ("coverage.csv", "What the search covered", "Trials per depth and family: started, finished, stopped "
             "early by successive halving, diverged."),
            ("importance.csv", "What matters", "Optuna's importances (PED-ANOVA: which settings set the best 10% of "
             "trials apart); `over` says which trials and which value."))


def write_report(run_dir: Path, out: Path, trials: pd.DataFrame) -> None:
    """Figures and REPORT.md into `out`, from the run's CSVs and run.json."""
    settings = runs.read(run_dir)["settings"]
    t = {name: table(run_dir, name) for name in TABLES}
    best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").is_file() else {}
    Ps = ", ".join(f"{int(P):,}" for P in sorted(trials["P"].unique()))
    md = report.for_run(run_dir, f"budget: which MLP shape trains best at P = {Ps}?", QUESTION)
    md.answer(answer(trials, t))
    md.section("Method", method(settings, t))
    figures = draw(trials, t, settings, out)
    for name, title, text in EVIDENCE:
        if len(t[name]):
            md.section(title, f"`{name}`: {text}")
            md.table(t[name].apply(lambda c: c if pd.api.types.is_numeric_dtype(c) else c.fillna("")))
    md.section("Figures")
    for name, caption in figures:
        md.figure(out / name, caption)
    md.section("The best nets", "`best.json`, and the files under `best/` (`python -m tune_mnist export RUN --top N` "
                                "writes more): `tune_mnist.models.load(path)` rebuilds each, taking raw images in "
                                "[0, 1].")
    md.table(pd.DataFrame([e for entries in best.values() for e in entries]))
    md.write(out)
