"""A population of R members equals R separate runs of the same seeds, member by member."""

import json
import os
from dataclasses import replace

import pytest
import torch

from conftest import under_triton_interpreter
from tune_mnist import data, models
from tune_mnist import population as pop
from tune_mnist.train import TrainConfig, fit


@pytest.mark.parametrize("spec", [
    {"family": "mlp", "widths": [64, 32], "activation": "tanh"},
    {"family": "cnn", "channels": [8, 16], "hidden": 32, "activation": "relu"},
])
def test_members_equal_separate_runs(spec, mnist):
    splits = data.to_device(data.subset(mnist, 2000, 500), "cpu")
    seeds, corruption = [0, 1, 2], [0.0, 0.3, 0.6]
    cfg = TrainConfig(epochs=2, batch_size=128, weight_decay=1e-4)
    members = pop.fit(pop.Population(spec, seeds, "cpu"), splits, cfg, corruption)
    for r, (seed, p) in enumerate(zip(seeds, corruption)):
        torch.manual_seed(seed)
        alone = fit(models.build(spec), splits, TrainConfig(**{**cfg.as_dict(), "seed": seed, "corruption": p}))
        for key in ("final_train_loss", "val_loss", "test_loss", "train_loss"):
            assert members[r][key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6), (r, key)
        assert members[r]["test_acc"] == pytest.approx(alone["test_acc"], abs=2e-3)
    assert members[0]["test_acc"] > 0.3  # they learn


def test_corruption_noise_is_drawn_afresh_each_epoch(mnist):
    """At p = 1 the images are noise, new each epoch (a captured step is replayed with each epoch's keys):
    nothing to learn beyond the labels' frequencies. Noise that came back each epoch would be memorised."""
    splits = data.to_device(data.subset(mnist, 64, 64), "cpu")
    freq = torch.bincount(splits["train"].y, minlength=10).float() / 64
    entropy = -(freq[freq > 0] * freq[freq > 0].log()).sum().item()
    spec, cfg = {"family": "mlp", "widths": [256], "activation": "relu"}, TrainConfig(epochs=40, batch_size=0, lr=1e-2)
    alone = fit(models.build(spec), splits, replace(cfg, corruption=1.0))
    members = pop.fit(pop.Population(spec, [0, 1], "cpu"), splits, cfg, [1.0, 1.0])
    clean = fit(models.build(spec), splits, cfg)
    assert clean["train_loss"] < 0.2 * entropy  # 64 clean images are memorised
    for m in [alone, *members]:
        assert m["train_loss"] > 0.8 * entropy


def test_member_weights_load_into_a_plain_model():
    spec = {"family": "mlp", "widths": [16], "activation": "relu"}
    population = pop.Population(spec, [4, 5], "cpu")
    torch.manual_seed(5)
    alone = models.build(spec)
    twin = models.build(spec)
    twin.load_state_dict(population.member_state(1))
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(twin(x), alone(x))


def test_a_short_split_ends_in_a_batch_as_large_as_the_whole_splits():
    split = data.DeviceSplit(torch.rand(1000, 1, 28, 28), torch.zeros(1000, dtype=torch.long))
    short = pop.same_kernels(split, 128)
    assert len(short) == 3 * 128 + 1000 % 128 and torch.equal(short.x, split.x[:len(short)])
    assert pop.same_kernels(split, 300) is split  # no shorter split has its last batch


def test_kernels_asked_for_again_are_waited_for_not_compiled_again(mnist):
    train = data.to_device(data.subset(mnist, 300, 10), "cpu")["train"]
    spec, cfg = {"family": "mlp", "widths": [8], "activation": "relu"}, TrainConfig(batch_size=64, corruption=0.5)
    pop.compile_kernels([spec], train, cfg, wait=False)  # as corruption's prepare does, before Ray starts
    key = json.dumps(pop.kernel_spec(spec), sort_keys=True)
    started = {k: v for k, v in pop._compiling.items() if k[1] == key}
    pop.compile_kernels([spec], train, cfg)
    again = {k: v for k, v in pop._compiling.items() if k[1] == key}
    assert len(started) == 2 and again == started
    assert all(f.done() and f.exception() is None for f in started.values())


