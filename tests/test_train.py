import pytest
import torch

from conftest import under_triton_interpreter
from tune_mnist import data, models
from tune_mnist.train import TrainConfig, evaluate, fit, make_optimizer


def test_trained_mlp_beats_90_percent_on_the_full_test_set(mnist):
    splits = data.to_device(data.subset(mnist, 20_000), "cpu")
    torch.manual_seed(0)
    net = models.mlp([128], "tanh")
    assert evaluate(net, splits["test"])["acc"] < 0.3  # untrained: near chance
    metrics = fit(net, splits, TrainConfig(epochs=3, batch_size=128, lr=1e-3))
    assert len(splits["test"]) == 10_000
    assert metrics["test_acc"] > 0.90
    assert metrics["final_train_loss"] < metrics["train_loss"] * 1.1


def test_cnn_learns_under_corruption(mnist):
    splits = data.to_device(data.subset(mnist, 6000, 1000), "cpu")
    torch.manual_seed(0)
    metrics = fit(models.cnn((8, 16), 32), splits, TrainConfig(epochs=3, corruption=0.2))
    assert metrics["test_acc"] > 0.8


def test_resumed_training_equals_uninterrupted(mnist):
    """Epoch-seeded order and noise: stopping after epoch 1 and resuming changes nothing."""
    splits = data.to_device(data.subset(mnist, 2000, 500), "cpu")
    cfg = TrainConfig(epochs=3, corruption=0.1, seed=3)
    torch.manual_seed(0)
    straight = models.mlp([32, 16])
    full = fit(straight, splits, cfg)

    torch.manual_seed(0)
    first = models.mlp([32, 16])
    opt = make_optimizer(first, cfg)
    fit(first, splits, TrainConfig(**{**cfg.as_dict(), "epochs": 1}), opt=opt)
    state = {"model": first.state_dict(), "optimizer": opt.state_dict()}
    resumed = models.mlp([32, 16])
    opt2 = make_optimizer(resumed, cfg)
    resumed.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    rest = fit(resumed, splits, cfg, opt=opt2, start_epoch=1)
    assert rest["epoch"] == 3
    assert abs(rest["final_train_loss"] - full["final_train_loss"]) < 1e-6


def test_save_and_load_round_trip(tmp_path):
    net = models.cnn((4, 8), 16, "gelu")
    spec = {"family": "cnn", "channels": [4, 8], "hidden": 16, "activation": "gelu"}
    models.save(tmp_path / "m.pt", net, spec, test_acc=0.5)
    back = models.load(tmp_path / "m.pt")
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(back(x), net(x)) and back.info["test_acc"] == 0.5 and back.spec == spec


def test_corruption_noise_is_uniform_at_rate_p_and_the_same_alone_or_in_a_population():
    from tune_mnist.train import corrupt, noise_keys

    clean = torch.zeros(2, 4000, 1, 28, 28)
    samples = torch.arange(4000).expand(2, -1)
    noisy = corrupt(clean, noise_keys([0.3, 1.0], seeds=[1, 2], epoch=0, device="cpu"), samples)
    assert (noisy[0] != 0).float().mean().item() == pytest.approx(0.3, abs=0.002)
    assert noisy[1].mean().item() == pytest.approx(0.5, abs=0.002)       # U[0, 1): mean 1/2,
    assert noisy[1].var().item() == pytest.approx(1 / 12, abs=0.001)     # variance 1/12
    alone = corrupt(clean[:1, :10], noise_keys([1.0], [2], epoch=0, device="cpu"), samples[:1, :10])
    assert torch.equal(alone[0], noisy[1, :10]), "a run's noise does not depend on its population"
    assert not torch.equal(corrupt(clean[:1, :10], noise_keys([1.0], [2], 1, "cpu"), samples[:1, :10]), alone), \
        "fresh each epoch"
    assert noise_keys([0.0, 0.0], [1, 2], 0, "cpu") is None


CORRUPT_KERNEL = """
import torch
from tune_mnist import kernels, train
x = torch.rand(3, 7, 1, 28, 28)
samples = torch.randint(0, 60000, (3, 40))[:, 5:12]   # a strided slice, as an epoch's order gives
keys = train.noise_keys([0.0, 0.3, 1.0], [0, 5, 11], 2, "cpu")
fused = train.corrupt(x, keys, samples)
kernels.available = lambda device: False  # what train.corrupt asks before it takes the kernel
plain = train.corrupt(x, keys, samples)
assert torch.equal(fused, plain) and not torch.equal(plain, x)
"""


def test_corruption_kernel_draws_the_same_bits_as_the_torch_ops():
    under_triton_interpreter(CORRUPT_KERNEL)
