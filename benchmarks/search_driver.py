"""The search's cost to the driver and the quality of what it finds: seconds the Tune driver spends asking,
reporting and telling 1,000 Optuna trials (the nets' training left out), and the best validation loss found,
against the same searcher with Optuna's TPE asked member by member (as the searcher sampled before) and against
Optuna's own ask/report/tell loop over the same trials.

While the driver asks Optuna or writes the journal, no population's results are taken in, so this cost adds to a
GPU run's wall time. Every path uses the budget study's stage-2 space at P parameters, a journal file, --epochs
intermediate values a trial and the same stopping: successive halving at epochs 1, 2, 4, 8 keeps the better half.
The losses are synthetic (a smooth function of lr, weight decay, depth, activation and shape family plus uniform
noise), so TPE has something to model. Each --seeds seed runs every path with that seed; the best losses are
compared paired by seed. A last run fixes the shape family per member, round-robin (`strata`), with halving
within each family, as the budget study's balanced design does. CPU only; no Ray.

    python benchmarks/search_driver.py                 # 1,000 trials, populations of 128, seeds 0 1 2
"""

import argparse
import functools
import math
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna

from tune_mnist import settings, stats
from tune_mnist.studies import budget
from tune_mnist.tuning import members as report_format
from tune_mnist.tuning import search

# the budget study's stage-2 space, as its TOML sets it, over depths 1 to 3
SPACE = budget.optuna_space(settings.Space(budget.Settings, "budget").settings(argparse.Namespace()), (1, 2, 3))
SHAPES = {"shape": SPACE["shapes"]}


def loss(member: dict, epoch: int, rng: random.Random) -> float:
    """Lowest at lr 1e-3, k small, weight decay small, relu, a non-uniform shape; falls as 1/epoch."""
    return ((math.log10(member["lr"]) + 3) ** 2 + 0.02 * member["k"] + 1e2 * member["weight_decay"]
            + 0.05 * (member["activation"] != "relu") + 0.05 * (member["shape"] == "uniform") + 1 / epoch
            + 0.05 * rng.random())


def populations(P: int, trials: int, size: int, epochs: int, folder: Path, seed: int, **options
                ) -> tuple[float, float, optuna.Study]:
    """PopulationSearch as Ray Tune drives it: suggest, a result an epoch, complete. With strata, halving ranks
    each stratum's members among themselves."""
    searcher = search.PopulationSearch(functools.partial(budget.define_space, P=P, space=SPACE),
                                       functools.partial(budget.define_population, P=P, space=SPACE),
                                       n_trials=trials, size=size, journal_path=folder / "optuna.journal",
                                       study_name="driver", shared={}, seed=seed, **options)
    keep, rng, start, cpu = budget.halving(1, 2, epochs), random.Random(seed), time.perf_counter(), time.process_time()
    for number in range(trials):
        config = searcher.suggest(f"t{number}")
        if config == searcher.FINISHED:
            break
        members, alive = config["members"], list(range(len(config["members"])))
        for epoch in range(1, epochs + 1):
            losses = {i: loss(members[i], epoch, rng) for i in alive}
            families: dict[str, list[int]] = {}  # halving's groups: a shape family each with strata, else one
            for i in alive:
                families.setdefault(members[i]["shape"] if "strata" in options else "", []).append(i)
            kept = {part[j] for part in families.values() for j in keep(epoch, [{"val_loss": losses[i]} for i in part])}
            result = report_format.encode({i: {"epoch": epoch, "val_loss": losses[i],
                                               **({"stopped_early": 1} if i not in kept and epoch < epochs else {})}
                                           for i in alive})
            alive = [i for i in alive if i in kept]
            (searcher.on_trial_result if epoch < epochs else searcher.on_trial_complete)(f"t{number}", result)
    return time.perf_counter() - start, time.process_time() - cpu, searcher.study


def optuna_loop(P: int, trials: int, epochs: int, folder: Path, seed: int) -> tuple[float, float, optuna.Study]:
    """Optuna alone, one trial at a time, its successive-halving pruner stopping trials at the same rungs."""
    study = optuna.create_study(storage=search.journal(folder / "optuna.journal"), study_name="driver",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
    rng, start, cpu = random.Random(seed), time.perf_counter(), time.process_time()
    for _ in range(trials):
        trial = study.ask()
        member = budget.define_space(trial, P, SPACE)
        state, value = optuna.trial.TrialState.COMPLETE, None
        for epoch in range(1, epochs + 1):
            value = loss(member, epoch, rng)
            trial.report(value, epoch)
            if epoch < epochs and trial.should_prune():
                state = optuna.trial.TrialState.PRUNED
                break
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    return time.perf_counter() - start, time.process_time() - cpu, study


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--P", type=int, default=100_000)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--population", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="search-driver-"))
    print(f"CPU ({os.cpu_count()} cores), optuna={optuna.__version__}; {args.trials} trials, populations of "
          f"{args.population}, seeds 0-{args.seeds - 1}", flush=True)
    runs = {
        "ours": functools.partial(populations, args.P, args.trials, args.population, args.epochs),
        "TPE member by member": functools.partial(populations, args.P, args.trials, args.population, args.epochs,
                                                  sampler=lambda seed: optuna.samplers.TPESampler(seed=seed)),
        "Optuna's own loop": functools.partial(optuna_loop, args.P, args.trials, args.epochs),
        "ours, shape round-robin": functools.partial(populations, args.P, args.trials, args.population, args.epochs,
                                                     strata=SHAPES),
    }
    seconds, cpu, best = ({name: [] for name in runs} for _ in range(3))
    for seed in range(args.seeds):
        for i, (name, run) in enumerate(runs.items()):
            (folder / f"{i}-{seed}").mkdir()
            elapsed, used, study = run(folder / f"{i}-{seed}", seed)
            seconds[name].append(elapsed)
            cpu[name].append(used)
            best[name].append(study.best_value)
            complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            shapes = Counter(t.params.get("shape", "uniform") for t in complete)
            print(f"seed {seed}  {name}: {elapsed:.1f} s of the driver ({used:.1f} s CPU), best val loss "
                  f"{study.best_value:.4f}, finished per shape {dict(sorted(shapes.items()))}", flush=True)
    for name in runs:
        print(f"{name}: {sum(seconds[name]) / args.seeds:.1f} s ({sum(cpu[name]) / args.seeds:.1f} s CPU) for "
              f"{args.trials} trials, best val loss {stats.mean_interval(best[name])}", flush=True)
    loop = "Optuna's own loop"
    print(f"ours / {loop}: {sum(seconds['ours']) / sum(seconds[loop]):.2f} of its driver time "
          f"({sum(cpu['ours']) / sum(cpu[loop]):.2f} of its CPU time)", flush=True)
    for other in ("TPE member by member", "Optuna's own loop", "ours, shape round-robin"):
        difference = stats.paired_difference(best[other], best["ours"])
        print(f"best val loss, {other} minus ours, paired by seed: {difference}", flush=True)


if __name__ == "__main__":
    main()