def test_kernels_are_compiled_once_for_the_activations_that_share_them(mnist):
    """An MLP's kernels do not take its activation, so a campaign's MLPs compile them once; a CNN's fused blocks do."""
    train = data.to_device(data.subset(mnist, 300, 10), "cpu")["train"]
    cfg = TrainConfig(batch_size=48, corruption=0.5)
    for family, shape in (("mlp", {"widths": [8]}), ("cnn", {"channels": [2], "hidden": 4})):
        specs = [{"family": family, **shape, "activation": act} for act in ("relu", "tanh", "gelu")]
        before = set(pop._compiling)
        pop.compile_kernels(specs, train, cfg)
        assert len(set(pop._compiling) - before) == (2 if family == "mlp" else 6), family  # training and evaluation


def test_a_diverging_member_fails_the_population(mnist):
    splits = data.to_device(data.subset(mnist, 1000, 200), "cpu")
    population = pop.Population({"family": "mlp", "widths": [], "activation": "relu"}, [0, 1], "cpu")
    cfg = TrainConfig(epochs=3, batch_size=0, optimizer="sgd", lr=1e38, inputs="center")
    with pytest.raises(FloatingPointError, match="diverged"):
        pop.fit(population, splits, cfg, [0.0, 0.0])


def test_population_size_defaults_by_device_and_never_exceeds_the_runs():
    from tune_mnist.driver import Resources, population_size

    gpu, cpu = Resources(gpus_per_trial=0.5), Resources(gpus_per_trial=0.0)
    assert population_size(0, gpu, 40) == 16 and population_size(0, cpu, 40) == 1
    assert population_size(0, gpu, 3) == 3 and population_size(0, gpu, 1) == 1  # one seed trains alone
    assert population_size(4, cpu, 10) == 4  # an explicit --population holds on a CPU too


DENSE_ADAM = """
import torch
from tune_mnist import data, population as pop, train

splits = data.to_device(data.subset(data.load(), 512, 128), "cpu")
spec = {"family": "mlp", "widths": [40, 24], "activation": "tanh"}
for optimizer in ("adam", "adamw"):
    cfg = train.TrainConfig(batch_size=100, optimizer=optimizer, weight_decay=0.05, lr=3e-3)
    fused, plain, start = (pop.Population(spec, [0, 1], "cpu") for _ in range(3))
    torch_adam = train.make_optimizer(list(plain.params.values()), cfg)
    for p, opt in ((fused, pop.make_optimizer(fused, cfg)), (plain, torch_adam)):
        run = pop.epoch_loop(p, opt, splits["train"], cfg, [0.0, 0.3])
        for epoch in range(2):
            run(epoch)
    assert fused.dense_adam is not None and plain.dense_adam is None
    assert all(fused.params[k].grad is None for k in ("1.weight", "3.weight", "5.weight"))
    for k, w in fused.params.items():  # measured 1e-6-2e-5 of how far they moved; 0.5 or more without Adam's
        moved = (plain.params[k] - start.params[k]).norm()  # second bias correction
        assert (w - plain.params[k]).norm() < 1e-4 * moved, (optimizer, k)
"""


def test_dense_adam_kernel_updates_weights_as_torchs_adam():
    """The dense weights' Adam (and AdamW) fused into their gradient's product, under Triton's interpreter:
    12 steps of 2 members (a last partial batch each epoch) end where torch's optimizer ends."""
    under_triton_interpreter(DENSE_ADAM)


