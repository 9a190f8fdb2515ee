"""The robustness campaign through the real `corruption` command: 3 activations x 2 families
(MLP 1024-512-256, 15 epochs; CNN 32-64-128, 20 epochs) x 10 values of p x 40 repeats = 2,400 runs,
one command per family (their epochs differ), as a user would run it on a fresh machine. As in the campaign it
times, every activation trains at lr 1e-3 (`--lrs 1e-3`: one lr, so the study's lr sweep does not run).

One 10-minute command cannot hold a family's 1,200 runs, so this runs a slice of each — every activation and
p, with --repeats R of the 40 — and extrapolates. With R * 10 a multiple of --population, the slice's trials
are the campaign's (populations of the same size and shapes), R/40 as many. Each activation's first trial
pays what happens once (the worker's CUDA start, Triton compiling that activation's kernels), so R gives
each activation at least two trials: the campaign is the slice's whole command (start, trials, finish) plus,
per activation, the trials the slice lacks, each as long as that activation's later trials, plus the mean
gap between trials. The command's finish (results, TensorBoard runs, plots) is counted 40/R times, as if it all
grew with the runs: the figure errs high. Triton compiles into an empty cache of this run's own, as on a
fresh machine.

    python benchmarks/campaign.py --repeats 16 --population 80
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

P = ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
REPEATS = 40  # the campaign's


def extrapolate(runs: pd.DataFrame, started: float, ended: float, repeats: int, population: int) -> tuple[float, str]:
    """The full family's seconds from its slice's rows and its command's start and end, and a line on how."""
    trials = runs.groupby("trial_id").agg(activation=("activation", "first"), end=("reported_at", "max"),
                                          seconds=("seconds", "max")).sort_values("end")
    trials["start"] = trials["end"] - trials["seconds"]
    gap = max(0.0, (trials["start"].iloc[1:].to_numpy() - trials["end"].iloc[:-1].to_numpy()).mean())
    campaign_trials = REPEATS * len(P) // population
    added, parts = 0.0, []
    for act, part in trials.groupby("activation", sort=False):
        later = part["seconds"].iloc[1:].mean()
        added += (campaign_trials - len(part)) * (later + gap)
        parts.append(f"{act} {part['seconds'].iloc[0]:.0f} then {later:.1f} s")
    start, finish = trials["start"].min() - started, ended - trials["end"].max()
    span = trials["end"].max() - trials["start"].min()
    how = (f"{len(runs)} runs in {ended - started:.0f} s (start {start:.0f} s; trials: {', '.join(parts)}; "
           f"gap {gap:.1f} s; finish {finish:.0f} s)")
    return start + span + added + finish * REPEATS / repeats, how


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=16, help="of the 40; two trials per activation at least")
    p.add_argument("--population", type=int, default=80, help="80 members trained 8-9%% faster each than 40 on an "
                                                                  "H100; 120 no faster than 80")
    p.add_argument("--gpus-per-trial", default="1", help="2 trials a GPU (0.5) measured no faster")
    p.add_argument("--families", nargs="+", default=["mlp", "cnn"])
    p.add_argument("--warm-cache", action="store_true", help="use Triton's usual cache, not an empty one")
    args = p.parse_args()
    if args.repeats * len(P) % args.population or args.repeats * len(P) < 2 * args.population:
        sys.exit("--repeats x 10 must be a multiple of --population, and at least twice it")
    env = dict(os.environ)
    if not args.warm_cache:
        env["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-")
    total = 0.0
    for family, epochs in (("mlp", "15"), ("cnn", "20")):
        if family not in args.families:
            continue
        name = f"campaign-{family}-{int(time.time())}"
        started = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "tune_mnist", "corruption", "--families", family, "--activations", "relu", "tanh",
             "gelu", "--p", *P, "--mlp-widths", "1024", "512", "256", "--cnn-channels", "32", "64", "128",
             "--batch-size", "128", "--lrs", "1e-3", "--population", str(args.population), "--gpus-per-trial",
             args.gpus_per_trial, "--repeats", str(args.repeats), "--epochs", epochs, "--name", name],
            capture_output=True, text=True, env=env)
        ended = time.time()
        if done.returncode:
            sys.exit(f"{family}: the study failed (rc={done.returncode}): {done.stderr[-2000:]}")
        runs = pd.read_csv(Path("results/corruption") / name / "results_per_run.csv")
        campaign, how = extrapolate(runs, started, ended, args.repeats, args.population)
        total += campaign
        summary = [line for line in done.stdout.splitlines() if line.startswith("STUDY=")]
        waited = [line.split("[corruption] ")[1] for line in done.stdout.splitlines() if "kernels ready" in line]
        print(f"{family}: {how} -> 1,200 runs in about {campaign / 60:.1f} min   {summary[-1]}   {' '.join(waited)}",
              flush=True)
    print(f"campaign of 2,400 runs, extrapolated from R={args.repeats} of 40 repeats: {total / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
