"""R repeats of one architecture for one epoch: R separate runs of our trainer (populations of one) vs one population.

Both use the device-resident trainer, the same seeds, corruption 0.2 and batch size; the population stacks the R
members (tune_mnist.population) and reproduces each separate run to float tolerance. Where the CNN's conv blocks
run as fused Triton kernels, the population is also timed without them. --widths-spread also times a population
whose MLP members differ in width (padded to the widest, as the budget study's Optuna populations are).

    python benchmarks/population.py [--members 64] [--batch-size 128] [--train-limit 0]
"""

import argparse

from common import setup, timed
from tune_mnist.data import subset, to_device
from tune_mnist.population import Member, Population
from tune_mnist.train import TrainConfig, epoch_loop, make_optimizer

SPECS = {"mlp 256-128": {"family": "mlp", "widths": [256, 128], "activation": "relu"},
         "cnn 32-64": {"family": "cnn", "channels": [32, 64], "hidden": 128, "activation": "relu"}}


def epoch(members, splits, cfg, device, fuse=True):
    pop = Population(members, device)
    pop.fused_blocks = pop.fused_blocks if fuse else 0
    epoch_loop(pop, make_optimizer(pop, cfg), splits["train"], cfg)(0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--members", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128, help="the corruption study's default")
    p.add_argument("--train-limit", type=int, default=0, help="training images (0: all 55,000)")
    args = p.parse_args()
    device, data = setup()
    data = subset(data, args.train_limit or None)
    splits = to_device(data, device)
    cfg = TrainConfig(batch_size=args.batch_size)
    for label, spec in SPECS.items():
        members = [Member(spec, seed=s, corruption=0.2) for s in range(args.members)]
        epoch(members[:2], splits, cfg, device)  # warm-up: kernels compiled, CUDA graphs captured once
        epoch(members, splits, cfg, device)
        alone, _ = timed(lambda: [epoch([m], splits, cfg, device) for m in members], device)
        stacked, _ = timed(lambda: epoch(members, splits, cfg, device), device)
        print(f"{label}: {args.members} separate runs {alone:.2f} s, one population {stacked:.2f} s, "
              f"x{alone / stacked:.1f}  ({alone / args.members:.3f} vs {stacked / args.members:.3f} s per member-epoch)",
              flush=True)
        if Population(members[:1], device).fused_blocks:
            epoch(members, splits, cfg, device, fuse=False)
            unfused, _ = timed(lambda: epoch(members, splits, cfg, device, fuse=False), device)
            print(f"{label}: population without the fused conv blocks {unfused:.2f} s, the kernels "
                  f"x{unfused / stacked:.2f}", flush=True)


if __name__ == "__main__":
    main()
