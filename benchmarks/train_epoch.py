"""One epoch with 20% pixel corruption: a per-sample corrupting Dataset + DataLoader vs our trainer.

The naive loop is how the corruption study is usually written: __getitem__ corrupts one image on the
CPU, a DataLoader batches them, each batch is copied to the device. Ours keeps the data on the device
and corrupts whole batches there (tune_mnist.train). Same model, optimizer, batch size, one process.

    python benchmarks/train_epoch.py [--batch-size 512]
"""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from common import setup, timed
from tune_mnist import models
from tune_mnist.data import to_device
from tune_mnist.train import TrainConfig, make_optimizer, train_epoch

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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=512)
    args = p.parse_args()
    device, data = setup()
    splits = to_device(data, device)
    cfg = TrainConfig(batch_size=args.batch_size, corruption=0.2)
    for label, spec in SPECS.items():
        model = models.build(spec, device)
        train_epoch(model, make_optimizer(model, cfg), splits["train"], cfg, 0)  # warm-up (cuDNN, allocator)
        naive, _ = timed(lambda: naive_epoch(models.build(spec, device), data, device, args.batch_size, 0.2), device)
        runs = {}
        for graphs in (False, True):  # same seed: the CUDA-graph epoch must match the eager one
            torch.manual_seed(0)
            model = models.build(spec, device)
            runs[graphs] = timed(lambda: train_epoch(model, make_optimizer(model, cfg), splits["train"], cfg, 1,
                                                     graphs=graphs), device)
        (eager, eager_metrics), (ours, metrics) = runs[False], runs[True]
        graphs = (f"eager steps {eager:.3f} s, CUDA graphs x{eager / ours:.1f}; train loss {metrics['train_loss']:.6f}"
                  f" vs eager {eager_metrics['train_loss']:.6f}; ") if device.type == "cuda" else ""
        print(f"{label}: naive Dataset+DataLoader {naive:.2f} s/epoch, ours {ours:.3f} s/epoch, x{naive / ours:.1f}"
              f"  ({graphs}batch {args.batch_size}, p=0.2, 55,000 images)", flush=True)


if __name__ == "__main__":
    main()
