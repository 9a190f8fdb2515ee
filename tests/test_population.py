"""A population of R members equals R separate runs, member by member, whatever their widths, lr and weight decay."""

import pytest
import torch

from conftest import fit, under_triton_interpreter
from tune_mnist import data, kernels, models
from tune_mnist.population import Member, Population
from tune_mnist.train import TrainConfig, Trainer
from tune_mnist.warmup import compile_ahead, kernel_key, same_kernels


def separately(members, splits, cfg):
    return [fit(Population([m], "cpu"), splits, cfg)[0] for m in members]


@pytest.mark.parametrize("spec", [
    {"family": "mlp", "widths": [64, 32], "activation": "tanh"},
    pytest.param({"family": "cnn", "channels": [8, 16], "hidden": 32, "activation": "relu"}, marks=pytest.mark.slow),
])
def test_members_equal_separate_runs(spec, mnist):
    splits = data.to_device(data.subset(mnist, 2000, 500), "cpu")
    members = [Member(spec, seed=s, weight_decay=1e-4, corruption=p) for s, p in [(0, 0.0), (1, 0.3), (2, 0.6)]]
    cfg = TrainConfig(epochs=2, batch_size=128)
    together = fit(Population(members, "cpu"), splits, cfg)
    for r, alone in enumerate(separately(members, splits, cfg)):
        for key in ("final_train_loss", "val_loss", "test_loss", "train_loss"):
            assert together[r][key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6), (r, key)
        assert together[r]["test_acc"] == pytest.approx(alone["test_acc"], abs=2e-3)
    assert together[0]["test_acc"] > 0.3  # they learn


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_members_of_different_widths_lr_and_weight_decay_equal_separate_runs(activation, mnist):
    """Padded to the widest, masked: sigmoid's padded units would output 1/2 and train their weights unmasked."""
    splits = data.to_device(data.subset(mnist, 2000, 500), "cpu")
    shapes = [[64, 32], [20, 90], [48, 48]]
    members = [Member({"family": "mlp", "widths": w, "activation": activation}, seed=r, lr=lr, weight_decay=wd)
               for r, (w, lr, wd) in enumerate(zip(shapes, [1e-3, 3e-3, 5e-4], [0.0, 1e-3, 1e-2]))]
    for optimizer in ("adam", "adamw"):
        cfg = TrainConfig(epochs=2, batch_size=100, optimizer=optimizer)
        pop = Population(members, "cpu")
        together = fit(pop, splits, cfg)
        for r, alone in enumerate(separately(members, splits, cfg)):
            for key in ("final_train_loss", "val_loss", "test_loss"):
                assert together[r][key] == pytest.approx(alone[key], rel=5e-4), (optimizer, r, key)
            assert pop.n_params(r) == models.n_params(models.build(members[r].spec))
        padding = pop.params["3.weight"][1, :, 20:]  # member 1's second layer reads 20 units of a padded 64
        assert torch.count_nonzero(padding) == 0, "padded weights stay zero"
        assert len({round(m["val_loss"], 4) for m in together}) == 3


def test_members_let_go_stop_and_the_rest_train_as_before(mnist):
    """Successive halving compacts the population; the members that go on continue exactly."""
    splits = data.to_device(data.subset(mnist, 1000, 300), "cpu")
    spec = {"family": "mlp", "widths": [32], "activation": "relu"}
    members = [Member(spec, seed=s, lr=lr) for s, lr in enumerate([1e-3, 1e-2, 3e-3])]
    cfg = TrainConfig(epochs=3, batch_size=128)
    trainer = Trainer(Population(members, "cpu"), splits, cfg)
    for metrics in trainer.epochs():
        if metrics[0]["epoch"] == 1:
            trainer.keep([0, 2])
    assert [m.seed for m in trainer.pop.members] == [0, 2] and trainer.pop.params["1.weight"].shape[0] == 2
    alone = separately([members[0], members[2]], splits, cfg)
    assert [m["val_loss"] for m in metrics] == pytest.approx([a["val_loss"] for a in alone], rel=1e-5)


