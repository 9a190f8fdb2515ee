"""budget: at a fixed parameter count P, which MLP shape trains best?

Stage 1 is a grid over depth k with the uniform width m_P(k) (plus the 7,850-parameter linear model,
k = 0, as the reference); stage 2 is Optuna over layer-size vectors (uniform, decreasing, increasing,
free) held within 1% of P by construction, with ASHA stopping the bad ones early.

    python -m tune_mnist budget --P 25000 50000 100000 --trials 30
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tune_mnist import budget, driver, plots, storage
from tune_mnist.data import Mnist
from tune_mnist.errors import require
from tune_mnist.files import atomic_write, read_table, write_csv, write_json
from tune_mnist.models import ACTIVATIONS

NAME = "budget"
HELP = "fixed parameter budget: depth grid, then Optuna over layer-size vectors"
COLUMNS = ["P", "stage", "k", "widths", "shape", "activation", "lr", "weight_decay", "seed"]


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that survives `--resume` after a hard kill.

    A trial that finished between Ray's last experiment snapshot and the kill was already told to
    Optuna (the journal is written at once); Ray runs it again on resume, and Ray's OptunaSearch then
    reports to a finished Optuna trial, which raises and stops the study. Its first result stands.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)  # Ray's own guard: later results and completion are dropped


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--P", type=int, nargs="+", help="parameter budgets (default 100000; smallest 805)")
    p.add_argument("--trials", type=int, help="Optuna trials per P in stage 2 (default 12; 0 skips stage 2)")
    p.add_argument("--seeds", type=int, help="seeds per depth in stage 1 (default 2)")
    driver.add_population_argument(p, "stage-1 seeds of a depth")
    p.add_argument("--max-depth", type=int, help="largest k of the stage-1 grid (default 32)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default 5)")
    p.add_argument("--activation", help="stage-1 activation (default tanh)")
    p.add_argument("--linear-run", help="a finished `linear` run whose best training loss is the plot's reference "
                                        "(default: this run's own k=0 trials)")


def check(s: dict[str, Any]) -> None:
    for P in s["P"]:
        require(P >= budget.MIN_P, f"P={P} is too small: the smallest MLP (k=1, m=1) has {budget.MIN_P} parameters")
    require(s["trials"] >= 0, f"--trials must be >= 0, got {s['trials']}")
    require(s["seeds"] >= 1, f"--seeds must be >= 1, got {s['seeds']}")
    require(s["max_depth"] >= 1, f"--max-depth must be >= 1, got {s['max_depth']}")
    driver.check_population(s)
    require(s["epochs"] >= 1, f"--epochs must be >= 1, got {s['epochs']}")
    for act in [s["activation"], *s["activations"]]:
        require(act in ACTIVATIONS, f"unknown activation {act!r}; choose from {', '.join(ACTIVATIONS)}")
    if s.get("linear_run"):
        require((Path(s["linear_run"]) / "trials.csv").is_file(), f"{s['linear_run']} is not a finished linear run")
    for shape in s["shapes"]:
        require(shape in ("uniform", "decreasing", "increasing", "free"), f"unknown shape family {shape!r}")


def widths_of(config: dict[str, Any]) -> list[int]:
    if "widths" in config:
        return budget.parse_widths(config["widths"])
    k = config["k"]
    return [budget.width_for(k, config["P"])] * k if k else []


def net(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's MLP spec and the columns that describe it."""
    widths = widths_of(config)
    if config["stage"] == "optuna":  # stage 1 takes m_P(k) as it is: the closest uniform net can miss by more
        params = budget.count(widths)
        if abs(params - config["P"]) > budget.TOLERANCE * config["P"]:
            raise ValueError(f"widths {widths} have {params} parameters, more than 1% from P={config['P']}")
    spec = {"family": "mlp", "widths": widths, "activation": config["activation"]}
    return spec, {"P": config["P"], "k": len(widths), "widths": budget.format_widths(widths),
                  "shape": config.get("shape", "uniform"), "stage": config["stage"]}


def trainable(config: dict[str, Any], data: Mnist) -> None:
    driver.train_in_trial(config, data, *net(config))


def population_trainable(config: dict[str, Any], data: Mnist) -> None:
    spec, extra = net(config)
    driver.train_population_in_trial(config, data, spec, extra)


def training(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("epochs", "batch_size", "optimizer")}


def define_space(trial: optuna.Trial, P: int, s: dict[str, Any]) -> dict[str, Any]:
    """Optuna define-by-run: depth, shape family, activation, lr and weight decay; widths meet P by construction."""
    depths = budget.feasible_depths(P, s["optuna_max_depth"])
    k = trial.suggest_int("k", depths[0], depths[-1])
    shape = trial.suggest_categorical("shape", s["shapes"]) if k > 1 else "uniform"
    ratio = trial.suggest_float("ratio", *s["ratio"]) if shape in ("decreasing", "increasing") else 0.5
    free = [trial.suggest_float(f"r{i}", 0.05, 1.0) for i in range(k)] if shape == "free" else []
    trial.suggest_categorical("activation", s["activations"])
    trial.suggest_float("lr", *s["lr_range"], log=True)
    trial.suggest_float("weight_decay", *s["weight_decay_range"], log=True)
    try:
        widths = budget.fit_widths(budget.profile(shape, k, ratio, free), P)
    except ValueError:  # at small P a steep shape can round past 1%; the uniform net at this depth cannot
        shape, widths = "uniform", budget.fit_widths([1.0] * k, P)
    return {**training(s), "P": P, "stage": "optuna", "seed": trial.number, "shape": shape,
            "widths": budget.format_widths(widths)}


