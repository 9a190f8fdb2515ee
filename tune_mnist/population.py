"""Population training: R members of one architecture trained as one stacked model.

A lone MNIST-sized net leaves a GPU mostly idle; R of them stacked fill it. The stacked forward is
written out layer by layer rather than with torch.func.vmap, whose batched convolutions are slow: the
members' conv channels sit side by side in one grouped convolution (groups=R), and dense layers are
one batched matmul over the members. Each member keeps its own seed (initialisation, data order) and
corruption p, and draws its shuffle from the per-(seed, epoch) generator and its noise from the
(seed, epoch, image, pixel) hash a separate run uses, so member r reproduces `train.fit` with that
seed (to float tolerance). The members share one Adam over the stacked
parameters: exact, since Adam and its weight decay act elementwise and the loss is a sum of the members'
own mean losses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import stack_module_state

from tune_mnist import conv_pool, dense_adam, models
from tune_mnist.data import DeviceSplit
from tune_mnist.kernels import available
from tune_mnist.train import (GraphedStep, TrainConfig, check_finite, corrupt, epoch_generator, noise_keys, prepare,
                              refill_keys)
from tune_mnist.train import make_optimizer as torch_optimizer


# Member-images per evaluation chunk, as every member's activations are alive at once. On an H100, 40 members
# took 0.018 s for val + test (15,000 images) with 32,768 (819 images a chunk) against 0.025-0.050 s with 8,192
# (MLP 1024-512-256); the CNN 32-64-128 0.065 s against 0.072-0.096 s, at a peak of 2.5 GB instead of 0.6.
EVAL_CHUNK = 32768


class StackedLinear(torch.autograd.Function):
    """h (R, batch, in) @ weight (R, out, in)^T + bias (R, out), each member its own dense layer.

    torch.baddbmm(bias, h, weight.mT) computes the same, but its backward yields the weight gradient
    transposed, which autograd then copies into the weight's layout: a strided copy of every weight
    each step. Written here, the gradient is made in place, as the product grad^T @ h. On an H100 an
    epoch of 40 MLPs 1024-512-256 at batch 128 took 0.56 s instead of 0.76 (256-128: 0.155 vs 0.19).

    With a DenseAdam (dense_adam.py), the backward updates the weight itself and gives it no gradient.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                adam: dense_adam.DenseAdam | None) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.adam = adam
        return torch.baddbmm(bias.unsqueeze(1), h, weight.mT)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        dh = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None  # none for the images
        if ctx.adam is None:
            return dh, torch.bmm(grad.mT, h), grad.sum(1), None
        ctx.adam.step(weight, grad, h)  # after dh, which needs the weight before its update
        return dh, None, grad.sum(1), None


