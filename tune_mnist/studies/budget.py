"""budget: at a fixed parameter count P, which MLP shape trains best?

Stage 1, the depth grid: uniform nets of depth k = 1, 2, 3, 4, 6, 8, ... at width m_P(k), and the 7,850-parameter
linear model (k = 0) as the reference, each depth one population of a learning-rate sweep x seeds; each depth keeps
the lr with the lowest validation loss, and a depth whose training loss stays at chance is marked as not trained.
Stage 2, the search: at the best depth of stage 1 and its neighbours, Optuna over layer-size vectors held within 1%
of P, activation, lr and weight decay, one study per depth; each Ray trial trains a population of Optuna trials of
one depth and activation in which every shape family and weight-decay choice (off, on) has the same number of
members, and successive halving stops the worst of each family alike, so every family finishes as many trials.
Stage 3, the confirmation: each depth's best net of each family, the best of each family at any depth, the best
without and with weight decay and the best few overall are trained again on evaluation seeds that no choice saw,
so that the answers are differences paired by seed with intervals (budget_report.py).

    python -m tune_mnist budget --P 25000 50000 100000 --trials 64
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
import pandas as pd
from annotated_types import Le
from ray import tune

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
from tune_mnist.studies import budget_answers as answers, budget_design as design, budget_report

NAME = "budget"
HELP = "fixed parameter budget: depth grid with an lr sweep, Optuna over shapes in balanced populations, confirmation"
SHAPES = ("uniform", "decreasing", "increasing", "free")
MAX_P = 10**9  # a billion parameters: far past MNIST's needs, and about what one GPU holds with Adam's state
MAX_DEPTH = 1000  # the deepest search: far past where an MLP without normalisation still trains


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
    lrs: NonEmpty[Positive]
    activation: Activation
    depth_window: Annotated[NonNegativeInt, Le(MAX_DEPTH)]
    search_depths: list[Annotated[PositiveInt, Le(MAX_DEPTH)]]
    trials: NonNegativeInt
    search_population: PositiveInt
    shapes: NonEmpty[Literal[SHAPES]]
    activations: NonEmpty[Activation]
    ratio: Pair[Positive]
    lr_range: Pair[Positive]
    weight_decay_range: Pair[Positive]
    prune_grace: PositiveInt
    prune_factor: PositiveInt
    confirm_top: NonNegativeInt
    confirm_seeds: PositiveInt
    ablations: NonNegativeInt


def check(s: Settings) -> None:
    for P in s.P:
        require(P >= closed_form.MIN_P, f"P={P} is too small: the smallest MLP (k=1, m=1) has {closed_form.MIN_P} "
                                        "parameters")
        for k in s.search_depths:
            require(closed_form.holds(k, P), f"--search-depths {k}: no MLP of {k} hidden layers holds P={P} within 1%")
    if s.linear_run:
        require(os.path.isfile(os.path.join(s.linear_run, "trials.csv")),
                f"--linear-run {s.linear_run}: not a finished linear run (it has no trials.csv)")
    require("uniform" in s.shapes, "--shapes must include uniform: every shape is compared with it")
    strata = design.strata(s.shapes)
    for name in ("trials", "search_population"):
        require(getattr(s, name) % strata == 0,
                f"--{name.replace('_', '-')} must be a multiple of {strata} ({len(s.shapes)} shape families x "
                f"weight decay off and on), so that each gets the same number of trials; got {getattr(s, name)}")
    for name in ("ratio", "lr_range", "weight_decay_range"):
        low, high = getattr(s, name)
        require(low <= high, f"--{name.replace('_', '-')} {low:g} {high:g}: the low end must not exceed the high end")


# ----------------------------------------------------------------------------------------------------------------
# Trials: every stage's trial is a population of MLPs of one depth and activation

def trainable(config: dict[str, Any], data: Mnist) -> None:
    """A population of the config's members, each an MLP with its widths, lr and weight decay; in the search the
    population stops the worst members of each shape family and weight-decay choice alike."""
    entries = config["members"]
    members = [Member({"family": "mlp", "widths": closed_form.parse_widths(e["widths"]), "activation": e["activation"]},
                      seed=e["seed"], lr=e["lr"], weight_decay=e["weight_decay"]) for e in entries]
    cfg = TrainConfig(**config["train"])
    stops = None
    if config["stage"] == "search":
        saved = trial.load_state(tune.get_checkpoint())  # a resumed trial goes on with the members it had kept
        stops = halving(config["prune_grace"], config["prune_factor"], cfg.epochs,
                        [(e["shape"], e["weight_decay"] > 0) for e in entries], saved["ids"] if saved else None)
    trial.train(data, members, cfg, {"P": config["P"], "stage": config["stage"]}, halving=stops)


def halving(grace: int, factor: int, epochs: int, groups: Sequence[Any] | None = None,
            alive: Sequence[int] | None = None) -> trial.Halving:
    """Successive halving inside a population: at epochs grace, grace * factor, ... (before the last) only the best
    1/factor (rounded up), by validation loss, of each group's members go on, so groups of equal size keep equal
    numbers. `groups`: each member's group (None: one group); `alive`: the members still training where a trial
    resumes (None: all)."""
    rungs = {grace * factor ** i for i in range(64) if grace * factor ** i < epochs} if factor > 1 else set()
    labels = list(groups) if groups is not None else None
    ids = list(alive) if alive is not None else list(range(len(labels or [])))

    def keep(epoch: int, metrics: list[dict[str, Any]]) -> list[int]:
        nonlocal ids
        going = [r for r, m in enumerate(metrics) if "error" not in m]  # a diverged member goes in any case
        if epoch in rungs:
            by_group: dict[Any, list[int]] = {}
            for r in going:
                by_group.setdefault(labels[ids[r]] if labels else None, []).append(r)
            going = sorted(r for rs in by_group.values()
                           for r in sorted(rs, key=lambda r: metrics[r]["val_loss"])[:math.ceil(len(rs) / factor)])
        ids = [ids[r] for r in going] if labels else ids
        return going

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
                              keep=["P", "stage"], shown=["k", "widths", "lr", "seed"],
                              tensorboard=run_dir / "tensorboard" / f"P{P}-{stage}", prune=prune)


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: the depth grid, an lr sweep at each depth

def grid(s: Settings, P: int, run_dir: Path, data: Mnist, res: cluster.Resources) -> pd.DataFrame:
    entries = [entry(k, [closed_form.width_for(k, P)] * k if k else [], "uniform", s.activation, lr, 0.0, seed)
               for k in [0, *closed_form.depth_grid(P, s.max_depth)] for lr in s.lrs for seed in range(s.seeds)]
    # export reads the grid's checkpoints only where no confirmation stage follows
    return train_groups(s, P, "grid", by_population(entries, s.population), run_dir, data, res, prune=s.trials > 0)


def search_depths(s: Settings, P: int, grid_rows: pd.DataFrame) -> list[int]:
    """The depths the search covers: --search-depths, else the best depth of stage 1 and its neighbours."""
    if s.search_depths:
        return sorted(set(s.search_depths))
    best = design.best_depth(design.depth_table(grid_rows), P)
    return [] if best is None else design.window(best, s.depth_window, P)


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: Optuna at each depth, a population of trials at a time

def optuna_space(s: Settings, depths: Sequence[int]) -> dict[str, Any]:
    """What `define_space` reads: the depths and the settings that bound what Optuna may choose."""
    return {"depths": list(depths), **{k: getattr(s, k) for k in ("activations", "shapes", "ratio", "lr_range",
                                                                  "weight_decay_range")}}


def define_population(trial: optuna.Trial, P: int, space: dict[str, Any]) -> dict[str, Any]:
    """What a population's members share: depth and activation (the populations' study samples them)."""
    return {"k": trial.suggest_int("k", min(space["depths"]), max(space["depths"])),
            "activation": trial.suggest_categorical("activation", space["activations"])}


def define_space(trial: optuna.Trial, P: int, space: dict[str, Any]) -> dict[str, Any]:
    """Optuna define-by-run: depth and activation (its population's), shape family and weight decay off or on (its
    stratum), the family's profile, lr and weight decay; widths meet P by construction. At k = 1 every family's
    net is the one-layer net."""
    k, activation = define_population(trial, P, space).values()
    shape = trial.suggest_categorical("shape", space["shapes"])
    decay = trial.suggest_categorical("decay", design.DECAY)
    ratio = trial.suggest_float("ratio", *space["ratio"]) if shape in ("decreasing", "increasing") and k > 1 else 0.5
    free = [trial.suggest_float(f"r{i}", 0.05, 1.0) for i in range(k)] if shape == "free" and k > 1 else [1.0] * k
    lr = trial.suggest_float("lr", *space["lr_range"], log=True)
    weight_decay = trial.suggest_float("weight_decay", *space["weight_decay_range"], log=True) if decay == "on" else 0.0
    try:
        widths = closed_form.fit_profile(closed_form.profile(shape, k, ratio, free), P)
    except ValueError:  # at small P no widths of this family land within 1% of P: the member is the uniform net
        shape, widths = "uniform", closed_form.fit_widths([1.0] * k, P)
    return entry(k, widths, shape, activation, lr, weight_decay, seed=trial.number)


def search_stage(s: Settings, P: int, k: int, run_dir: Path, data: Mnist, res: cluster.Resources) -> pd.DataFrame:
    """The search at depth k: s.trials Optuna trials in populations whose members cycle through the strata."""
    space, name = optuna_space(s, [k]), design.study_name(P, k)
    searcher = search.PopulationSearch(functools.partial(define_space, P=P, space=space),
                                       functools.partial(define_population, P=P, space=space), n_trials=s.trials,
                                       size=s.search_population, journal_path=run_dir / "optuna.journal",
                                       study_name=name, shared=shared(s, P, "search"),
                                       strata={"shape": s.shapes, "decay": list(design.DECAY)})
    found = runner.run(trainable, run_dir, f"P{P}-search-k{k}", res, data, num_samples=s.trials, search_alg=searcher,
                       param_space={search.JOURNAL: str(run_dir / "optuna.journal")},
                       shown=["k", "activation", "population"], total=math.ceil(s.trials / s.search_population),
                       nets=s.trials, tensorboard=run_dir / "tensorboard" / f"P{P}-search-k{k}",
                       hparams=["P", "stage"], prune=True)
    rows = runner.member_rows(runner.rows(found, ["P", "stage", "members"]))
    return rows.assign(config=[design.config_id(P, k, n) for n in rows["number"]])


# ----------------------------------------------------------------------------------------------------------------
# Stage 3: the chosen configurations again, on evaluation seeds

def confirm(s: Settings, P: int, searched: pd.DataFrame, run_dir: Path, data: Mnist,
            res: cluster.Resources) -> pd.DataFrame:
    """Each chosen configuration (budget_design.choose) on every evaluation seed, and the `ablations` best of those
    with weight decay also without it."""
    chosen = design.choose(searched, s.confirm_top).sort_values(["val_loss", "number"])
    ablated = set(chosen.loc[chosen["weight_decay"] > 0, "config"].head(s.ablations))
    entries = []
    for c in chosen.itertuples():
        decays = [c.weight_decay, 0.0] if c.config in ablated else [c.weight_decay]
        for seed in design.evaluation_seeds(s.confirm_seeds):
            for decay in decays:
                e = entry(c.k, closed_form.parse_widths(c.widths), c.shape, c.activation, c.lr, decay, seed)
                entries.append({**e, "config": c.config, "roles": c.roles, "selection_val_loss": c.val_loss,
                                "ablation": int(decay != c.weight_decay)})
    return train_groups(s, P, "confirm", by_population(entries, s.population), run_dir, data, res)


# ----------------------------------------------------------------------------------------------------------------
# Exports: the confirmed best per P

def export(run_dir: Path, trials: pd.DataFrame, top: int = 1, onnx: bool = False) -> dict[str, Any]:
    """The top-N confirmed configurations per P (ranked by the search's validation loss) to
    run_dir/best/P<P>/rank<N>.safetensors (the evaluation seed with the lowest validation loss; weights, spec and
    metrics in one file) and, with `onnx`, to rank<N>.onnx beside it, listed in best.json; then REPORT.md again,
    which lists them."""
    best: dict[str, Any] = {}
    for P, part in answers.confirmed(trials).groupby("P"):
        entries = []
        for rank, runs in enumerate(answers.ranked(part)[:top], start=1):
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
    if (run_dir / "REPORT.md").is_file():
        report(run_dir)
    return best


# ----------------------------------------------------------------------------------------------------------------

def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    frames = []
    for P in s.P:
        stage1 = grid(s, P, run_dir, data, res)
        frames.append(stage1)
        if s.trials:
            searched = [search_stage(s, P, k, run_dir, data, res) for k in search_depths(s, P, stage1)]
            if searched:
                frames += [*searched, confirm(s, P, pd.concat(searched, ignore_index=True), run_dir, data, res)]
    trials = pd.concat(frames, ignore_index=True)
    write_csv(run_dir / "trials.csv", trials)
    best = export(run_dir, trials)
    return budget_report.write(run_dir, trials, best)


def report(run_dir: Path, out: Path | None = None) -> None:
    budget_report.write_report(run_dir, Path(out or run_dir), read_table(run_dir / "trials.csv"))


def tables(s: Settings) -> list[Table]:
    """trials.csv: per P, the depth grid's nets (every lr and seed at each depth), then, where a depth trained, the
    search's trials at each depth it covers and up to two runs (with and without weight decay) per evaluation seed
    of each chosen configuration."""
    grid = sum((1 + len(closed_form.depth_grid(P, s.max_depth))) * len(s.lrs) * s.seeds for P in s.P)
    depths = len(s.search_depths) or 2 * s.depth_window + 1
    chosen = depths * len(s.shapes) + len(s.shapes) + len(design.DECAY) + s.confirm_top
    most = len(s.P) * (depths * s.trials + (chosen + min(chosen, s.ablations)) * s.confirm_seeds) if s.trials else 0
    return [Table("trials.csv", ("P", "stage", *design.CONFIG, "seed", "params", "val_loss", "test_loss", "test_acc",
                                 "final_train_loss", "error", "stopped_early", "member", "checkpoint"),
                  range(grid, grid + most + 1), finite=("val_loss", "test_loss", "test_acc", "final_train_loss"))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, report, tables)
