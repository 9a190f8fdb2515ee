"""Several GPUs of one host: the corruption campaign's slice and the default budget run on 1, 2, 4 and 8 GPUs.

Each command runs on a local Ray that sees the first N GPUs (CUDA_VISIBLE_DEVICES), with the study's defaults for
a cluster with GPUs (half a GPU a trial, populations): Ray places the trials on every GPU it sees. Printed: each
command's wall time on N GPUs and its speed-up against 1 GPU, measured in the same run.

    python benchmarks/multi_gpu.py [--gpus 1 2 4 8]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

COMMANDS = {
    "corruption slice": ["corruption", "--families", "mlp", "--activations", "relu", "tanh", "gelu",
                         "--mlp-widths", "1024", "512", "256", "--epochs", "15", "--repeats", "16",
                         "--population", "80", "--lrs", "1e-3",
                         "--p", "0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"],
    "budget defaults": ["budget", "--P", "100000"],
}


def wall(argv: list[str], gpus: int, results: str) -> float:
    """The command's whole wall time on the first `gpus` GPUs (its summary line's, from Ray's start)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus)))}
    done = subprocess.run([sys.executable, "-m", "tune_mnist", *argv, "--results", results], env=env,
                          capture_output=True, text=True)
    found = re.search(r"wall=([\d.]+)s", done.stdout)
    if done.returncode or not found:
        sys.exit(f"{argv[0]} on {gpus} GPUs failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return float(found.group(1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    args = p.parse_args()
    have = torch.cuda.device_count()
    print(f"device={torch.cuda.get_device_name() if have else 'none'} x{have}", flush=True)
    results = tempfile.mkdtemp(prefix="multi-gpu-")
    counts = sorted({1, *(g for g in args.gpus if g <= have)})  # 1 GPU is the baseline
    for label, argv in COMMANDS.items():
        base = wall(argv, 1, results)
        print(f"{label}: 1 GPU {base:.1f} s", flush=True)
        for gpus in counts[1:]:
            seconds = wall(argv, gpus, results)
            print(f"{label}: {gpus} GPUs {seconds:.1f} s, speed-up x{base / seconds:.2f} against 1 GPU "
                  f"(ideal x{gpus})", flush=True)


if __name__ == "__main__":
    main()
