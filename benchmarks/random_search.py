"""Random TinyCNN search: nets scored per second, the plain PyTorch loop vs the vectorised search.

Both score fresh random nets on the same 256 training images, in one process on one device:
  loop:  randomise an nn.Module (weights N(0,1.5), biases N(0,0.5)), score it, next (as a user writes it)
  ours:  tune_mnist.random_search: thousands of nets per step, stacked, in a few kernels
Prints one line per method and the ratio. Scores are checked equal to the loop's, net by net.

    python benchmarks/random_search.py [--nets-per-step 4096] [--seconds 10]
"""

import argparse
import time

import torch

from tune_mnist import data, models
from tune_mnist import random_search as rs


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def loop_rate(train, device, seconds):
    net, done, start = models.tiny_cnn().to(device), 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < seconds:
            for name, p in net.named_parameters():
                p.normal_(0, 0.5 if name.endswith("bias") else 1.5)
            (net(train.x).argmax(1) == train.y).float().mean().item()
            done += 1
    return done / (time.perf_counter() - start)


def vectorised_rate(train, device, n, seconds):
    g = torch.Generator(device=device).manual_seed(0)
    rs.accuracy(rs.sample(n, 1.5, 0.5, g, device), train)  # warm-up
    sync(device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        rs.accuracy(rs.sample(n, 1.5, 0.5, g, device), train).max().item()
        done += n
    sync(device)
    return done / (time.perf_counter() - start)


def check_equal(train, device):
    """The vectorised scores equal nn.Conv2d's, net by net, on 64 nets."""
    nets = rs.sample(64, 1.5, 0.5, torch.Generator(device=device).manual_seed(1), device)
    fast = rs.accuracy(nets, train)
    net = models.tiny_cnn().to(device)
    for i in range(64):
        net.load_state_dict(rs.to_state_dict(nets, i))
        assert (net(train.x).argmax(1) == train.y).float().mean().item() == fast[i].item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nets-per-step", type=int, default=4096)
    p.add_argument("--seconds", type=float, default=10)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rs.exact_fp32()
    train = data.to_device(data.subset(data.load(), 256), device)["train"]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    base = loop_rate(train, device, args.seconds)
    print(f"device={name} torch={torch.__version__} images=256")
    print(f"loop       {base:12,.0f} nets/s")
    check_equal(train, device)
    rate = vectorised_rate(train, device, args.nets_per_step, args.seconds)
    print(f"ours       {rate:12,.0f} nets/s  x{rate / base:.1f} the loop  (nets/step={args.nets_per_step}, scores equal)")


if __name__ == "__main__":
    main()
