"""budget: at a fixed parameter count P, which MLP shape trains best?

Stage 1 is a grid over depth k at the uniform width m_P(k), with the 7,850-parameter linear model (k = 0) as the
reference. Stage 2 is Optuna over layer-size vectors (uniform, decreasing, increasing, free) held within 1% of P
by construction, with depth, activation, lr and weight decay: each Ray trial trains a population of Optuna
trials of one depth and activation, stopping its worst members early (successive halving). Stage 3 trains the
best configurations again with several seeds, with and without their weight decay, so that the answers
(does a non-uniform shape beat uniform? does weight decay help?) come with intervals.

    python -m tune_mnist budget --P 25000 50000 100000 --trials 200
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
import pandas as pd
from annotated_types import Le

from tune_mnist import closed_form, models, storage
from tune_mnist.data import Mnist
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv, write_json
from tune_mnist.population import Member
from tune_mnist.runs import Table
from tune_mnist.settings import Activation, Common, NonEmpty, NonNegativeInt, Pair, Positive, PositiveInt
from tune_mnist.studies import Study
from tune_mnist.train import TrainConfig
from tune_mnist.tuning import cluster, runner, search, trial
from tune_mnist.studies import budget_report as answers

NAME = "budget"
HELP = "fixed parameter budget: depth grid, Optuna over layer-size vectors as populations, confirmation with seeds"
SHAPES = ("uniform", "decreasing", "increasing", "free")
CONFIG = ["k", "widths", "shape", "activation", "lr", "weight_decay"]  # what makes a configuration
MAX_P = 10**9  # a billion parameters: far past MNIST's needs, and about what one GPU holds with Adam's state


@dataclass
class Settings(Common):
    P: NonEmpty[Annotated[PositiveInt, Le(MAX_P)]]
    epochs: PositiveInt
    batch_size: PositiveInt
    optimizer: Literal["adam", "adamw"]
    population: PositiveInt
    linear_run: str
    max_depth: PositiveInt
    seeds: PositiveInt
    lr: Positive
    activation: Activation
    trials: NonNegativeInt
    search_population: PositiveInt
    optuna_max_depth: PositiveInt
    shapes: NonEmpty[Literal[SHAPES]]
    activations: NonEmpty[Activation]
    ratio: Pair[Positive]
    lr_range: Pair[Positive]
    weight_decay_range: Pair[Positive]
    prune_grace: PositiveInt
    prune_factor: PositiveInt
    confirm_top: NonNegativeInt
    confirm_seeds: PositiveInt


def check(s: Settings) -> None:
    for P in s.P:
        require(P >= closed_form.MIN_P, f"P={P} is too small: the smallest MLP (k=1, m=1) has {closed_form.MIN_P} "
                                        "parameters")
    if s.linear_run:
        require(os.path.isfile(os.path.join(s.linear_run, "trials.csv")),
                f"--linear-run {s.linear_run}: not a finished linear run (it has no trials.csv)")
    for name in ("ratio", "lr_range", "weight_decay_range"):
        low, high = getattr(s, name)
        require(low <= high, f"--{name.replace('_', '-')} {low:g} {high:g}: the low end must not exceed the high end")


# ----------------------------------------------------------------------------------------------------------------
# Trials: every stage's trial is a population of MLPs of one depth and activation

def trainable(config: dict[str, Any], data: Mnist) -> None:
    """A population of the config's members, each an MLP with its widths, lr and weight decay; in stage 2 the
    population stops its worst members early."""
    members = [Member({"family": "mlp", "widths": closed_form.parse_widths(e["widths"]), "activation": e["activation"]},
                      seed=e["seed"], lr=e["lr"], weight_decay=e["weight_decay"]) for e in config["members"]]
    cfg = TrainConfig(**config["train"])
    stops = halving(config["prune_grace"], config["prune_factor"], cfg.epochs) if config["stage"] == "optuna" else None
    trial.train(data, members, cfg, {"P": config["P"], "stage": config["stage"]}, halving=stops)


def halving(grace: int, factor: int, epochs: int) -> trial.Halving:
    """Successive halving inside a population: at epochs grace, grace * factor, ... (before the last) only the best
    1/factor of the members, by validation loss, go on."""
    rungs = {grace * factor ** i for i in range(64) if grace * factor ** i < epochs} if factor > 1 else set()

    def keep(epoch: int, metrics: list[dict[str, Any]]) -> list[int]:
        if epoch not in rungs:
            return list(range(len(metrics)))
        ranked = sorted(range(len(metrics)), key=lambda r: metrics[r]["val_loss"])
        return sorted(ranked[:math.ceil(len(metrics) / factor)])

    return keep


def entry(k: int, widths: list[int], shape: str, activation: str, lr: float, weight_decay: float,
          seed: int) -> dict[str, Any]:
    """A member's config entry: what sets it apart in its population, and its columns in trials.csv."""
    return {"k": k, "widths": closed_form.format_widths(widths), "shape": shape, "activation": activation, "lr": lr,
            "weight_decay": weight_decay, "seed": seed}


