"""corruption: test accuracy of MLPs and CNNs trained on pixel-corrupted MNIST, by activation and p.

    python -m tune_mnist corruption --activations relu tanh --p 0 0.25 0.5 0.75 1 --repeats 5
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import ray
import torch
from annotated_types import Len
from ray import tune

from tune_mnist import plots, stats
from tune_mnist.data import DeviceSplit, Mnist, to_device
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv
from tune_mnist.population import Member, Population
from tune_mnist.report import for_run
from tune_mnist.runs import Table
from tune_mnist.settings import (Activation, Common, NonEmpty, NonNegative, NonNegativeInt, Optimizer, Positive,
                                 PositiveInt, Probability)
from tune_mnist.studies import Study
from tune_mnist.train import TrainConfig, epoch_loop, make_optimizer
from tune_mnist.warmup import compile_ahead, same_kernels
from tune_mnist.tuning import cluster, runner, trial

NAME = "corruption"
HELP = "activations x MLP/CNN x pixel-corruption p x repeats: which activation keeps its accuracy best"
FAMILIES = ("mlp", "cnn")
KEPT = 0.9  # a repeat's threshold p is the largest p that keeps this share of its clean accuracy
QUESTION = "Which activation keeps its accuracy best as training pixels are corrupted, for MLPs and for CNNs?"
TEST = "Welch t-tests of each activation's area against the best's, Holm-corrected within the family, at 95%"


@dataclass
class Settings(Common):
    activations: NonEmpty[Activation]
    families: NonEmpty[Literal[FAMILIES]]
    mlp_widths: NonEmpty[PositiveInt]
    cnn_channels: Annotated[list[PositiveInt], Len(1, 4)]  # each block halves the 28 x 28 image: 4 leave 1 x 1
    cnn_hidden: NonNegativeInt
    p: NonEmpty[Probability]
    repeats: PositiveInt
    population: PositiveInt
    epochs: PositiveInt
    batch_size: PositiveInt
    optimizer: Optimizer
    lr: Positive
    weight_decay: NonNegative


def spec(config: dict[str, Any], family: str, act: str) -> dict[str, Any]:
    if family == "mlp":
        return {"family": "mlp", "widths": config["mlp_widths"], "activation": act}
    return {"family": "cnn", "channels": config["cnn_channels"], "hidden": config["cnn_hidden"], "activation": act}


def check(s: Settings) -> None:
    require(len(set(s.p)) >= 2, f"--p needs at least two values: robustness is read off accuracy vs p, got {s.p}")


def members(config: dict[str, Any]) -> list[Member]:
    net = spec(config, config["family"], config["activation"])
    return [Member(net, seed=m["seed"], lr=config["lr"], weight_decay=config["weight_decay"], corruption=m["p"])
            for m in config["members"]]


def trainable(config: dict[str, Any], data: Mnist) -> None:
    trial.train(data, members(config), TrainConfig(**config["train"]))


def training(s: Settings) -> TrainConfig:
    return TrainConfig.from_settings(s)


def probe_members(s: Settings, family: str, act: str, size: int) -> list[Member]:
    """What the trials train: `size` members of a family and activation, with the trials' lr and weight decay."""
    net = spec(vars(s), family, act)
    return [Member(net, seed=r, lr=s.lr, weight_decay=s.weight_decay, corruption=0.5) for r in range(size)]


