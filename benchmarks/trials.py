"""Per-trial overhead of the real Tune driver: 16 short budget trials at 1, 2, 4 and 8 trials per GPU.

Overhead per trial = (study wall time x trials at once / 16) - mean training time per trial: the slot
time a trial holds beyond its own training (worker start, imports, CUDA init, data, reporting).

    python benchmarks/trials.py
"""

import re
import subprocess
import sys
import time

import pandas as pd


def main():
    base = None
    for per_gpu in (1, 2, 4, 8):
        name = f"trials-{per_gpu}-{int(time.time())}"
        cmd = [sys.executable, "-m", "tune_mnist", "budget", "--P", "20000", "--trials", "0", "--max-depth", "1",
               "--seeds", "8", "--population", "1", "--epochs", "2", "--train-limit", "20000",
               "--gpus-per-trial", str(1 / per_gpu),
               "--name", name]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = float(re.search(r"wall=([\d.]+)s", done.stdout).group(1))
        trials = pd.read_csv(f"results/budget/{name}/trials.csv")
        train = trials["seconds"].mean()
        overhead = wall * per_gpu / len(trials) - train
        base = base or wall
        print(f"{per_gpu} per GPU: {len(trials)} trials in {wall:.1f} s, training {train:.2f} s/trial, "
              f"overhead {overhead:.2f} s/trial, throughput x{base / wall:.2f} vs 1 per GPU", flush=True)


if __name__ == "__main__":
    main()