def shared(s: Settings, P: int, stage: str) -> dict[str, Any]:
    return {"P": P, "stage": stage, "train": TrainConfig.from_settings(s).as_dict(), "prune_grace": s.prune_grace,
            "prune_factor": s.prune_factor}


def by_population(entries: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Entries grouped by depth and activation (a population's members share them), in populations of `size`."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault((e["k"], e["activation"]), []).append(e)
    return [chunk for group in groups.values() for chunk in runner.chunks(group, size)]


def train_groups(s: Settings, P: int, stage: str, groups: list[list[dict[str, Any]]], run_dir: Path, data: Mnist,
                 res: cluster.Resources, prune: bool = False) -> pd.DataFrame:
    return runner.populations(trainable, run_dir, f"P{P}-{stage}", res, data, shared(s, P, stage), groups,
                              keep=["P", "stage"], shown=["k", "widths", "seed"],
                              tensorboard=run_dir / "tensorboard" / f"P{P}-{stage}", prune=prune)


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: the depth grid

def grid(s: Settings, P: int, run_dir: Path, data: Mnist, res: cluster.Resources) -> pd.DataFrame:
    entries = [entry(k, [closed_form.width_for(k, P)] * k if k else [], "uniform", s.activation, s.lr, 0.0, seed)
               for k in [0, *closed_form.depth_grid(P, s.max_depth)] for seed in range(s.seeds)]
    # export reads the grid's checkpoints only where no confirmation stage follows
    return train_groups(s, P, "grid", by_population(entries, s.population), run_dir, data, res, prune=s.trials > 0)


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: Optuna, a population of trials at a time

def optuna_space(s: Settings) -> dict[str, Any]:
    """The settings that bound what Optuna may choose: what `define_space` reads."""
    return {k: getattr(s, k) for k in ("optuna_max_depth", "activations", "shapes", "ratio", "lr_range",
                                       "weight_decay_range")}


def define_population(trial: optuna.Trial, P: int, space: dict[str, Any]) -> dict[str, Any]:
    """What a population's members share: depth and activation (the populations' study samples them)."""
    depths = closed_form.feasible_depths(P, space["optuna_max_depth"])
    return {"k": trial.suggest_int("k", depths[0], depths[-1]),
            "activation": trial.suggest_categorical("activation", space["activations"])}


def define_space(trial: optuna.Trial, P: int, space: dict[str, Any]) -> dict[str, Any]:
    """Optuna define-by-run: depth and activation (its population's), shape family, lr and weight decay; widths meet
    P by construction."""
    k, activation = define_population(trial, P, space).values()
    shape = trial.suggest_categorical("shape", space["shapes"]) if k > 1 else "uniform"
    ratio = trial.suggest_float("ratio", *space["ratio"]) if shape in ("decreasing", "increasing") else 0.5
    free = [trial.suggest_float(f"r{i}", 0.05, 1.0) for i in range(k)] if shape == "free" else []
    lr = trial.suggest_float("lr", *space["lr_range"], log=True)
    weight_decay = trial.suggest_float("weight_decay", *space["weight_decay_range"], log=True)
    try:
        widths = closed_form.fit_widths(closed_form.profile(shape, k, ratio, free), P)
    except ValueError:  # at small P a steep shape can round past 1%; the uniform net at this depth cannot
        shape, widths = "uniform", closed_form.fit_widths([1.0] * k, P)
    return entry(k, widths, shape, activation, lr, weight_decay, seed=trial.number)


def optuna_stage(s: Settings, P: int, run_dir: Path, data: Mnist, res: cluster.Resources) -> pd.DataFrame:
    space = optuna_space(s)
    search.JOURNALS[study_name(P)] = run_dir / "optuna.journal"
    searcher = search.PopulationSearch(functools.partial(define_space, P=P, space=space),
                                       functools.partial(define_population, P=P, space=space), n_trials=s.trials,
                                       size=s.search_population, journal_path=run_dir / "optuna.journal",
                                       study_name=study_name(P), shared=shared(s, P, "optuna"))
    grid = runner.run(trainable, run_dir, f"P{P}-optuna", res, data, num_samples=s.trials, search_alg=searcher,
                      shown=["k", "activation", "population"], total=math.ceil(s.trials / s.search_population),
                      nets=s.trials, tensorboard=run_dir / "tensorboard" / f"P{P}-optuna", hparams=["P", "stage"],
                      prune=True)
    return runner.member_rows(runner.rows(grid, ["P", "stage", "members"]))


def study_name(P: int) -> str:
    return f"budget-P{P}"


# ----------------------------------------------------------------------------------------------------------------
# Stage 3: confirmation with seeds, with and without weight decay

def candidates(frame: pd.DataFrame, top: int) -> pd.DataFrame:
    """Distinct configurations that trained to the end, by mean validation loss: the best `top`, and each shape
    family's best."""
    done = frame[frame["error"].eq("") & frame["stopped_early"].eq(0) & frame["k"].gt(0)]
    configs = done.groupby(CONFIG, as_index=False).agg(val_loss=("val_loss", "mean"), stage=("stage", "first"))
    configs = configs.sort_values("val_loss")
    chosen = pd.concat([configs.head(top), configs.groupby("shape").head(1)]).drop_duplicates(CONFIG)
    return chosen.reset_index(drop=True)


def confirm(s: Settings, P: int, frame: pd.DataFrame, run_dir: Path, data: Mnist,
            res: cluster.Resources) -> pd.DataFrame:
    chosen = candidates(frame, s.confirm_top)
    entries = []
    for i, c in chosen.iterrows():
        for seed in range(s.confirm_seeds):
            decays = [c.weight_decay, 0.0] if c.weight_decay > 0 else [0.0]
            for decay in decays:
                e = entry(int(c.k), closed_form.parse_widths(c.widths), c["shape"], c.activation, float(c.lr), decay, seed)
                entries.append({**e, "config": i, "config_weight_decay": float(c.weight_decay),
                                "from_stage": c.stage})
    return train_groups(s, P, "confirm", by_population(entries, max(s.population, len(entries))), run_dir, data, res)


# ----------------------------------------------------------------------------------------------------------------
# Exports: the confirmed best per P

def export(run_dir: Path, trials: pd.DataFrame, top: int = 1, onnx: bool = False) -> dict[str, Any]:
    """The top-N confirmed configurations per P (by mean validation loss over seeds) to
    run_dir/best/P<P>/rank<N>.safetensors (the seed with the lowest validation loss; weights, spec and metrics in
    one file) and, with `onnx`, to rank<N>.onnx beside it, listed in best.json."""
    best: dict[str, Any] = {}
    for P, part in answers.confirmed(trials).groupby("P"):
        entries = []
        for rank, (config, runs) in enumerate(answers.ranked_configs(part)[:top], start=1):
            row = runs.nsmallest(1, "val_loss").iloc[0]
            spec = {"family": "mlp", "widths": closed_form.parse_widths(row.widths), "activation": row.activation}
            state = storage.read_checkpoint(f"{row.checkpoint}/{trial.STATE}")
            target = run_dir / "best" / f"P{P}" / f"rank{rank}{models.SUFFIX}"
            metrics = {k: float(row[k]) for k in ("val_loss", "test_loss", "test_acc")}
            models.save(target, trial.member_state(state, int(row.member), spec), spec, **metrics)
            files = {"file": str(target.relative_to(run_dir))}
            if onnx:  # the graph of what the file holds, read back as any user reads it
                models.save_onnx(target.with_suffix(".onnx"), models.load(target))
                files["onnx"] = str(target.with_suffix(".onnx").relative_to(run_dir))
            entries.append({"rank": rank, **files, "widths": row.widths,
                            "k": int(row.k), "params": int(row.params), "shape": row["shape"],
                            "activation": row.activation, "lr": float(row.lr), "weight_decay": float(row.weight_decay),
                            "seeds": len(runs), "val_loss_mean": float(runs["val_loss"].mean()),
                            "test_loss_mean": float(runs["test_loss"].mean()),
                            "test_acc_mean": float(runs["test_acc"].mean()), **metrics})
        best[str(P)] = entries
    write_json(run_dir / "best.json", best)
    return best


# ----------------------------------------------------------------------------------------------------------------

def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    frames = []
    for P in s.P:
        found = [grid(s, P, run_dir, data, res)]
        if s.trials:
            found.append(optuna_stage(s, P, run_dir, data, res))
            found.append(confirm(s, P, pd.concat(found, ignore_index=True), run_dir, data, res))
        frames += found
    trials = pd.concat(frames, ignore_index=True)
    write_csv(run_dir / "trials.csv", trials)
    best = export(run_dir, trials)
    return answers.write(run_dir, trials, best)


def report(run_dir: Path, out: Path | None = None) -> None:
    answers.write_report(run_dir, Path(out or run_dir), read_table(run_dir / "trials.csv"))


def tables(s: Settings) -> list[Table]:
    """trials.csv: per P, the depth grid's nets and Optuna's trials, then up to two runs (with and without weight
    decay) per seed of each confirmed configuration (the best confirm_top and each shape family's best)."""
    found = sum((1 + len(closed_form.depth_grid(P, s.max_depth))) * s.seeds + s.trials for P in s.P)
    confirmed = len(s.P) * (s.confirm_top + len(s.shapes)) * s.confirm_seeds * 2 if s.trials else 0
    return [Table("trials.csv", ("P", "stage", *CONFIG, "seed", "params", "val_loss", "test_loss", "test_acc",
                                 "final_train_loss", "error", "stopped_early", "member", "checkpoint"),
                  range(found, found + confirmed + 1),
                  finite=("val_loss", "test_loss", "test_acc", "final_train_loss"))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, report, tables)