FUSED_BLOCKS = """
import torch
from torch import nn
from tune_mnist import conv_pool, models
from tune_mnist import population as pop
calls, blocks = [], conv_pool.blocks
conv_pool.blocks = lambda *args: calls.append(1) or blocks(*args)


def as_the_kernels_round(params, layers, n_blocks):
    # The forward kernels take images, activations and weights into fp16 products and keep activations
    # between blocks in fp16: with fp16-exact images and weights and the unfused pools' outputs rounded to
    # fp16 (gradients passed unrounded, as between the kernels), the unfused layers compute what the kernels
    # should, up to float rounding (and the rare fp16 rounding that a last-bit difference tips the other
    # way: 1e-4 rather than 1e-5).
    with torch.no_grad():
        for v in params:
            v.copy_(v.half().float())
    for pool in [m for m in layers if isinstance(m, nn.MaxPool2d)][:n_blocks - 1]:
        pool.register_forward_hook(lambda m, i, out: out + (out.half().float() - out).detach())


# 64 -> 72 runs the kernels for wide blocks (conv_pool.QUAD_TILE, NINE_TAPS_TILE)
for act, channels in [("relu", [8, 16]), ("leaky_relu", [8, 16, 24]), ("tanh", [8, 16]), ("gelu", [4, 16, 16]),
                      ("sigmoid", [8, 16]), ("relu", [4, 64, 72])]:
    spec = {"family": "cnn", "channels": channels, "hidden": 32, "activation": act}
    p = pop.Population(spec, [0, 1, 2], "cpu")
    assert p.fused_blocks == len(channels), (act, channels)
    as_the_kernels_round(p.params.values(), [m for _, m in p.layers], len(channels))
    x = torch.rand(3, 5, 1, 28, 28).half().float()
    fused = p(x)
    fused_grads = torch.autograd.grad(fused.square().sum(), list(p.params.values()))
    with torch.inference_mode():
        fused_shared = p(x[0], shared=True)
    torch.manual_seed(1)
    alone = models.build(spec)  # a single CNN runs the same kernels, as a population of one
    as_the_kernels_round(alone.parameters(), alone, len(channels))
    calls.clear()
    assert torch.allclose(alone(x[1]), fused[1], rtol=1e-5, atol=1e-6) and calls, (act, channels)
    alone_grads = torch.autograd.grad(alone(x[1]).square().sum(), list(alone.parameters()))
    plain_alone_grads = torch.autograd.grad(nn.Sequential.forward(alone, x[1]).square().sum(), list(alone.parameters()))
    for a, b in zip(alone_grads, plain_alone_grads):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max(), (act, channels)
    p.fused_blocks = 0
    plain = p(x)
    plain_grads = torch.autograd.grad(plain.square().sum(), list(p.params.values()))
    assert torch.allclose(fused, plain, rtol=1e-4, atol=1e-5), (act, channels)
    assert torch.allclose(fused_shared, p(x[0], shared=True), rtol=1e-4, atol=1e-5), (act, channels)
    for a, b in zip(fused_grads, plain_grads):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max(), (act, channels)
assert not conv_pool.fusable(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), torch.device("cpu"))
"""


def test_fused_conv_blocks_equal_the_layers_they_replace():
    under_triton_interpreter(FUSED_BLOCKS)
    spec = {"family": "cnn", "channels": [8], "hidden": 0, "activation": "relu"}
    assert not pop.Population(spec, [0], "cpu").fused_blocks or os.environ.get("TRITON_INTERPRET") == "1"


COMPILE_AHEAD = """
import torch
from torch import nn
from tune_mnist import conv_pool


def signature(kernel, grid, args, kwargs):
    return kernel, grid, [(a.dtype, a.shape) if isinstance(a, torch.Tensor) else a for a in args], kwargs


x = torch.rand(2, 3, 1, 28, 28)
params = [torch.rand(2, 4, 1, 3, 3), torch.rand(2, 4), torch.rand(2, 16, 4, 3, 3), torch.rand(2, 16)]
acts = (conv_pool.ACTIVATIONS[nn.GELU], conv_pool.ACTIVATIONS[nn.ReLU])
launched, launch = [], conv_pool._launch
conv_pool._launch = lambda kernel, grid, *args, **kwargs: (launched.append(signature(kernel, grid, args, kwargs)),
                                                          launch(kernel, grid, *args, **kwargs))
h, saved = conv_pool.forward_blocks(x, acts, params)
conv_pool.backward_blocks(saved, torch.ones_like(h), [w.shape for w in params[::2]])
evaluation = len(launched)
conv_pool.forward_blocks(x, acts, params, save=False)
launched, launched_eval = launched[:evaluation], launched[evaluation:]
conv_pool._launch = launch
compiled = []
for kernel in {k for k, *_ in launched}:
    kernel.warmup = lambda *args, grid, _k=kernel, **kwargs: compiled.append(signature(_k, grid, args, kwargs))
conv_pool._compile_ahead(x, acts, params, backward=True)
# a forward and backward's every kernel, with the arguments that key Triton's compilation, and nothing launched
assert len(launched) == 5 and sorted(map(repr, compiled)) == sorted(map(repr, launched)), (launched, compiled)
compiled.clear()
conv_pool._compile_ahead(x, acts, params, backward=False)  # evaluation: forwards that save nothing
assert len(launched_eval) == 2 and sorted(map(repr, compiled)) == sorted(map(repr, launched_eval)), compiled
assert sorted(map(repr, launched_eval)) != sorted(map(repr, launched[:2]))
assert getattr(conv_pool._ahead, "pool", None) is None
"""


def test_kernels_compile_ahead_as_a_step_launches_them():
    under_triton_interpreter(COMPILE_AHEAD)