def seconds_per_run_step(members: list[Member], split: DeviceSplit, cfg: TrainConfig) -> float:
    """Seconds of one run's training step when these members train together, from an epoch after a warm-up."""
    pop = Population(members, split.x.device)
    run = epoch_loop(pop, make_optimizer(pop, cfg), split, cfg)
    run(0)
    start = time.perf_counter()
    run(1)  # returns the epoch's losses, so it has waited for the device
    return (time.perf_counter() - start) / -(-len(split) // cfg.batch_size) / len(members)


def kernels(s: Settings, train: DeviceSplit, wait: bool = True) -> None:
    """Compiles every family and activation's kernels on the trials' training split, whose size some specialise on."""
    compile_ahead([probe_members(s, f, a, 1)[0] for f in s.families for a in s.activations], train, training(s), wait)


def prepare(s: Settings, data: Mnist) -> None:
    """Before Ray starts: where the trials will train populations on this machine's GPU, their kernels start
    compiling, so that they compile while Ray starts; estimate waits for them."""
    if torch.cuda.is_available() and s.population > 1:
        kernels(s, to_device(data, "cuda")["train"], wait=False)


def estimate(s: Settings, data: Mnist, res: cluster.Resources) -> float:
    """Seconds the campaign should take: runs x measured seconds per run / concurrent trials.

    Times 20 training steps of each family (its first activation) as the trials train it, populations of the
    trials' size. Trials on a cluster's GPUs will be faster than this machine's device, so on a cluster this is
    an upper bound. On a GPU it first compiles every family and activation's kernels at once (or waits for
    those prepare started), so that no trial waits to compile its own.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, cfg = to_device(data, device)["train"], training(s)
    size = min(s.population, len(s.p) * s.repeats)
    if device.type == "cuda" and size > 1:
        print(f"[corruption] compiling the kernels of {', '.join(s.families)} x {', '.join(s.activations)} "
              "(Triton keeps them on this machine for later runs)", flush=True)
        start = time.perf_counter()
        kernels(s, train)
        print(f"[corruption] kernels ready ({time.perf_counter() - start:.1f} s waited once Ray was up)", flush=True)
    # 20 batches that launch the kernels the trials' epochs do, so that timing them compiles nothing more
    split = same_kernels(train, s.batch_size, batches=20)
    steps_per_run = s.epochs * -(-len(data.train_x) // s.batch_size)
    per_run = {f: seconds_per_run_step(probe_members(s, f, s.activations[0], size), split, cfg) * steps_per_run
               for f in s.families}
    if device.type == "cuda":
        del train, split
        torch.cuda.empty_cache()  # the trials' memory, not the driver's
    runs_per_family = len(s.activations) * len(s.p) * s.repeats
    concurrent = min(cluster.trial_slots(res), res.max_concurrent or 10**9)
    if res.gpus_per_trial:  # trials that share a GPU take turns on it, and a population keeps it busy
        concurrent = min(concurrent, ray.cluster_resources().get("GPU", 1))
    concurrent = max(1, int(concurrent))
    total = sum(per_run.values()) * runs_per_family / concurrent
    parts = ", ".join(f"{f} {t:.1f}s/run" if t >= 1 else f"{f} {t:.2f}s/run" for f, t in per_run.items())
    grouped = f", populations of {size}" if size > 1 else ""
    print(f"[corruption] estimate: {runs_per_family * len(per_run)} runs ({parts}{grouped}), {concurrent} at once "
          f"-> about {total / 60:.1f} min", flush=True)
    return total


def summarise(per_run: pd.DataFrame) -> pd.DataFrame:
    """Mean, population std and standard error (sample std / sqrt(n)) of test accuracy per cell."""
    ok = per_run[per_run["error"].eq("")]
    if ok.empty:
        return pd.DataFrame(columns=["family", "activation", "p", "mean", "std", "repeats", "stderr"])
    grouped = ok.groupby(["family", "activation", "p"])["test_acc"]
    summary = grouped.agg(mean="mean", std=lambda a: float(np.std(a, ddof=0)), repeats="count").reset_index()
    sample_std = grouped.std(ddof=1).fillna(0.0).to_numpy()
    summary["stderr"] = sample_std / np.sqrt(summary["repeats"].to_numpy())
    return summary


def per_repeat(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per family, activation and repeat (seed), from its accuracy-vs-p curve: the largest p keeping KEPT of its
    clean (smallest p) accuracy, and the area under the curve over the p range (its mean accuracy over p)."""
    ok, every = per_run[per_run["error"].eq("")], per_run["p"].nunique()
    rows = []
    for (family, act, seed), curve in ok.groupby(["family", "activation", "seed"], sort=False):
        if curve["p"].nunique() < every:  # a failed run leaves a curve over other p: not comparable
            continue
        curve = curve.sort_values("p")
        clean = float(curve["test_acc"].iloc[0])
        rows.append({"family": family, "activation": act, "seed": seed, "clean_acc": clean,
                     "threshold": stats.threshold_crossing(curve["p"], curve["test_acc"], KEPT * clean),
                     "area": stats.area_under(curve["p"], curve["test_acc"])})
    return pd.DataFrame(rows, columns=["family", "activation", "seed", "clean_acc", "threshold", "area"])


def robustness(repeats: pd.DataFrame) -> pd.DataFrame:
    """Per family and activation: threshold p and area, mean with its 95% interval over repeats."""
    rows = [{"family": family, "activation": act, "repeats": len(part), "clean_acc": part["clean_acc"].mean(),
             **stats.interval_columns("threshold", part["threshold"]), **stats.interval_columns("area", part["area"])}
            for (family, act), part in repeats.groupby(["family", "activation"], sort=False)]
    return pd.DataFrame(rows, columns=["family", "activation", "repeats", "clean_acc", "threshold", "threshold_low",
                                       "threshold_high", "area", "area_low", "area_high"])


def ranking(repeats: pd.DataFrame) -> pd.DataFrame:
    """Per family, the activations best area first, each tested against the best (see TEST)."""
    ranked = []
    for family in [f for f in FAMILIES if f in set(repeats["family"])]:
        part = stats.rank_with_ties(repeats[repeats["family"] == family], "area", "activation")
        part.insert(0, "rank", range(1, len(part) + 1))
        ranked.append(part.assign(family=family))
    columns = ["family", "rank", "activation", "area", "area_low", "area_high", "n", "p_value", "p_value_holm",
               "beaten", "tied_with_best"]
    if not ranked:
        return pd.DataFrame(columns=columns)
    ranked = pd.concat(ranked, ignore_index=True)
    # p_value, not p: in this study p is the corruption probability
    names = {"mean": "area", "low": "area_low", "high": "area_high", "p": "p_value", "p_holm": "p_value_holm"}
    return ranked.rename(columns=names)[columns]


def tied(ranked: pd.DataFrame) -> list[str]:
    """The activations of a family's ranking within noise of its best, the best left out."""
    return list(ranked[ranked["tied_with_best"]]["activation"].iloc[1:])


def interval(row: Any, column: str, n: int) -> stats.Interval:
    """A CSV row's mean, low and high of `column` as an Interval, to print it as stats does."""
    return stats.Interval(row[column], row[f"{column}_low"], row[f"{column}_high"], n, float("nan"))


def answer(family: str, ranked: pd.DataFrame, robust: pd.DataFrame) -> str:
    """The answer for one family, from its ranking and robustness rows: the best, its intervals, who ties."""
    best = ranked.iloc[0]
    row = robust[robust["activation"] == best["activation"]].iloc[0]
    n = int(best["n"])
    text = (f"**{family.upper()}:** {best['activation']} keeps its accuracy best: its mean test accuracy over p "
            f"(area under accuracy vs p) is {interval(best, 'area', n)}, and it keeps {KEPT:.0%} of its clean accuracy "
            f"up to p = {interval(row, 'threshold', int(row['repeats']))}.")
    if len(ranked) == 1:
        return text + " It is the only activation in this run."
    ties, beaten = tied(ranked), ranked[ranked["beaten"]]["activation"]
    text += f" Tied with it: {', '.join(ties)}" if ties else " No other activation is tied with it"
    text += f"; below it beyond noise: {', '.join(beaten)}" if len(beaten) else ""
    return text + f" ({TEST})."


def accuracy_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean ± stderr test accuracy per family and activation (rows) and p (columns)."""
    cells = summary.assign(cell=[f"{m:.4f} ± {e:.4f}" for m, e in zip(summary["mean"], summary["stderr"])])
    table = cells.pivot(index=["family", "activation"], columns="p", values="cell")
    table = table.set_axis([f"p = {p:g}" for p in table.columns], axis=1).reset_index()
    return table.sort_values("family", key=lambda f: f.map(FAMILIES.index), kind="stable")


def draw(summary: pd.DataFrame, robust: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
    """The run's figures in `out`; (file, caption) of each."""
    drawn: list[tuple[str, str]] = []
    if summary.empty:  # every run failed: nothing to draw
        return drawn
    if len(robust):
        plots.interval_points(
            out / "robustness.png", robust, "activation", "family",
            [("threshold", "threshold_low", "threshold_high", f"largest p keeping {KEPT:.0%} of clean accuracy"),
             ("area", "area_low", "area_high", "mean test accuracy over p (area)")],
            xlabel="activation", title="Robustness to corrupted training pixels: mean and 95% CI over repeats")
        drawn.append(("robustness.png", f"Per family and activation, the largest p that keeps {KEPT:.0%} of the "
                                        "clean accuracy and the area under accuracy vs p, mean and 95% interval over "
                                        "repeats"))
    plots.grouped_lines(out / "accuracy_vs_p.png", summary, "family", "p", "mean", "activation", yerr="stderr",
                        xlabel="corruption probability p of each training pixel", ylabel="test accuracy",
                        title="Test accuracy vs corruption p, the activations compared (mean ± stderr over repeats)")
    drawn.append(("accuracy_vs_p.png", "Test accuracy against p, one line per activation, one panel per family"))
    for family, part in summary.groupby("family"):
        plots.panels(out / f"accuracy_vs_p_{family}.png", part, "activation", "p", "mean",
                     yerr="stderr", ylabel="test accuracy",
                     title=f"{family}: mean test accuracy vs corruption p (± stderr)")
        drawn.append((f"accuracy_vs_p_{family}.png", f"{family}: test accuracy against p, one panel per activation"))
    return drawn


def report(run_dir: Path, out: Path | None = None) -> None:
    """Figures and REPORT.md into `out` (default the run folder), from the run's CSVs."""
    out = Path(out or run_dir)
    summary, robust = read_table(run_dir / "results_summary.csv"), read_table(run_dir / "robustness.csv")
    ranked = read_table(run_dir / "ranking.csv")
    md = for_run(run_dir, "corruption: which activation keeps its accuracy as training pixels are corrupted?",
                 QUESTION)
    md.answer("\n\n".join(answer(family, part, robust[robust["family"] == family])
                           for family, part in ranked.groupby("family", sort=False))
              or "No repeat trained at every p, so nothing can be ranked.")
    figures = draw(summary, robust, out)
    md.section("Ranking", f"`ranking.csv`: per family, the activations by their area under accuracy vs p (mean and "
                          f"95% interval over repeats). `beaten`: below the best beyond noise ({TEST}).")
    md.table(ranked)
    grid = ", ".join(f"{p:g}" for p in sorted(summary["p"].unique()))
    md.section("Robustness", f"`robustness.csv`: per repeat, the largest p that keeps {KEPT:.0%} of its clean "
                             "(smallest p) accuracy (`threshold`) and the area under its accuracy vs p divided by "
                             "the p range (`area`); mean and 95% interval over repeats. Both read the curve through "
                             f"the p run ({grid}), linear in between.")
    md.table(robust)
    md.section("Test accuracy", "`results_summary.csv`: mean ± stderr over repeats; the test set is never corrupted.")
    md.table(accuracy_table(summary))
    md.section("Figures")
    for name, caption in figures:
        md.figure(out / name, caption)
    md.write(out)


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    estimate(s, data, res)
    space = {"train": training(s).as_dict(), "lr": s.lr, "weight_decay": s.weight_decay, "mlp_widths": s.mlp_widths,
             "cnn_channels": s.cnn_channels, "cnn_hidden": s.cnn_hidden}
    space.update(family=tune.grid_search(s.families), activation=tune.grid_search(s.activations))
    per_run = runner.populations(
        trainable, run_dir, "grid", res, data, space,
        groups=runner.chunks([{"p": p, "seed": seed} for p in s.p for seed in range(s.repeats)], s.population),
        keep=["family", "activation"], shown=["family", "activation", "p"], tensorboard=run_dir / "tensorboard",
        metric="test_acc", mode="max")
    summary = summarise(per_run)
    repeats = per_repeat(per_run)
    ranked = ranking(repeats)
    write_csv(run_dir / "results_per_run.csv", per_run)
    write_csv(run_dir / "results_summary.csv", summary)
    write_csv(run_dir / "robustness.csv", robustness(repeats))
    write_csv(run_dir / "ranking.csv", ranked)
    report(run_dir)
    clean = summary[summary["p"] == summary["p"].min()]["mean"].mean() if len(summary) else float("nan")
    found = {"runs": len(per_run), "errors": int(per_run["error"].ne("").sum()),
             "mean_test_acc_at_min_p": round(float(clean), 4)}
    for family, part in ranked.groupby("family", sort=False):
        best = part.iloc[0]
        found[f"{family}_most_robust"] = best["activation"]
        found[f"{family}_area"] = f"{best['area']:.4f}[{best['area_low']:.4f},{best['area_high']:.4f}]"
        found[f"{family}_tied"] = ",".join(tied(part)) or "none"
    return found


def tables(s: Settings) -> list[Table]:
    runs = len(s.families) * len(s.activations) * len(s.p) * s.repeats
    return [Table("results_per_run.csv", ("family", "activation", "p", "seed", "test_acc", "error"),
                  range(runs, runs + 1), finite=("test_acc",)),
            Table("results_summary.csv", ("family", "activation", "p", "mean"),
                  range(1, len(s.families) * len(s.activations) * len(s.p) + 1)),
            Table("robustness.csv", ("family", "activation")),
            Table("ranking.csv", ("family", "activation", "area", "area_low", "area_high"))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, report, tables, prepare=prepare)
