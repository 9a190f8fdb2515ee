"""Compiling ahead: the Triton kernels a study's populations will train and evaluate with, compiled before its
trials need them (Triton compiles a kernel at its first launch, one after another, and each CNN activation has
kernels of its own), and TF32 matmuls on a GPU.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from tune_mnist import kernels
from tune_mnist.data import DeviceSplit
from tune_mnist.population import Member, Population, structure
from tune_mnist.train import TrainConfig, epoch_loop, evaluate, make_optimizer


def use_tf32() -> None:
    """Matmuls in TF32 on a GPU, as PyTorch already runs cuDNN convolutions: populations train 15-18% faster
    and their mean test accuracy moves by less than 0.001."""
    torch.backends.cuda.matmul.allow_tf32 = True


def kernel_key(member: Member, train: DeviceSplit, cfg: TrainConfig) -> str:
    """What a population's Triton kernels depend on: an MLP's activation and widths run in torch, so one MLP's
    kernels (corruption, Adam) serve them all; a CNN's fused blocks take its channels and activation."""
    spec = structure(member.spec)
    if spec["family"] == "mlp":
        spec = {"family": "mlp"}
    return json.dumps([spec, str(train.x.device), len(train), cfg.batch_size, cfg.optimizer, cfg.inputs,
                       member.corruption > 0], sort_keys=True)


def compile_ahead(members: Sequence[Member], train: DeviceSplit, cfg: TrainConfig, wait: bool = True) -> None:
    """Compiles the Triton kernels that populations like these members' train and evaluate with, all at once.

    Triton compiles a kernel at its first launch, and each CNN activation has kernels of its own: without this,
    a campaign's first trial of each activation waits for them, one activation after another. Here a
    two-member population of each kind trains an epoch on a short split, and another evaluates, each in a
    thread of its own (the compiler lets go of the GIL); the kernels land in Triton's disk cache, where the
    trials' workers find them. No kernel takes the member count, so two members compile what R would. With
    wait=False it returns while they compile; asked again, it waits for them rather than compiling again.
    """
    def training(member: Member) -> None:
        pop = Population([member, member], train.x.device)
        epoch_loop(pop, make_optimizer(pop, cfg), same_kernels(train, cfg.batch_size), cfg, graphs=False)(0)

    def evaluation(member: Member) -> None:
        evaluate(Population([member, member], train.x.device), train, cfg.inputs)

    started = [kernels.in_background((job.__name__, kernel_key(m, train, cfg)), lambda m=m, job=job: job(m))
               for m in members for job in (training, evaluation)]
    if wait:
        for done in started:
            done.result()


def same_kernels(train: DeviceSplit, batch: int, batches: int = 3) -> DeviceSplit:
    """The first images of a split, as many as make an epoch launch the kernels that an epoch of the whole split
    does: `batches` full batches and a last one as large as the split's. Triton compiles a kernel for the
    integers it is passed by whether they divide by 16, and the split's size is the batch orders' stride."""
    n = batches * batch + len(train) % batch
    return train if n >= len(train) else DeviceSplit(train.x[:n], train.y[:n])
