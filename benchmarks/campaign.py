"""The robustness campaign through the real `corruption` command: 3 activations x 2 families
(MLP 1024-512-256, 15 epochs; CNN 32-64-128, 20 epochs) x 10 values of p x 40 repeats = 2,400 runs.

One 10-minute command cannot hold it all, so this times a slice — every activation, family and p, with
--repeats R of the 40 — and extrapolates. With R * 10 a multiple of --population, the slice's trials are
the campaign's, R/40 as many. The command's own start and finish (Ray, the estimate, data, results and
plots) are paid once whatever the size, so the extrapolation is that fixed part plus the Tune run
(which the study prints as "[grid] N trials in S s") times 40/R.

Triton compiles each kernel once per machine (its cache is on disk), seconds apiece: 17 for the CNN's
three activations (the corruption kernel, then per activation the first block's two and each inner
block's forward; the inner backwards do not depend on it). So each family first runs a one-epoch,
one-repeat warm-up of the same command, counted once.

    python benchmarks/campaign.py --repeats 4 --population 40 --gpus-per-trial 0.5
"""

import argparse
import re
import subprocess
import sys
import time

P = ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--population", type=int, default=40)
    p.add_argument("--gpus-per-trial", default="0.5")
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
        cmd += ["--repeats", str(args.repeats), "--epochs", epochs, "--name", f"campaign-{family}-{int(time.time())}"]
        start = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - start
        tune = re.search(r"^\[grid\] (\d+) trials in ([\d.]+) s", done.stdout, re.M)
        summary = [line for line in done.stdout.splitlines() if line.startswith("STUDY=")]
        if done.returncode or not tune:
            sys.exit(f"{family}: the study failed (rc={done.returncode}): {done.stderr[-2000:]}")
        trials, tuned = int(tune[1]), float(tune[2])
        campaign = wall - tuned + tuned * 40 / args.repeats
        total += campaign
        print(f"{family}: {3 * len(P) * args.repeats} runs in {wall:.0f} s: {trials} trials in {tuned:.0f} s, the "
              f"command's start and finish {wall - tuned:.0f} s -> 1,200 runs in about {campaign / 60:.1f} min   "
              f"{summary[-1] if summary else ''}", flush=True)
    print(f"campaign of 2,400 runs, extrapolated from R={args.repeats} of 40 repeats, warm-ups counted once: "
          f"{total / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
