"""Untrained-weight search: sample thousands of random TinyCNNs at once and score them together.

All nets of a step live in stacked tensors and are scored with three matrix products and no copies
between them: conv1 is one GEMM of all nets' kernels over the images' 5x5 patches, which every net
shares, landing as (nets, 4*144, images); conv2 is each net's kernels spread into a dense 128x576 map
(one gather) times that, a batched GEMM; then the head: 1.4x-1.7x the nets a second of grouped convolutions
(conv2 with groups = nets). TF32 is switched off where scores are computed, so they equal fp32 nn.Conv2d exactly. On a GPU a fused fp16
kernel (kernels/screen.py) screens first, several times faster, and only nets near or above the threshold are scored here.
Nets that reach the screen threshold on the small train split are scored on val and on test (whether passing the
screen generalises: how many stay at or above the threshold on both); each new best on val is kept.

The expected best of pure chance among n nets scored on n_val images at chance rate p = 0.1 is
p + sqrt(p(1-p)/n_val) * sqrt(2 ln n) (the maximum of n near-normal accuracies); n is the nets scored on val.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from tune_mnist import kernels
from tune_mnist.kernels import screen
from tune_mnist.data import DeviceSplit, Mnist, to_device
from tune_mnist.models import tiny_cnn_patches

CHANCE = 0.1
SHAPES = {"w1": (4, 1, 5, 5), "b1": (4,), "w2": (8, 4, 5, 5), "b2": (8,), "w3": (10, 128), "b3": (10,)}
TO_MODULE = {"w1": "0.weight", "b1": "0.bias", "w2": "2.weight", "b2": "2.bias", "w3": "5.weight", "b3": "5.bias"}
KEEP = 25
ACTIVATIONS_BUDGET = 2 * 2**30  # bytes of activations and conv2 maps per chunk: bounds memory whatever batch is asked
# The fused fp16 screen's counts differ from fp32's by at most 2 images (393,216 nets checked, weight scales 0.5 to
# 5): every net within this many images of the threshold is re-scored in fp32, so the screen decides as fp32 does.
SCREEN_MARGIN = 4
SHUFFLE_SEED = 0  # seeds the one shuffle whose blocks are the draws


def exact_fp32() -> None:
    """cuDNN convolutions default to TF32 on Ampere and later; a score must not depend on the chip."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def sample(n: int, weight_scale: float, bias_scale: float, generator: torch.Generator,
           device: torch.device | str) -> dict[str, torch.Tensor]:
    """n nets' weights ~ N(0, weight_scale), biases ~ N(0, bias_scale), stacked on a leading axis."""
    return {name: torch.randn((n, *shape), generator=generator, device=device)
            * (bias_scale if name.startswith("b") else weight_scale) for name, shape in SHAPES.items()}


@functools.cache
def conv2_map(device: torch.device) -> torch.Tensor:
    """Where each entry of a net's dense conv2 map (128 outputs x 576 inputs) comes from in its 800
    kernel weights; 800 (a zero appended to them) where an output does not see that input."""
    index = torch.full((128, 576), 800, dtype=torch.long)
    for o, c, qy, qx, ky, kx in itertools.product(range(8), range(4), range(4), range(4), range(5), range(5)):
        index[o * 16 + qy * 4 + qx, c * 144 + (2 * qy + ky) * 12 + 2 * qx + kx] = ((o * 4 + c) * 5 + ky) * 5 + kx
    return index.flatten().to(device)