class Population:
    """R models of one spec, initialised as separate runs with these seeds would be."""

    def __init__(self, spec: dict[str, Any], seeds: Sequence[int], device: torch.device | str):
        members = []
        for seed in seeds:
            torch.manual_seed(seed)
            members.append(models.build(spec, device))
        self.seeds = list(seeds)
        self.params, _ = stack_module_state(members)
        self.layers = list(members[0].named_children())  # the layer sequence; weights come from self.params
        # a CNN's (conv, activation, pool) blocks run as Triton kernels on a GPU (conv_pool.py)
        self.fused_blocks = conv_pool.fusable_blocks([m for _, m in self.layers], torch.device(device))
        self.dense_adam: dense_adam.DenseAdam | None = None  # make_optimizer's, where the kernel runs

    def __len__(self) -> int:
        return len(self.seeds)

    def __call__(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """(R, batch, 10) logits; x is (R, batch, ...) or, with shared=True, one (batch, ...) for all.

        Activations move through three layouts: "shared" (batch, ...), one input for every member;
        "channels" (batch, R*C, H, W), each member's conv channels side by side; "members" (R, batch, F).
        """
        R, h, layers = len(self), x, self.layers
        layout = "shared" if shared else "members"
        if self.fused_blocks:
            blocks = []
            for i in range(self.fused_blocks):
                (name, _), (_, act) = self.layers[3 * i:3 * i + 2]
                blocks.append((self.params[f"{name}.weight"], self.params[f"{name}.bias"], act))
            h = conv_pool.blocks(h.expand(R, *h.shape) if shared else h, blocks)
            layers, layout = layers[3 * self.fused_blocks + 1:], "members"
        for name, layer in layers:
            if isinstance(layer, nn.Conv2d):
                w, b = self.params[f"{name}.weight"].flatten(0, 1), self.params[f"{name}.bias"].flatten()
                if layout == "members":
                    h = h.transpose(0, 1).flatten(1, 2)
                h = F.conv2d(h, w, b, layer.stride, layer.padding, groups=1 if layout == "shared" else R)
                layout = "channels"
            elif isinstance(layer, nn.Flatten):
                if layout == "channels":
                    h, layout = h.reshape(h.shape[0], R, -1).transpose(0, 1), "members"
                else:
                    h = h.flatten(2 if layout == "members" else 1)
            elif isinstance(layer, nn.Linear):  # a shared (batch, F) input broadcasts to every member
                adam = self.dense_adam if torch.is_grad_enabled() else None
                h = StackedLinear.apply(h.expand(R, *h.shape[-2:]), self.params[f"{name}.weight"],
                                        self.params[f"{name}.bias"], adam)
                layout = "members"
            else:  # activations and pooling act per channel, in any layout
                h = layer(h)
        return h

    def member_state(self, r: int) -> dict[str, torch.Tensor]:
        """Member r's weights, copied to the CPU into tensors of their own (a view would save the whole stack)."""
        return {k: v[r].detach().to("cpu", copy=True) for k, v in self.params.items()}

    def n_params(self) -> int:
        """Parameters of one member."""
        return sum(v[0].numel() for v in self.params.values())


def make_optimizer(pop: Population, cfg: TrainConfig) -> torch.optim.Optimizer:
    """train.make_optimizer (torch's) over the stacked parameters. Where the kernels run, Adam and AdamW
    update the dense layers' weights in their gradient's product instead (dense_adam.py)."""
    weights = [p for name, p in pop.params.items() if name.endswith(".weight") and p.dim() == 3]
    pop.dense_adam = None
    if cfg.optimizer in ("adam", "adamw") and weights and available(weights[0].device):
        pop.dense_adam = dense_adam.DenseAdam(weights, cfg.lr, cfg.weight_decay, decoupled=cfg.optimizer == "adamw")
    return torch_optimizer(list(pop.params.values()), cfg)


@torch.inference_mode()
def evaluate(pop: Population, split: DeviceSplit, inputs: str = "unit") -> list[dict[str, float]]:
    loss = torch.zeros(len(pop), device=split.x.device)
    correct = torch.zeros(len(pop), device=split.x.device, dtype=torch.long)
    chunk = max(64, EVAL_CHUNK // len(pop))
    for i in range(0, len(split), chunk):
        logits = pop(prepare(split.x[i:i + chunk], inputs), shared=True)
        y = split.y[i:i + chunk].expand(len(pop), -1)
        loss += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(len(pop), -1).sum(1)
        correct += (logits.argmax(-1) == y).sum(1)
    n = len(split)
    return [{"loss": l / n, "acc": c / n} for l, c in zip(loss.tolist(), correct.tolist())]


def epoch_loop(pop: Population, opt: torch.optim.Optimizer, train: DeviceSplit, cfg: TrainConfig,
               corruption: Sequence[float], graphs: bool = True) -> Callable[[int], list[dict[str, float]]]:
    """train.epoch_loop for every member at once: run(epoch) gives one metrics dict per member."""
    device = train.x.device
    n, R = len(train), len(pop)
    batch = cfg.batch_size or n
    keys = noise_keys(corruption, pop.seeds, 0, device)
    total = torch.zeros(R, device=device)
    correct = torch.zeros(R, device=device, dtype=torch.long)

    def step(idx: torch.Tensor) -> None:
        y = train.y[idx]
        logits = pop(prepare(corrupt(train.x[idx], keys, idx), cfg.inputs))
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(R, -1).mean(1)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        total.add_(losses.detach() * y.shape[1])
        correct.add_((logits.argmax(-1) == y).sum(1))

    graphed = GraphedStep(step) if graphs else step

    def run(epoch: int) -> list[dict[str, float]]:
        refill_keys(keys, corruption, pop.seeds, epoch)
        total.zero_()
        correct.zero_()
        gens = [epoch_generator(replace(cfg, seed=s), epoch, device) for s in pop.seeds]
        orders = torch.stack([torch.randperm(n, device=device, generator=g) for g in gens])
        for i in range(0, n, batch):
            graphed(orders[:, i:i + batch])
        return [{"train_loss": check_finite(t / n, cfg, epoch), "train_acc": c / n}
                for t, c in zip(total.tolist(), correct.tolist())]

    return run


def kernel_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a spec that a population's Triton kernels depend on. Only the CNN's fused conv blocks take
    the activation; an MLP's activations run in torch, so its kernels (corruption, dense Adam) serve them all."""
    return {k: v for k, v in spec.items() if k != "activation" or spec["family"] != "mlp"}


# The compilations started in this process, by what they compile, so that a second call waits for the first's
_compiling: dict[tuple, Future] = {}
_compiler: ThreadPoolExecutor | None = None


def compile_kernels(specs: Sequence[dict[str, Any]], train: DeviceSplit, cfg: TrainConfig, wait: bool = True) -> None:
    """Compiles the Triton kernels that populations of these specs train and evaluate with, all at once.

    Triton compiles a kernel at its first launch, and a CNN's every activation has kernels of its own: on a fresh H100
    a campaign's first trial of each activation waited for them (CNN 32-64-128: 9 s for relu, 5 s for tanh and
    for GELU), one activation after another. Here the training and the evaluation of a two-member population of
    each spec run in threads of their own, as the compiler lets go of the GIL; the kernels land in Triton's disk
    cache, where the trials' workers find them. No kernel takes the member count, so two members compile what
    R would. Training and evaluation compile apart (their forwards differ) and took one after the other 27 s for
    one CNN 32-64-128 on an H100's host, so they run at once. With wait=False it returns while they compile; a
    later call for the same specs and split waits for them rather than compiling again.
    """
    global _compiler

    def step(spec: dict[str, Any]) -> None:
        pop = Population(spec, [0, 1], train.x.device)
        epoch_loop(pop, make_optimizer(pop, cfg), same_kernels(train, cfg.batch_size), cfg, [cfg.corruption] * 2,
                   graphs=False)(0)

    def evaluation(spec: dict[str, Any]) -> None:
        evaluate(Population(spec, [0, 1], train.x.device), train, cfg.inputs)

    _compiler = _compiler or ThreadPoolExecutor(16, thread_name_prefix="compile")
    started = []
    for spec in specs:
        for job in (step, evaluation):
            # what the job's kernels depend on: the optimizer (dense Adam or not) and inputs as well as the batch
            key = (job.__name__, json.dumps(kernel_spec(spec), sort_keys=True), str(train.x.device), len(train),
                   repr(cfg))
            if key not in _compiling:
                _compiling[key] = _compiler.submit(job, spec)
            started.append(_compiling[key])
    if wait:
        for done in started:
            done.result()


def same_kernels(train: DeviceSplit, batch: int, batches: int = 3) -> DeviceSplit:
    """The first images of a split, as many as make an epoch launch the kernels that an epoch of the whole split
    does: `batches` full batches and a last one as large as the split's. Triton compiles a kernel for the
    integers it is passed by whether they divide by 16, and the split's size is the batch orders' stride."""
    n = batches * batch + len(train) % batch
    return train if n >= len(train) else DeviceSplit(train.x[:n], train.y[:n])


def train_epoch(pop: Population, opt: torch.optim.Optimizer, train: DeviceSplit, cfg: TrainConfig,
                corruption: Sequence[float], epoch: int, graphs: bool = True) -> list[dict[str, float]]:
    """One epoch of epoch_loop."""
    return epoch_loop(pop, opt, train, cfg, corruption, graphs)(epoch)


def fit(pop: Population, splits: dict[str, DeviceSplit], cfg: TrainConfig, corruption: Sequence[float],
        on_epoch: Callable[[list[dict[str, float]]], None] | None = None) -> list[dict[str, float]]:
    """train.fit for every member at once: per evaluated epoch, one metrics dict per member (train.fit's keys)."""
    opt = make_optimizer(pop, cfg)
    run = epoch_loop(pop, opt, splits["train"], cfg, corruption)
    metrics: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        metrics = [{"epoch": epoch + 1, **m} for m in run(epoch)]
        if (epoch + 1) % cfg.eval_every and epoch + 1 != cfg.epochs:
            continue
        evaluations = {name: evaluate(pop, splits[name], cfg.inputs) for name in ("val", "test")}
        if epoch + 1 == cfg.epochs:
            evaluations["final_train"] = evaluate(pop, splits["train"], cfg.inputs)
        for r, m in enumerate(metrics):
            for name, per_member in evaluations.items():
                m[f"{name}_loss"], m[f"{name}_acc"] = per_member[r]["loss"], per_member[r]["acc"]
            m["epoch_seconds"] = (time.perf_counter() - start) / len(pop)
        if on_epoch:
            on_epoch(metrics)
    return metrics