def run_stages(P: int, s: dict[str, Any], run_dir: Path, data: Mnist, res: driver.Resources) -> pd.DataFrame:
    grid_space = {**training(s), "P": P, "stage": "grid", "activation": s["activation"], "lr": s["lr"],
                  "weight_decay": 0.0, "k": tune.grid_search([0, *budget.depth_grid(P, s["max_depth"])])}
    frames = [driver.run_grouped(trainable, population_trainable, run_dir, f"P{P}-grid", res, data, grid_space,
                                 runs=[{"seed": seed} for seed in range(s["seeds"])], requested=s["population"],
                                 keep=COLUMNS[:-1], shown=["k", "seed", "widths"],
                                 tensorboard=run_dir / "tensorboard" / f"P{P}-grid")]
    if s["trials"]:
        search = ResumableOptunaSearch(
            space=functools.partial(define_space, P=P, s=s), metric="val_loss", mode="min", seed=0,
            study_name=f"budget-P{P}",
            storage=optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str((run_dir / "optuna.journal").resolve()))),
        )
        asha = ASHAScheduler(time_attr="training_iteration", max_t=s["epochs"], grace_period=1, reduction_factor=2)
        found = driver.run(trainable, run_dir, f"P{P}-optuna", res, data,
                           num_samples=s["trials"], search_alg=search, scheduler=asha,
                           shown=["widths", "activation", "epoch"])
        frames.append(driver.rows(found, COLUMNS))
    return pd.concat(frames, ignore_index=True)


def reference(trials: pd.DataFrame, linear_run: str | None) -> tuple[str, float] | None:
    """The 7,850-parameter linear model's training loss: a linear run's best, else this run's k=0 trials."""
    if linear_run:
        linear = read_table(Path(linear_run) / "trials.csv")
        return "linear study best (7,850 params)", float(linear["final_train_loss"].min())
    own = trials[(trials["stage"] == "grid") & (trials["k"] == 0) & trials["error"].eq("")]
    return ("linear, same training (7,850 params)", float(own["final_train_loss"].min())) if len(own) else None


def draw(trials: pd.DataFrame, path: Path, linear_run: str | None = None) -> None:
    """Final train and test loss against depth, one curve per P, the linear model as a reference line."""
    grid = trials[(trials["stage"] == "grid") & trials["error"].eq("")]
    uniform = grid[grid["k"] > 0].groupby(["P", "k"], as_index=False)[["final_train_loss", "test_loss"]].mean()
    plots.lines(path, uniform, "k", ["final_train_loss", "test_loss"], "P", logx=True,
                title="Loss vs depth at a fixed parameter budget", reference=reference(trials, linear_run))


def report(run_dir: Path, out: Path | None = None) -> None:
    from tune_mnist import runs

    draw(read_table(run_dir / "trials.csv"), Path(out or run_dir) / "loss_vs_k.png",
         runs.read(run_dir)["args"].get("linear_run"))


def export(run_dir: Path, trials: pd.DataFrame, top: int = 1) -> dict[str, Any]:
    """Copies the top-N trials per P (by val loss) to run_dir/best/, with best.json listing them."""
    ok = trials[trials["error"].eq("") & trials["checkpoint"].ne("") & trials["k"].gt(0)]
    best: dict[str, Any] = {}
    for P, part in ok.groupby("P"):
        entries = []
        for rank, row in enumerate(part.nsmallest(top, "val_loss").itertuples(), start=1):
            target = run_dir / "best" / f"P{P}" / f"rank{rank}.pt"
            atomic_write(target, functools.partial(storage.fetch, f"{row.checkpoint}/model.pt"))
            entries.append({"rank": rank, "file": str(target.relative_to(run_dir)), "widths": row.widths,
                            "k": row.k, "params": row.params, "shape": row.shape, "activation": row.activation,
                            "val_loss": row.val_loss, "test_loss": row.test_loss, "test_acc": row.test_acc,
                            "trial_id": row.trial_id})
        best[str(P)] = entries
    write_json(run_dir / "best.json", best)
    return best


def run(s: dict[str, Any], run_dir: Path, data: Mnist, res: driver.Resources) -> dict[str, Any]:
    trials = pd.concat([run_stages(P, s, run_dir, data, res) for P in s["P"]], ignore_index=True)
    write_csv(run_dir / "trials.csv", trials)
    report(run_dir)
    best = export(run_dir, trials)
    summary: dict[str, Any] = {"trials": len(trials), "errors": int(trials["error"].ne("").sum())}
    for P, entries in best.items():
        if entries:
            summary[f"P{P}_best"] = f"{entries[0]['widths']}/{entries[0]['activation']}"
            summary[f"P{P}_test_acc"] = round(entries[0]["test_acc"], 4)
    return summary
