"""The robustness campaign through the real `corruption` command: 3 activations x 2 families
(MLP 1024-512-256, 15 epochs; CNN 32-64-128, 20 epochs) x 10 values of p x 40 repeats = 2,400 runs.

One 10-minute command cannot hold it all, so this times a slice — every activation, family and p, with
--repeats R of the 40 — and extrapolates linearly in the repeats (R/40 of the runs; trials of one
population run together, so the extrapolation is an upper bound when R < population).

Triton compiles each kernel once per machine (its cache is on disk), seconds apiece: 17 for the CNN's
three activations (the corruption kernel, then per activation the first block's two and each inner
block's forward; the inner backwards do not depend on it). A linear extrapolation would count that
fixed cost 40/R times. So each family first runs a one-epoch, one-repeat warm-up of the same command, reported apart.

    python benchmarks/campaign.py --repeats 2 --population 20 --gpus-per-trial 0.5
"""

import argparse
import subprocess
import sys
import time

P = ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--population", type=int, default=20)
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
            total += warm_up  # a whole campaign pays it once
            print(f"{family}: warm-up (1 repeat, 1 epoch: Triton compiles, Ray start) {warm_up:.0f} s", flush=True)
        cmd += ["--repeats", str(args.repeats), "--epochs", epochs, "--name", f"campaign-{family}-{int(time.time())}"]
        start = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - start
        summary = [line for line in done.stdout.splitlines() if line.startswith("STUDY=")]
        runs = 3 * len(P) * args.repeats
        print(f"{family}: {runs} runs in {wall:.0f} s (rc={done.returncode}) -> 1,200 runs in about "
              f"{wall * 40 / args.repeats / 60:.1f} min   {summary[-1] if summary else done.stderr[-500:]}", flush=True)
        total += wall * 40 / args.repeats
    print(f"campaign of 2,400 runs, extrapolated from R={args.repeats} of 40 repeats, warm-ups counted once: "
          f"{total / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
