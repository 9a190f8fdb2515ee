"""One epoch with 20% pixel corruption: a per-sample corrupting Dataset + DataLoader vs our trainer (a population
of one), the same model, optimizer and batch size, in one process.

The naive loop is how the corruption study is usually written: __getitem__ corrupts one image on the CPU, a
DataLoader batches them, each batch is copied to the device. Ours keeps the data on the device and corrupts
whole batches there (tune_mnist.train). On a GPU it also times our trainer's steps eagerly (no CUDA graph).

    python benchmarks/train_epoch.py [--batch-size 512]
"""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from common import setup, timed
from tune_mnist import models
from tune_mnist.data import to_device
from tune_mnist.population import Member, Population
from tune_mnist.train import TrainConfig, epoch_loop, make_optimizer

SPECS = {"mlp 256-128": {"family": "mlp", "widths": [256, 128], "activation": "relu"},
         "cnn 32-64": {"family": "cnn", "channels": [32, 64], "hidden": 128, "activation": "relu"}}


class CorruptedMnist(Dataset):
    def __init__(self, x, y, p):
        self.x, self.y, self.p = x, y, p

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = self.x[i].float().div(255).unsqueeze(0)
        mask = torch.rand_like(img) < self.p
        return torch.where(mask, torch.rand_like(img), img), self.y[i]


def naive_epoch(model, data, device, batch, p):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(CorruptedMnist(data.train_x, data.train_y, p), batch_size=batch, shuffle=True)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def ours(spec, splits, cfg, device, graphs=True):
    """An epoch of a fresh population of one (the warm-up epoch 0 first: CUDA graphs, cuDNN, the allocator)."""
    pop = Population([Member(spec, corruption=0.2)], device)
    run = epoch_loop(pop, make_optimizer(pop, cfg), splits["train"], cfg, graphs=graphs)
    run(0)
    return timed(lambda: run(1), device)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=512)
    args = p.parse_args()
    device, data = setup()
    splits = to_device(data, device)
    cfg = TrainConfig(batch_size=args.batch_size)
    for label, spec in SPECS.items():
        naive, _ = timed(lambda: naive_epoch(models.build(spec, device), data, device, args.batch_size, 0.2), device)
        seconds, metrics = ours(spec, splits, cfg, device)
        extra = ""
        if device.type == "cuda":  # the same steps eagerly: the CUDA graph's gain, and the same losses
            eager, eager_metrics = ours(spec, splits, cfg, device, graphs=False)
            extra = (f"; eager steps {eager:.3f} s, CUDA graphs x{eager / seconds:.1f}; train loss "
                     f"{metrics[0]['train_loss']:.6f} vs eager {eager_metrics[0]['train_loss']:.6f}")
        print(f"{label}: naive Dataset+DataLoader {naive:.2f} s/epoch, ours {seconds:.3f} s/epoch, "
              f"x{naive / seconds:.1f}  (batch {args.batch_size}, p=0.2, {len(data.train_x):,} images{extra})",
              flush=True)


if __name__ == "__main__":
    main()