def logits(nets: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """(nets, 10, images) logits: conv1 as one GEMM over shared patches, conv2 and the head batched GEMMs."""
    n, images = nets["w1"].shape[0], len(x)
    patches = tiny_cnn_patches(x).permute(1, 2, 0).reshape(25, 144 * images)  # [k, position * images + i]
    h = torch.addmm(nets["b1"].reshape(-1, 1), nets["w1"].reshape(n * 4, 25), patches).relu_().view(n, 576, images)
    w2 = torch.cat([nets["w2"].reshape(n, 800), nets["w2"].new_zeros(n, 1)], 1)
    dense = w2[:, conv2_map(x.device)].view(n, 128, 576)
    h = torch.baddbmm(nets["b2"].repeat_interleave(16, 1)[:, :, None], dense, h).relu_()
    return torch.baddbmm(nets["b3"][:, :, None], nets["w3"], h)


@torch.inference_mode()
def accuracy(nets: dict[str, torch.Tensor], split: DeviceSplit) -> torch.Tensor:
    """Accuracy of each net on the split, (nets,), chunked over nets and images to bound memory."""
    n = nets["w1"].shape[0]
    correct = torch.zeros(n, device=split.x.device, dtype=torch.long)
    images = min(512, len(split))
    net_chunk = max(1, ACTIVATIONS_BUDGET // (4 * (576 * images + 128 * 576 + 128 * images)))
    for j in range(0, n, net_chunk):
        part = {k: v[j:j + net_chunk] for k, v in nets.items()}
        for i in range(0, len(split), images):
            predicted = logits(part, split.x[i:i + images]).argmax(1)
            correct[j:j + net_chunk] += (predicted == split.y[None, i:i + images]).sum(1)
    return correct.double() / len(split)  # exact fractions, as evaluate() reports them


def to_state_dict(nets: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Net i's weights under the names of models.tiny_cnn(), so a plain module loads them."""
    return {TO_MODULE[k]: v[i].detach().cpu().clone() for k, v in nets.items()}


def expected_best(n: int, n_val: int, p: float = CHANCE) -> float:
    return p + math.sqrt(p * (1 - p) / n_val) * math.sqrt(2 * math.log(max(n, 2)))


def search_splits(data: Mnist, n_train: int, n_val: int, n_test: int, data_seed: int,
                  device: torch.device | str) -> dict[str, DeviceSplit]:
    """Fixed, disjoint train/val/test splits from MNIST's 60,000 training images: draw `data_seed` is the
    data_seed-th block of n_train + n_val + n_test images of one fixed shuffle, so no two draws share an image."""
    x, y = torch.cat([data.train_x, data.val_x]), torch.cat([data.train_y, data.val_y])
    size = n_train + n_val + n_test
    start = data_seed * size
    if data_seed < 0 or start + size > len(x):
        raise ValueError(f"draw {data_seed} of {n_train}+{n_val}+{n_test} images needs images {start:,} to "
                         f"{start + size:,} of the {len(x):,} available")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SHUFFLE_SEED))[start:start + size]
    a, b = n_train, n_train + n_val
    pick = {"train": order[:a], "val": order[a:b], "test": order[b:b + n_test]}
    parts = Mnist(*(t for name in ("train", "val", "test") for t in (x[pick[name]], y[pick[name]])))
    return to_device(parts, device)


@dataclass
class Settings:
    weight_scale: float = 1.5
    bias_scale: float = 0.5
    threshold: float = 0.20
    nets_per_step: int = 4096
    seed: int = 0


class Search:
    """The whole state of one search; state_dict() / load_state_dict() make it resumable exactly."""

    def __init__(self, settings: Settings, splits: dict[str, DeviceSplit]):
        self.s, self.splits = settings, splits
        self.device = splits["train"].x.device
        self.bands = (screen.band_patches(splits["train"].x, screen.DTYPE)
                      if kernels.available(self.device) else None)
        self.generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        self.evaluated = 0
        # How many passing nets had each (train, val) pair: bounded by the splits' sizes however long the search
        # runs, where a list of pairs grew by thousands a second and made every checkpoint slower.
        self.pairs: Counter[tuple[float, float]] = Counter()
        self.passing = 0
        # passing nets whose val, whose test, and whose val and test both stay at or above the threshold
        self.val_above = self.test_above = self.generalised = 0
        self.history: list[dict[str, float]] = []      # each new best on val
        self.kept: list[dict[str, Any]] = []           # weights of the last KEEP bests

    @property
    def failed_screen(self) -> int:
        return self.evaluated - self.passing

    @property
    def best_val(self) -> float:
        return self.history[-1]["val"] if self.history else 0.0

    def step(self) -> None:
        nets = sample(self.s.nets_per_step, self.s.weight_scale, self.s.bias_scale, self.generator, self.device)
        passing, train = self.screen(nets)
        if len(passing):
            chosen = {k: v[passing] for k, v in nets.items()}
            val, test = accuracy(chosen, self.splits["val"]), accuracy(chosen, self.splits["test"])
            above_val, above_test = val >= self.s.threshold, test >= self.s.threshold
            self.val_above += int(above_val.sum())
            self.test_above += int(above_test.sum())
            self.generalised += int((above_val & above_test).sum())
            for j, (t, v, te) in enumerate(zip(train.tolist(), val.tolist(), test.tolist())):
                self.pairs[(t, v)] += 1
                if v > self.best_val:
                    self.record(chosen, j, int(passing[j]), t, v, te, self.passing + j + 1)
        self.passing += len(passing)
        self.evaluated += self.s.nets_per_step

    def screen(self, nets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the nets whose fp32 train accuracy reaches the threshold, and those accuracies."""
        candidates = self.candidates(nets)
        if len(candidates) < self.s.nets_per_step:   # else all of them, in order: no copy
            nets = {k: v[candidates] for k, v in nets.items()}
        train = accuracy(nets, self.splits["train"])
        reached = train >= self.s.threshold
        return candidates[reached], train[reached]

    def candidates(self, nets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Indices of the nets that may reach the threshold: those the fused screen puts within SCREEN_MARGIN
        images of it, or all nets where the screen does not run."""
        if self.bands is None:
            return torch.arange(self.s.nets_per_step, device=self.device)
        train = self.splits["train"]
        counts = screen.count_correct(nets, self.bands, train.y)
        return torch.nonzero(counts >= self.s.threshold * len(train) - SCREEN_MARGIN).flatten()

    def record(self, nets: dict[str, torch.Tensor], j: int, index_in_step: int, train: float, val: float,
               test: float, scored: int) -> None:
        """A new best on val: passing net j of this step, the `scored`-th net scored on val."""
        index = self.evaluated + index_in_step + 1
        self.history.append({"index": index, "scored": scored, "train": train, "val": val, "test": test,
                             "expected_best": expected_best(scored, len(self.splits["val"]))})
        self.kept = (self.kept + [{"index": index, "val": val, "state_dict": to_state_dict(nets, j)}])[-KEEP:]

    def summary(self) -> dict[str, Any]:
        best = self.history[-1] if self.history else {}
        return {"evaluated": self.evaluated, "failed_screen": self.failed_screen, "passing": self.passing,
                "val_above": self.val_above, "test_above": self.test_above, "generalised": self.generalised,
                "best_val": best.get("val", 0.0), "best_test": best.get("test", 0.0),
                "expected_best": expected_best(self.passing, len(self.splits["val"]))}

    def state_dict(self) -> dict[str, Any]:
        return {"settings": vars(self.s), "rng": self.generator.get_state(), "evaluated": self.evaluated,
                "failed_screen": self.failed_screen, "passing": self.passing, "val_above": self.val_above,
                "test_above": self.test_above, "generalised": self.generalised, "pairs": dict(self.pairs),
                "history": self.history, "kept": self.kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"].to("cpu"))
        self.evaluated = state["evaluated"]
        self.passing, self.pairs = state["passing"], Counter(state["pairs"])
        self.val_above, self.test_above, self.generalised = (state[k] for k in ("val_above", "test_above",
                                                                                 "generalised"))
        self.history, self.kept = list(state["history"]), list(state["kept"])
