"""What the benchmarks share: the device, its name, a synchronised timer."""

import time

import torch

from tune_mnist import data
from tune_mnist.warmup import use_tf32


def setup():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        use_tf32()  # as trials do
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device={name} torch={torch.__version__}", flush=True)
    return device, data.load()


def timed(fn, device):
    """Seconds fn() takes, the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out
