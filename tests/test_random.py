"""The untrained-weight search: batched scores equal nn.Module's, resume is exact, outputs reload; the study's
draws are disjoint and screen the same nets, and its answer comes with intervals over them."""

import json
import re

import pytest
import torch

from conftest import run_notebook, under_triton_interpreter
from tune_mnist import cli, models, stats
from tune_mnist import random_search as rs
from tune_mnist.files import read_table


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
    argv = ["random", "--smoke", "--weight-scales", "1.0", "2.0", "--data-seeds", "0", "1", "--max-nets", "1024",
            "--results", str(results), "--name", "r"]
    assert cli.main(argv) == 0
    return results / "random" / "r"


TAGS = ["w1_b0.5_t0.2_d0", "w1_b0.5_t0.2_d1", "w2_b0.5_t0.2_d0", "w2_b0.5_t0.2_d1"]


@pytest.mark.slow
def test_random_study_end_to_end(random_run, mnist):
    folders = sorted((random_run / "searches").iterdir())
    assert [f.name for f in folders] == TAGS
    for folder in folders:
        result = json.loads((folder / "search_results.json").read_text())
        assert result["evaluated"] == 1024 and result["failed_screen"] + result["passing"] == 1024
        assert sum(n for _, _, n in result["pairs"]) == result["passing"] and result["history"]
        assert (folder / "random_search.png").stat().st_size > 10_000
        # the kept best reloads as a plain module and scores its val on its own draw's val split
        val = rs.search_splits(mnist, 256, 1000, 1000, result["data_seed"], "cpu")["val"]
        kept = result["kept"][-1]
        assert accuracy(models.load(folder / kept["file"]), val) == pytest.approx(kept["val"], abs=1e-9)
        assert kept["val"] == result["history"][-1]["val"]


@pytest.mark.slow
def test_data_seeds_screen_the_same_nets_on_disjoint_draws(random_run, mnist):
    searches = read_table(random_run / "searches.csv")
    assert searches[["weight_scale", "data_seed"]].values.tolist() == [[1, 0], [1, 1], [2, 0], [2, 1]]
    draws = [rs.search_splits(mnist, 256, 1000, 1000, seed, "cpu") for seed in (0, 1)]
    images = [{bytes(img.numpy().tobytes()) for s in d.values() for img in (s.x * 255).byte()} for d in draws]
    assert len(images[0]) == len(images[1]) == 2256 and not images[0] & images[1]
    generator = torch.Generator().manual_seed(0)  # the smoke's sampling seed, in its two steps of 512 nets
    steps = [rs.sample(512, 1.0, 0.5, generator, "cpu") for _ in range(2)]
    nets = {k: torch.cat([step[k] for step in steps]) for k in steps[0]}
    passing = [int((rs.accuracy(nets, d["train"]) >= 0.2).sum()) for d in draws]
    ones = searches[searches["weight_scale"] == 1]
    assert ones["passing"].tolist() == passing and passing[0] != passing[1]
    assert ones["pass_rate"].tolist() == [n / 1024 for n in passing]


@pytest.mark.slow
def test_draws_csv_has_each_settings_mean_and_interval_over_its_draws(random_run):
    searches, across = read_table(random_run / "searches.csv"), read_table(random_run / "draws.csv")
    assert across["weight_scale"].tolist() == [1, 2] and (across["draws"] == 2).all()
    for row in across.itertuples():
        part = searches[searches["weight_scale"] == row.weight_scale]
        for metric in ("pass_rate", "best_val", "best_test", "val_minus_test"):
            i = stats.mean_interval(part[metric])
            assert [getattr(row, metric), getattr(row, f"{metric}_low"), getattr(row, f"{metric}_high")] == \
                pytest.approx([i.mean, i.low, i.high])
        assert row.pass_rate == pytest.approx(part["pass_rate"].mean())
        assert row.pass_rate_low < row.pass_rate < row.pass_rate_high
        assert row.expected_best == pytest.approx(rs.expected_best(1024, 1000))


@pytest.mark.slow
def test_report_states_the_answer_and_shows_its_figures(random_run):
    text = (random_run / "REPORT.md").read_text()
    answer = text.split("## Answer")[1].split("##")[0]
    across, searches = read_table(random_run / "draws.csv"), read_table(random_run / "searches.csv")
    best = across.loc[across["best_val"].idxmax()]
    rates = searches.loc[searches["weight_scale"] == best.weight_scale, "pass_rate"] * 100
    assert f"**weight scale {best.weight_scale:g}, bias scale 0.5" in answer and "over 2 disjoint draws" in answer
    assert f"passes {stats.mean_interval(rates)} percent of the nets" in answer and "best of 1,024 chance" in answer
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert figures == ["draws.png", *(f"searches/{tag}/random_search.png" for tag in TAGS)]
    assert all((random_run / f).stat().st_size > 10_000 for f in figures)
    assert "python -m tune_mnist random --smoke" in text


def test_impossible_draws_are_rejected_before_anything_runs(tmp_path, capsys):
    for seeds in (["5"], ["0", "0"]):  # draw 5 of 10,256 images needs more than 60,000; a draw twice
        assert cli.main(["random", "--data-seeds", *seeds, "--results", str(tmp_path)]) == 2
        assert "--data-seeds" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_more_open_ended_searches_than_fit_at_once_are_rejected(tmp_path, capsys, ray_session):
    # 5 draws at 0.5 CPU each on 2 CPUs: the fifth would wait for a search that never ends
    argv = ["random", "--smoke", "--max-nets", "0", "--data-seeds", "0", "1", "2", "3", "4", "--results", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "5 searches run until stopped but only 4 fit at once" in capsys.readouterr().err
    assert not list(tmp_path.glob("random/*/tune"))


@pytest.mark.slow
def test_notebook_shows_the_report_and_every_figure(random_run, tmp_path, monkeypatch):
    pytest.importorskip("nbformat"), pytest.importorskip("nbclient")
    run_notebook("random", random_run, tmp_path, monkeypatch)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["draws.png", *(f"{tag}.png" for tag in TAGS)]
    assert "## Answer" in (tmp_path / "REPORT.md").read_text()




@pytest.mark.slow
def test_fused_screen_kernel_counts_and_decides_as_fp32():
    under_triton_interpreter("fused_screen.py")
