"""The untrained-weight search: batched scores equal nn.Module's, resume is exact, outputs reload."""

import json
from pathlib import Path

import pytest
import torch

from conftest import under_triton_interpreter
from tune_mnist import cli, models
from tune_mnist import random_search as rs


def accuracy(net, split):
    """A plain module's accuracy, as the batched scorer's exact fraction."""
    with torch.no_grad():
        return (net(split.x).argmax(1) == split.y).sum().item() / len(split)


@pytest.fixture(scope="module")
def splits(mnist):
    return rs.search_splits(mnist, 256, 1000, 1000, data_seed=0, device="cpu")


def test_batched_scores_equal_a_plain_module_net_by_net(splits):
    nets = rs.sample(96, 1.5, 0.5, torch.Generator().manual_seed(0), "cpu")
    batched = rs.accuracy(nets, splits["train"])
    net = models.tiny_cnn()
    for i in range(96):
        net.load_state_dict(rs.to_state_dict(nets, i))
        assert accuracy(net, splits["train"]) == batched[i].item()
    assert batched.max() > 0.15  # some random nets beat chance on 256 images


def test_chunking_does_not_change_scores(splits, monkeypatch):
    nets = rs.sample(40, 1.5, 0.5, torch.Generator().manual_seed(1), "cpu")
    whole = rs.accuracy(nets, splits["val"])
    monkeypatch.setattr(rs, "ACTIVATIONS_BUDGET", 512 * 4 * 144 * 4 * 3)  # 3 nets a chunk
    assert torch.equal(rs.accuracy(nets, splits["val"]), whole)


def test_splits_are_disjoint_and_fixed(mnist):
    a = rs.search_splits(mnist, 256, 1000, 1000, 7, "cpu")
    b = rs.search_splits(mnist, 256, 1000, 1000, 7, "cpu")
    assert torch.equal(a["val"].x, b["val"].x) and len(a["train"]) == 256
    flat = {name: {bytes(img.numpy().tobytes()) for img in (s.x[:200] * 255).byte()} for name, s in a.items()}
    assert not flat["train"] & flat["val"] and not flat["val"] & flat["test"]


def test_stopped_and_resumed_search_equals_one_straight_run(splits):
    settings = rs.Settings(nets_per_step=300, seed=5)
    straight = rs.Search(settings, splits)
    for _ in range(4):
        straight.step()
    first = rs.Search(settings, splits)
    for _ in range(2):
        first.step()
    saved = first.state_dict()
    resumed = rs.Search(settings, splits)
    resumed.load_state_dict(saved)
    for _ in range(2):
        resumed.step()
    assert resumed.summary() == straight.summary()
    assert resumed.pairs == straight.pairs and resumed.history == straight.history
    assert straight.evaluated == 1200 and straight.failed_screen + straight.passing == 1200
    assert straight.passing == sum(straight.pairs.values()) > 0


def test_expected_best_of_chance():
    assert rs.expected_best(1, 5000) == pytest.approx(0.1 + (0.09 / 5000) ** 0.5 * (2 * 0.6931471805599453) ** 0.5)
    assert rs.expected_best(10**6, 5000) > rs.expected_best(10**3, 5000) > 0.1


@pytest.fixture(scope="module")
def random_run(tmp_path_factory, ray_session):
    results = tmp_path_factory.mktemp("results")
    argv = ["random", "--smoke", "--weight-scales", "1.0", "2.0", "--results", str(results), "--name", "r"]
    assert cli.main(argv) == 0
    return results / "random" / "r"


def test_random_study_end_to_end(random_run, mnist):
    run_dir = random_run
    folders = sorted((run_dir / "searches").iterdir())
    assert [f.name for f in folders] == ["w1_b0.5_t0.2", "w2_b0.5_t0.2"]
    result = json.loads((folders[0] / "search_results.json").read_text())
    assert result["evaluated"] == 2048 and result["failed_screen"] + result["passing"] == 2048
    assert sum(n for _, _, n in result["pairs"]) == result["passing"] and result["history"]
    assert (folders[0] / "random_search.png").stat().st_size > 10_000
    val = rs.search_splits(mnist, 256, 1000, 1000, 0, "cpu")["val"]
    kept = result["kept"][-1]
    model = models.load(folders[0] / kept["file"])
    assert accuracy(model, val) == pytest.approx(kept["val"], abs=1e-9)
    assert kept["val"] == result["history"][-1]["val"]


def test_notebook_draws_every_search_of_a_run(random_run, tmp_path, monkeypatch):
    nbformat, nbclient = pytest.importorskip("nbformat"), pytest.importorskip("nbclient")
    monkeypatch.setenv("TUNE_MNIST_RUN", str(random_run))
    monkeypatch.setenv("TUNE_MNIST_FIGURES", str(tmp_path))
    notebook = nbformat.read(Path(__file__).parents[1] / "notebooks" / "random.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2 and sorted(p.name for p in tmp_path.glob("*.png")) == ["w1_b0.5_t0.2.png", "w2_b0.5_t0.2.png"]


FUSED_SCREEN = """
import torch
from tune_mnist import data
from tune_mnist.kernels import screen
from tune_mnist import random_search as rs
splits = rs.search_splits(data.load(), 128, 300, 300, 0, "cpu")
nets = rs.sample(24, 1.5, 0.5, torch.Generator().manual_seed(3), "cpu")
bands = screen.band_patches(splits["train"].x, screen.DTYPE)
counts = screen.count_correct(nets, bands, splits["train"].y)
assert (counts - (rs.accuracy(nets, splits["train"]) * 128).round().int()).abs().max() <= 2, counts
screen.CHUNK = 10   # operands built 10 nets at a time
assert torch.equal(screen.count_correct(nets, bands, splits["train"].y), counts)
screen.CHUNK = 65536
huge = rs.sample(8, 1e4, 0.5, torch.Generator().manual_seed(4), "cpu")   # overflows fp16: counted all right
assert (screen.count_correct(huge, bands, splits["train"].y) == 128).all()
fused, plain = rs.Search(rs.Settings(nets_per_step=120, seed=2), splits), rs.Search(rs.Settings(nets_per_step=120, seed=2), splits)
plain.bands = None
fused.step(); plain.step()
assert fused.bands is not None and fused.pairs, fused.summary()
assert fused.summary() == plain.summary() and fused.pairs == plain.pairs and fused.history == plain.history
assert len(fused.candidates(nets)) < 24  # the screen did drop nets, so the equality above tested it
"""


def test_fused_screen_kernel_counts_and_decides_as_fp32():
    under_triton_interpreter(FUSED_SCREEN)
