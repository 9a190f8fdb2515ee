"""The trainer: a population of one learns, resumes exactly, and its optimizer is torch's, member by member."""

import pytest
import torch

from conftest import fit, under_triton_interpreter
from tune_mnist import data, models
from tune_mnist.optim import Optimizer
from tune_mnist.population import Member, Population
from tune_mnist.train import TrainConfig, Trainer, evaluate


def alone(spec, seed=0, **kw):
    return Population([Member(spec, seed=seed, **kw)], "cpu")


def test_trained_mlp_beats_90_percent_on_the_full_test_set(mnist):
    splits = data.to_device(data.subset(mnist, 20_000), "cpu")
    net = alone({"family": "mlp", "widths": [128], "activation": "tanh"})
    assert evaluate(net, splits["test"])[0]["acc"] < 0.3  # untrained: near chance
    (metrics,) = fit(net, splits, TrainConfig(epochs=3, batch_size=128))
    assert len(splits["test"]) == 10_000
    assert metrics["test_acc"] > 0.90
    assert metrics["final_train_loss"] < metrics["train_loss"] * 1.1


def test_cnn_learns_under_corruption(mnist):
    splits = data.to_device(data.subset(mnist, 6000, 1000), "cpu")
    net = alone({"family": "cnn", "channels": [8, 16], "hidden": 32, "activation": "relu"}, corruption=0.2)
    assert fit(net, splits, TrainConfig(epochs=3))[0]["test_acc"] > 0.8


def test_resumed_training_equals_uninterrupted(mnist):
    """Epoch-seeded order and noise: stopping after epoch 1 and resuming from its state changes nothing."""
    splits = data.to_device(data.subset(mnist, 2000, 500), "cpu")
    spec, cfg = {"family": "mlp", "widths": [32, 16], "activation": "tanh"}, TrainConfig(epochs=3)
    full = fit(alone(spec, seed=3, corruption=0.1), splits, cfg)[0]

    first = Trainer(alone(spec, seed=3, corruption=0.1), splits, TrainConfig(epochs=1))
    list(first.epochs())
    params, state = {k: v.detach().clone() for k, v in first.pop.params.items()}, first.opt.state_dict()
    resumed = Trainer(alone(spec, seed=3, corruption=0.1), splits, cfg)
    resumed.pop.load(params)
    resumed.opt.load_state_dict(state)
    rest = list(resumed.epochs(start=1))[-1][0]
    assert rest["epoch"] == 3
    assert abs(rest["final_train_loss"] - full["final_train_loss"]) < 1e-6


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_optimizer_steps_as_torchs_for_each_member(kind):
    """Two members with their own lr and weight decay, each updated as torch.optim updates it alone."""
    torch.manual_seed(0)
    params = {"w": torch.randn(2, 5, 3, requires_grad=True), "b": torch.randn(2, 5, requires_grad=True)}
    lrs, decays = [1e-2, 3e-3], [0.0, 0.1]
    ours = Optimizer(params, kind, lrs, decays, momentum=0.9 if kind == "sgd" else 0.0)
    singles = [{k: v[r].detach().clone().requires_grad_() for k, v in params.items()} for r in range(2)]
    theirs = []
    for r, single in enumerate(singles):
        make = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[kind]
        extra = {"momentum": 0.9} if kind == "sgd" else {}
        theirs.append(make(single.values(), lr=lrs[r], weight_decay=decays[r], **extra))
    for step in range(5):
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        ours.zero_grad()
        for k, v in params.items():
            v.grad = grads[k].clone()
        ours.step()
        for r, (single, opt) in enumerate(zip(singles, theirs)):
            opt.zero_grad()
            for k, v in single.items():
                v.grad = grads[k][r].clone()
            opt.step()
    for r, single in enumerate(singles):
        for k, v in single.items():
            assert torch.allclose(params[k][r], v, rtol=1e-5, atol=1e-7), (kind, r, k)
    assert not torch.allclose(params["w"][0], singles[1]["w"]), "the members moved apart"


def test_save_and_load_round_trip(tmp_path):
    net = models.cnn((4, 8), 16, "gelu")
    spec = {"family": "cnn", "channels": [4, 8], "hidden": 16, "activation": "gelu"}
    models.save(tmp_path / "m.safetensors", net, spec, test_acc=0.5)
    back = models.load(tmp_path / "m.safetensors")
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(back(x), net(x)) and back.info["test_acc"] == 0.5 and back.spec["channels"] == [4, 8]


def test_corruption_noise_is_uniform_at_rate_p_and_the_same_alone_or_in_a_population():
    from tune_mnist.noise import corrupt, keys

    clean = torch.zeros(2, 4000, 1, 28, 28)
    samples = torch.arange(4000).expand(2, -1)
    noisy = corrupt(clean, keys([0.3, 1.0], seeds=[1, 2], epoch=0, device="cpu"), samples)
    assert (noisy[0] != 0).float().mean().item() == pytest.approx(0.3, abs=0.002)
    assert noisy[1].mean().item() == pytest.approx(0.5, abs=0.002)       # U[0, 1): mean 1/2,
    assert noisy[1].var().item() == pytest.approx(1 / 12, abs=0.001)     # variance 1/12
    lone = corrupt(clean[:1, :10], keys([1.0], [2], epoch=0, device="cpu"), samples[:1, :10])
    assert torch.equal(lone[0], noisy[1, :10]), "a run's noise does not depend on its population"
    assert not torch.equal(corrupt(clean[:1, :10], keys([1.0], [2], 1, "cpu"), samples[:1, :10]), lone), \
        "fresh each epoch"
    assert keys([0.0, 0.0], [1, 2], 0, "cpu") is None




def test_corruption_kernel_draws_the_same_bits_as_the_torch_ops():
    under_triton_interpreter("corrupt_kernel.py")
