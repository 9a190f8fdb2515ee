"""The robustness campaign through the real `corruption` command: 3 activations x 2 families
(MLP 1024-512-256, 15 epochs; CNN 32-64-128, 20 epochs) x 10 values of p x 40 repeats = 2,400 runs.

One 10-minute command cannot hold it all, so this times a slice — every activation, family and p, with
--repeats R of the 40 — and extrapolates. With R * 10 a multiple of --population, the slice's trials are
the campaign's, R/40 as many. The command's own start and finish (Ray, the estimate, data, the trial
worker's start, results and plots) are paid once whatever the size, so the extrapolation is that fixed
part plus the trials' span (first start to last report, from each trial's time_total_s and reported_at in
results_per_run.csv) times 40/R. The first trial's CUDA start in its worker (a few seconds) is counted
40/R times: the figure errs high.

Triton compiles each kernel once per machine (its cache is on disk), seconds apiece: 15 for the CNN's
three activations (the corruption kernel, the backwards, and per activation each block's forward). So
each family first runs a one-epoch, one-repeat warm-up of the same command, counted once.

    python benchmarks/campaign.py --repeats 4 --population 40
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

P = ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--population", type=int, default=40)
    p.add_argument("--gpus-per-trial", default="1", help="2 trials a GPU (0.5) measured no faster")
    p.add_argument("--families", nargs="+", default=["mlp", "cnn"])
    p.add_argument("--no-warm-up", dest="warm_up", action="store_false")
    args = p.parse_args()
    total = 0.0
    for family, epochs in (("mlp", "15"), ("cnn", "20")):
        if family not in args.families:
            continue
        cmd = [sys.executable, "-m", "tune_mnist", "corruption", "--families", family, "--activations", "relu",
               "tanh", "gelu", "--p", *P, "--mlp-widths", "1024", "512", "256", "--cnn-channels", "32", "64", "128",
               "--batch-size", "128", "--population", str(args.population), "--gpus-per-trial", args.gpus_per_trial]
        if args.warm_up:
            start = time.time()
            subprocess.run([*cmd, "--repeats", "1", "--epochs", "1", "--name", f"warm-up-{family}-{int(start)}"],
                           capture_output=True, check=True)
            warm_up = time.time() - start
            total += warm_up
            print(f"{family}: warm-up (1 repeat, 1 epoch: Triton compiles, Ray start) {warm_up:.0f} s", flush=True)
        name = f"campaign-{family}-{int(time.time())}"
        start = time.time()
        done = subprocess.run([*cmd, "--repeats", str(args.repeats), "--epochs", epochs, "--name", name],
                              capture_output=True, text=True)
        wall = time.time() - start
        if done.returncode:
            sys.exit(f"{family}: the study failed (rc={done.returncode}): {done.stderr[-2000:]}")
        runs = pd.read_csv(Path("results/corruption") / name / "results_per_run.csv")
        trials = runs.groupby("trial_id").agg(end=("reported_at", "max"), seconds=("seconds", "max"))
        span = trials["end"].max() - (trials["end"] - trials["seconds"]).min()
        campaign = wall - span + span * 40 / args.repeats
        total += campaign
        summary = [line for line in done.stdout.splitlines() if line.startswith("STUDY=")]
        print(f"{family}: {len(runs)} runs in {wall:.0f} s: {len(trials)} trials spanning {span:.0f} s "
              f"({', '.join(f'{s:.0f}' for s in trials['seconds'])} s each), the command's start and finish "
              f"{wall - span:.0f} s -> 1,200 runs in about {campaign / 60:.1f} min   {summary[-1]}", flush=True)
    print(f"campaign of 2,400 runs, extrapolated from R={args.repeats} of 40 repeats, warm-ups counted once: "
          f"{total / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
