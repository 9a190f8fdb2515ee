"""The search's cost to the driver: seconds the Tune driver spends asking, reporting and telling 1,000 Optuna trials,
the nets' training left out, against Optuna's own ask/report/tell loop over the same trials.

While the driver asks Optuna (TPE models the whole history on every suggest) or writes the journal (one fsync a
write), no population's results are taken in, so this cost adds to a GPU run's wall time. Both paths use the
budget study's stage-2 space at P parameters, a journal file, --epochs intermediate values a trial, and the same
stopping: successive halving at epochs 1, 2, 4, 8 keeps the better half. The losses are synthetic (a smooth
function of lr, weight decay and depth plus noise), so TPE has something to model. CPU only; no Ray.

    python benchmarks/search_driver.py                 # 1,000 trials, populations of 128
"""

import argparse
import functools
import math
import os
import random
import tempfile
import time
from pathlib import Path

import optuna

from tune_mnist import settings
from tune_mnist.studies import budget
from tune_mnist.tuning import search

# the budget study's stage-2 space, as its TOML sets it, over depths 1 to 3
SPACE = budget.optuna_space(settings.Space(budget.Settings, "budget").settings(argparse.Namespace()), (1, 2, 3))


def loss(member: dict, epoch: int, rng: random.Random) -> float:
    return ((math.log10(member["lr"]) + 3) ** 2 + 0.02 * member["k"] + 1e2 * member["weight_decay"] + 1 / epoch
            + 0.05 * rng.random())


def populations(P: int, trials: int, size: int, epochs: int, folder: Path) -> float:
    """PopulationSearch as Ray Tune drives it: suggest, a result an epoch, complete."""
    searcher = search.PopulationSearch(functools.partial(budget.define_space, P=P, space=SPACE),
                                       functools.partial(budget.define_population, P=P, space=SPACE),
                                       n_trials=trials, size=size, journal_path=folder / "populations.journal",
                                       study_name="driver", shared={})
    keep, rng, start = budget.halving(1, 2, epochs), random.Random(0), time.perf_counter()
    for number in range(trials):
        config = searcher.suggest(f"t{number}")
        if config == searcher.FINISHED:
            break
        members, alive = config["members"], list(range(len(config["members"])))
        for epoch in range(1, epochs + 1):
            metrics = [{"val_loss": loss(members[i], epoch, rng)} for i in alive]
            kept = {alive[j] for j in keep(epoch, metrics)}
            result = {}
            for i, m in zip(alive, metrics):
                result.update({f"m{i}/epoch": epoch, f"m{i}/val_loss": m["val_loss"]})
                result.update({f"m{i}/stopped_early": 1} if i not in kept and epoch < epochs else {})
            alive = [i for i in alive if i in kept]
            (searcher.on_trial_result if epoch < epochs else searcher.on_trial_complete)(f"t{number}", result)
    return time.perf_counter() - start


def optuna_loop(P: int, trials: int, epochs: int, folder: Path) -> float:
    """Optuna alone, one trial at a time, its successive-halving pruner stopping trials at the same rungs."""
    study = optuna.create_study(storage=search.journal(folder / "loop.journal"), study_name="driver",
                                sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
    rng, start = random.Random(0), time.perf_counter()
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
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--P", type=int, default=100_000)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--population", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="search-driver-"))
    print(f"CPU ({os.cpu_count()} cores), optuna={optuna.__version__}", flush=True)
    ours = populations(args.P, args.trials, args.population, args.epochs, folder)
    print(f"populations of {args.population}: {args.trials} trials in {ours:.1f} s of the driver", flush=True)
    loop = optuna_loop(args.P, args.trials, args.epochs, folder)
    print(f"Optuna's own loop: {args.trials} trials in {loop:.1f} s", flush=True)
    print(f"populations / Optuna's loop: {ours / loop:.2f} of its driver time", flush=True)


if __name__ == "__main__":
    main()