def test_corruption_noise_is_drawn_afresh_each_epoch(mnist):
    """At p = 1 the images are noise, new each epoch (a captured step is replayed with each epoch's keys):
    nothing to learn beyond the labels' frequencies. Noise that came back each epoch would be memorised."""
    splits = data.to_device(data.subset(mnist, 64, 64), "cpu")
    freq = torch.bincount(splits["train"].y, minlength=10).float() / 64
    entropy = -(freq[freq > 0] * freq[freq > 0].log()).sum().item()
    spec, cfg = {"family": "mlp", "widths": [256], "activation": "relu"}, TrainConfig(epochs=40, batch_size=0)
    noisy = fit(Population([Member(spec, seed=s, lr=1e-2, corruption=1.0) for s in (0, 1)], "cpu"), splits, cfg)
    (clean,) = fit(Population([Member(spec, lr=1e-2)], "cpu"), splits, cfg)
    assert clean["train_loss"] < 0.2 * entropy  # 64 clean images are memorised
    for m in noisy:
        assert m["train_loss"] > 0.8 * entropy


def test_member_weights_load_into_a_plain_model():
    spec = {"family": "mlp", "widths": [16], "activation": "relu"}
    pop = Population([Member({**spec, "widths": [30]}, seed=4), Member(spec, seed=5)], "cpu")
    torch.manual_seed(5)
    alone = models.build(spec)
    twin = models.build(spec)
    twin.load_state_dict(pop.member_state(1))
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(twin(x), alone(x))
    assert torch.allclose(pop(x, shared=True)[1], alone(x), atol=1e-6)


def test_a_diverging_member_stops_alone_and_all_diverging_fail_the_population(mnist):
    splits = data.to_device(data.subset(mnist, 1000, 200), "cpu")
    spec = {"family": "mlp", "widths": [], "activation": "relu"}
    cfg = TrainConfig(epochs=10, batch_size=0, optimizer="sgd", inputs="center")
    healthy, wild = Member(spec, seed=0, lr=0.5), Member(spec, seed=1, lr=1e38)
    trainer, errors = Trainer(Population([healthy, wild], "cpu"), splits, cfg), []
    for metrics in trainer.epochs():
        errors += [m.get("error", "") for m in metrics]
        trainer.keep([r for r, m in enumerate(metrics) if "error" not in m])
    assert trainer.pop.members == [healthy] and metrics[0]["test_acc"] > 0.3
    assert sum("diverged" in e for e in errors) == 1 and len(errors) > 10, "reported once, then gone"
    with pytest.raises(FloatingPointError, match="diverged"):
        fit(Population([wild, wild], "cpu"), splits, cfg)


def test_a_short_split_ends_in_a_batch_as_large_as_the_whole_splits():
    split = data.DeviceSplit(torch.rand(1000, 1, 28, 28), torch.zeros(1000, dtype=torch.long))
    short = same_kernels(split, 128)
    assert len(short) == 3 * 128 + 1000 % 128 and torch.equal(short.x, split.x[:len(short)])
    assert same_kernels(split, 300) is split  # no shorter split has its last batch


def test_kernels_asked_for_again_are_waited_for_and_mlps_share_theirs(mnist):
    """Compiling ahead starts each kind once: an MLP's kernels do not take its activation or widths, a CNN's do."""
    train = data.to_device(data.subset(mnist, 300, 10), "cpu")["train"]
    cfg = TrainConfig(batch_size=48)
    mlps = [Member({"family": "mlp", "widths": [8 + i], "activation": a}, corruption=0.5)
            for i, a in enumerate(("relu", "tanh", "gelu"))]
    cnns = [Member({"family": "cnn", "channels": [2], "hidden": 4, "activation": a}) for a in ("relu", "tanh")]
    before = set(kernels._compiled)
    compile_ahead(mlps + cnns, train, cfg, wait=False)  # as corruption's prepare does, before Ray starts
    started = set(kernels._compiled) - before
    compile_ahead(mlps + cnns, train, cfg)
    assert set(kernels._compiled) - before == started
    assert len(started) == 2 * (1 + 2), "training and evaluation, for the MLPs once and each CNN"
    assert len({kernel_key(m, train, cfg) for m in mlps}) == 1
    assert all(kernels._compiled[k].done() and kernels._compiled[k].exception() is None for k in started)




@pytest.mark.slow
def test_adam_kernels_update_weights_as_the_torch_ops():
    """The dense weights' Adam fused into their gradient's product, and every other parameter's Adam kernel, under
    Triton's interpreter: 12 steps of 2 members of different widths, lr and weight decay end where torch's ops do."""
    under_triton_interpreter("adam_kernels.py")




@pytest.mark.slow
def test_fused_conv_blocks_equal_the_layers_they_replace():
    under_triton_interpreter("fused_blocks.py")




@pytest.mark.slow
def test_kernels_compile_ahead_as_a_step_launches_them():
    under_triton_interpreter("compile_ahead.py")
