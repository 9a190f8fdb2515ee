"""Random TinyCNN search: nets scored per second, the plain PyTorch loop vs the vectorised search.

All score fresh random nets (weights N(0,1.5), biases N(0,0.5)) on the same 256 training images, in one
process on one device:
  loop:    randomise an nn.Module, score it, next (as a user writes it)
  gemm:    random_search.accuracy, every net scored in exact fp32 (stacked GEMMs)
  screen:  random_search.Search.screen(): on a GPU the fused fp16 screen (screen.py), then fp32 re-scores of
           the nets near the threshold: every net's pass/fail exactly as fp32 (what the loop decides)
  search:  random_search.Search.step(), the study's step on one draw: screen, then val and test (5,000 images
           each) for the nets that pass (about 0.4% at the default scales)
Prints one line per method and the ratios. Checks: gemm equals nn.Conv2d net by net, and the screen keeps
every net that fp32 passes (its largest count difference from fp32 is printed).

    python benchmarks/random_search.py [--nets-per-step 65536] [--seconds 10]
"""

import argparse
import time

import torch

from tune_mnist import data, models, settings
from tune_mnist.kernels import screen
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


def rate(step, n, device, seconds):
    step()  # warm-up: kernels compiled, caches built
    sync(device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        done += n
    sync(device)
    return done / (time.perf_counter() - start)


def check_equal(train, device):
    """The GEMM scores equal nn.Conv2d's, net by net, on 64 nets."""
    nets = rs.sample(64, 1.5, 0.5, torch.Generator(device=device).manual_seed(1), device)
    fast = rs.accuracy(nets, train)
    net = models.tiny_cnn().to(device)
    for i in range(64):
        net.load_state_dict(rs.to_state_dict(nets, i))
        assert (net(train.x).argmax(1) == train.y).float().mean().item() == fast[i].item()


def check_screen(search, steps):
    """Every net that reaches the threshold in fp32 is a candidate of the fused screen; returns the nets checked
    and the largest difference between the screen's count and fp32's."""
    train, g = search.splits["train"], torch.Generator(device=search.device).manual_seed(2)
    worst = 0
    for _ in range(steps):
        nets = rs.sample(search.s.nets_per_step, 1.5, 0.5, g, search.device)
        exact = (rs.accuracy(nets, train) * len(train)).round().int()
        worst = max(worst, int((screen.count_correct(nets, search.bands, train.y) - exact).abs().max()))
        kept = torch.zeros_like(exact, dtype=torch.bool)
        kept[search.candidates(nets)] = True
        assert kept[exact >= search.s.threshold * len(train)].all()
    return steps * search.s.nets_per_step, worst


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nets-per-step", type=int, help="default: the study's (65,536 on a GPU, 1,024 on a CPU)")
    p.add_argument("--seconds", type=float, default=10)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rs.exact_fp32()
    splits = rs.search_splits(data.load(), 256, 5000, 5000, 0, device)
    space = settings.read(settings.builtin("random"))[0]  # the study's nets per step, on this device
    default = space["gpu"]["nets_per_step"] if device.type == "cuda" else space["nets_per_step"]
    train, n = splits["train"], args.nets_per_step or default
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device={name} torch={torch.__version__} images=256 nets/step={n}")
    base = loop_rate(train, device, args.seconds)
    print(f"loop    {base:12,.0f} nets/s")
    check_equal(train, device)
    g = torch.Generator(device=device).manual_seed(0)
    gemm = rate(lambda: rs.accuracy(rs.sample(n, 1.5, 0.5, g, device), train).max().item(), n, device, args.seconds)
    print(f"gemm    {gemm:12,.0f} nets/s  x{gemm / base:.1f} the loop  (fp32, equal to nn.Conv2d net by net)")
    search = rs.Search(rs.Settings(nets_per_step=n), splits)
    screened = rate(lambda: search.screen(rs.sample(n, 1.5, 0.5, g, device))[0].numel(), n, device, args.seconds)
    print(f"screen  {screened:12,.0f} nets/s  x{screened / base:.1f} the loop, x{screened / gemm:.1f} gemm")
    fused = rate(search.step, n, device, args.seconds)
    how = "fused fp16 screen + fp32 re-scores" if search.bands is not None else "no fused screen on this device"
    print(f"search  {fused:12,.0f} nets/s  x{fused / base:.1f} the loop, x{fused / gemm:.1f} gemm  ({how}; "
          f"{search.evaluated:,} nets, {search.passing:,} passed)")
    if search.bands is not None:
        checked, worst = check_screen(search, max(1, 131072 // n))
        print(f"screen keeps every net fp32 passes: {checked:,} nets checked, largest count difference {worst} "
              f"images (margin {rs.SCREEN_MARGIN})")


if __name__ == "__main__":
    main()
