"""Optuna trials a second: one net per Ray trial (Ray's OptunaSearch, ASHA stopping) against populations of Optuna
trials (the budget study's stage 2), the same search space, epochs, data and device, in one process.

Both search the budget study's space at P parameters for --epochs epochs on the full training split. The single
path is how Optuna usually runs under Ray Tune: OptunaSearch asks one trial at a time, each trains one net, ASHA
stops bad trials. The population path asks --population trials at once, trains them as one stacked model per Ray
trial and stops members by successive halving inside it. Printed: each path's trials, wall seconds and trials/s,
their ratio, and the useful FLOP rate (6 x parameters x images a training epoch, 2 x an evaluated image; padding
and the optimizer not counted) against the device's dense TF32 rate where known.

    python benchmarks/optuna_trials.py                      # GPU: 48 single trials, 1,000 in populations of 128
    python benchmarks/optuna_trials.py --trials-single 8 --trials 16 --population 8 --train-limit 10000   # CPU
"""

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
import torch
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tune_mnist import data, settings
from tune_mnist.studies import budget
from tune_mnist.train import TrainConfig
from tune_mnist.tuning import cluster, runner, search

DENSE_TF32 = {"H100": 494.7e12, "H200": 494.7e12}  # dense TF32 FLOP/s of the SXM parts (no sparsity)


# the budget study's stage-2 space, as its TOML sets it, over depths 1 to 3
SPACE = budget.optuna_space(settings.Space(budget.Settings, "budget").settings(argparse.Namespace()), (1, 2, 3))


def shared(P: int, epochs: int) -> dict:
    return {"P": P, "stage": "search", "train": TrainConfig(epochs=epochs, batch_size=128, optimizer="adam").as_dict(),
            "prune_grace": 1, "prune_factor": 2}


def single_config(trial, P: int, epochs: int) -> dict:
    """Ray's OptunaSearch, define-by-run: one member per Ray trial."""
    entry = budget.define_space(trial, P, SPACE)
    return {**shared(P, epochs), "members": [entry]}


def useful_flops(rows: pd.DataFrame, n_train: int, n_eval: int) -> float:
    epochs = rows["epoch"].fillna(0)
    finals = (rows["stopped_early"].fillna(0) == 0) * n_train  # the last epoch's pass over the training split
    return float((rows["params"] * (6 * n_train * epochs + 2 * n_eval * epochs + 2 * finals)).sum())


def run(name: str, searcher, scheduler, trials: int, run_dir: Path, mnist, res: cluster.Resources
        ) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    grid = runner.run(budget.trainable, run_dir, name, res, mnist, num_samples=trials, search_alg=searcher,
                      scheduler=scheduler, shown=["population"])
    return time.perf_counter() - start, runner.member_rows(runner.rows(grid, ["members"]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--P", type=int, default=100_000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--trials-single", type=int, default=48)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--population", type=int, default=128)
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--gpus-per-trial", type=float, default=0.5)
    args = p.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"device={device} torch={torch.__version__} ray={ray.__version__}", flush=True)
    mnist = data.subset(data.load(), args.train_limit or None)
    n_train, n_eval = len(mnist.train_x), len(mnist.val_x) + len(mnist.test_x)
    cluster.connect("local")
    res = cluster.Resources(gpus_per_trial=args.gpus_per_trial if gpu else 0.0)
    folder = Path(tempfile.mkdtemp(prefix="optuna-trials-"))
    asha = ASHAScheduler(time_attr="training_iteration", max_t=args.epochs, grace_period=1, reduction_factor=2)
    single = OptunaSearch(space=functools.partial(single_config, P=args.P, epochs=args.epochs), metric="val_loss",
                          mode="min", seed=0)
    populations = search.PopulationSearch(functools.partial(budget.define_space, P=args.P, space=SPACE),
                                          functools.partial(budget.define_population, P=args.P, space=SPACE),
                                          n_trials=args.trials, size=args.population,
                                          journal_path=folder / "optuna.journal", study_name="benchmark",
                                          shared=shared(args.P, args.epochs))
    results = {}
    for name, searcher, scheduler, trials in (("single", single, asha, args.trials_single),
                                              ("populations", populations, None, args.trials)):
        seconds, rows = run(name, searcher, scheduler, trials, folder, mnist, res)
        flops = useful_flops(rows, n_train, n_eval)
        peak = next((v for k, v in DENSE_TF32.items() if k in device), None)
        share = f", {100 * flops / seconds / peak:.1f}% of dense TF32" if peak else ""
        results[name] = len(rows) / seconds
        print(f"{name}: {len(rows)} Optuna trials in {seconds:.1f} s = {results[name]:.2f} trials/s; "
              f"{rows['stopped_early'].sum()} stopped early; useful {flops / seconds / 1e12:.2f} TFLOP/s{share}",
              flush=True)
    print(f"populations / single: x{results['populations'] / results['single']:.1f} trials/s  "
          f"(P={args.P}, {args.epochs} epochs, {n_train} training images, populations of {args.population})",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
