"""R repeats of one architecture for one epoch: R separate runs of our trainer vs one population.

Both use the device-resident trainer, the same seeds, corruption 0.2 and batch size; the population
stacks the R members (tune_mnist.population) and reproduces each separate run to float tolerance.
Where the CNN's conv blocks run as fused Triton kernels, the population is also timed without them.

    python benchmarks/population.py [--members 64] [--batch-size 128]
"""

import argparse

import torch

from common import setup, timed
from tune_mnist import models
from tune_mnist import population as pop
from tune_mnist.data import to_device
from tune_mnist.train import TrainConfig, make_optimizer, train_epoch

SPECS = {"mlp 256-128": {"family": "mlp", "widths": [256, 128], "activation": "relu"},
         "cnn 32-64": {"family": "cnn", "channels": [32, 64], "hidden": 128, "activation": "relu"}}


def separate(spec, splits, cfg, seeds, device):
    for seed in seeds:
        torch.manual_seed(seed)
        model = models.build(spec, device)
        train_epoch(model, make_optimizer(model, cfg), splits["train"], cfg, 0)


def together(spec, splits, cfg, seeds, device, fuse=True):
    population = pop.Population(spec, seeds, device)
    population.fused_blocks = population.fused_blocks if fuse else 0
    opt = pop.make_optimizer(population, cfg)
    pop.train_epoch(population, opt, splits["train"], cfg, [cfg.corruption] * len(seeds), 0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--members", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128, help="the corruption study's default")
    args = p.parse_args()
    device, data = setup()
    splits = to_device(data, device)
    cfg = TrainConfig(batch_size=args.batch_size, corruption=0.2)
    seeds = list(range(args.members))
    for label, spec in SPECS.items():
        separate(spec, splits, cfg, seeds[:2], device)  # warm-up; Triton compiles per population size
        together(spec, splits, cfg, seeds, device)
        alone, _ = timed(lambda: separate(spec, splits, cfg, seeds, device), device)
        stacked, _ = timed(lambda: together(spec, splits, cfg, seeds, device), device)
        print(f"{label}: {args.members} separate runs {alone:.2f} s, one population {stacked:.2f} s, "
              f"x{alone / stacked:.1f}  ({alone / args.members:.3f} vs {stacked / args.members:.3f} s per member-epoch)",
              flush=True)
        if pop.Population(spec, seeds[:1], device).fused_blocks:
            together(spec, splits, cfg, seeds, device, fuse=False)
            unfused, _ = timed(lambda: together(spec, splits, cfg, seeds, device, fuse=False), device)
            print(f"{label}: population without the fused conv blocks (conv_pool.py) {unfused:.2f} s, "
                  f"the kernels x{unfused / stacked:.2f}", flush=True)


if __name__ == "__main__":
    main()
