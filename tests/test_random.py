"""The untrained-weight search: batched scores equal nn.Module's, resume is exact, outputs reload; the study's
draws are disjoint and screen the same number of the same nets, passing nets are counted as generalising when val
and test stay above the screen, and the answer's tests hold their level on synthetic draws."""

import gc
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_notebook, under_triton_interpreter
from tune_mnist import cli, models, stats
from tune_mnist import random_search as rs
from tune_mnist.files import read_table
from tune_mnist.studies import random_report


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
    settings = rs.Settings(nets_per_step=150, seed=5)
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
    assert straight.evaluated == 600 and straight.failed_screen + straight.passing == 600
    assert straight.passing == sum(straight.pairs.values()) > 0


def test_passing_nets_are_scored_on_val_and_test_and_counted_where_both_stay_above(splits):
    search = rs.Search(rs.Settings(weight_scale=1.5, nets_per_step=300, seed=3, threshold=0.15), splits)
    search.step()
    nets = rs.sample(300, 1.5, 0.5, torch.Generator().manual_seed(3), "cpu")  # the same nets again
    passing = rs.accuracy(nets, splits["train"]) >= 0.15
    chosen = {k: v[passing] for k, v in nets.items()}
    val, test = (rs.accuracy(chosen, splits[name]) >= 0.15 for name in ("val", "test"))
    assert search.passing == int(passing.sum()) > 0
    assert (search.val_above, search.test_above, search.generalised) == (int(val.sum()), int(test.sum()),
                                                                          int((val & test).sum()))
    assert 0 < search.generalised < search.passing  # some passing nets generalise, not all
    # the chance baseline counts the nets scored on val, not all those screened
    assert search.summary()["expected_best"] == rs.expected_best(search.passing, 1000)
    assert search.history[-1]["scored"] <= search.passing


def test_expected_best_of_chance():
    assert rs.expected_best(1, 5000) == pytest.approx(0.1 + (0.09 / 5000) ** 0.5 * (2 * 0.6931471805599453) ** 0.5)
    assert rs.expected_best(10**6, 5000) > rs.expected_best(10**3, 5000) > 0.1


def draws(best_val, best_test, chance=0.12, passing=(500, 400, 300, 200), generalised=(100, 40, 90, 20)):
    """A searches.csv of one setting over len(best_val) draws of 10,000 nets each."""
    n = len(best_val)
    return pd.DataFrame({"weight_scale": 1.5, "bias_scale": 0.5, "threshold": 0.2, "data_seed": range(n),
                         "evaluated": 10_000, "passing": passing[:n], "generalised": generalised[:n],
                         "pass_rate": pd.Series(passing[:n]) / 10_000,
                         "generalised_rate": pd.Series(generalised[:n]) / pd.Series(passing[:n]),
                         "best_val": best_val, "best_test": best_test, "expected_best": chance,
                         "val_above_chance": np.array(best_val) - chance,
                         "val_minus_test": np.array(best_val) - np.array(best_test)})


def test_the_best_net_above_chance_is_found_and_val_against_test_holds_its_level(monkeypatch):
    monkeypatch.setattr(gc, "collect", lambda *_: 0)  # statsmodels' Holm collects garbage each call: slow here
    rng = np.random.default_rng(0)
    val = 0.28 + rng.normal(0, 0.003, 4)
    tests = random_report.comparisons(draws(val, val + rng.normal(0, 0.01, 4))).set_index("comparison")
    chance = stats.Comparison.from_row(tests.loc["chance"])
    assert chance.detected and chance.difference.low > 0.15 and chance.family == 2 and chance.sizes == (4,)
    # val and its test drawn alike: the paired test (Holm over two) finds a difference in about 5% of 200 runs
    found = 0
    for _ in range(200):
        val = 0.28 + rng.normal(0, 0.003, 4)
        tests = random_report.comparisons(draws(val, val + rng.normal(0, 0.01, 4))).set_index("comparison")
        found += stats.Comparison.from_row(tests.loc["test"]).detected
    assert found <= 20
    # a planted optimism of val over test is found
    val = 0.28 + rng.normal(0, 0.003, 4)
    tests = random_report.comparisons(draws(val, val - 0.05 + rng.normal(0, 0.005, 4))).set_index("comparison")
    assert stats.Comparison.from_row(tests.loc["test"]).detected


def test_draws_csv_pools_the_passing_nets_and_averages_over_draws():
    searches = draws([0.28, 0.29, 0.27, 0.285], [0.27, 0.28, 0.28, 0.27])
    row = random_report.across_draws(searches).iloc[0]
    assert (row["nets"], row["nets_equal"], row["passing"], row["generalised"]) == (10_000, True, 1400, 250)
    assert row["pooled_generalised_rate"] == pytest.approx(250 / 1400)  # the nets pooled, not the rates averaged
    wilson = stats.proportion_interval(250, 1400)
    assert (row["pooled_generalised_rate_low"], row["pooled_generalised_rate_high"]) == (wilson.low, wilson.high)
    over_draws = stats.mean_interval(searches["generalised_rate"])
    assert (row["generalised_rate_low"], row["generalised_rate_high"]) == pytest.approx((over_draws.low,
                                                                                         over_draws.high))
    # a draw where no net passed has no best net: it counts in the pass rate only, and the tests skip it
    searches = draws([0.28, np.nan, 0.27], [0.27, np.nan, 0.28], passing=(10, 0, 5), generalised=(2, 0, 1))
    row = random_report.across_draws(searches).iloc[0]
    assert (row["draws"], row["draws_passing"]) == (3, 2)
    assert (random_report.comparisons(searches)["n"] == 2).all()


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
        assert result["generalised"] <= min(result["val_above"], result["test_above"]) <= result["passing"]
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
        assert row.nets == 1024 and row.nets_equal
        assert row.expected_best == pytest.approx(np.mean([rs.expected_best(n, 1000) for n in part["passing"]]))


@pytest.mark.slow
def test_report_states_the_answer_and_shows_its_figures(random_run):
    text = (random_run / "REPORT.md").read_text()
    answer = text.split("## Answer")[1].split("##")[0]
    across, searches = read_table(random_run / "draws.csv"), read_table(random_run / "searches.csv")
    best = across.loc[across["best_val"].idxmax()]
    i = stats.mean_interval(searches.loc[searches["weight_scale"] == best.weight_scale, "pass_rate"])
    assert f"**weight scale {best.weight_scale:g}, bias scale 0.5" in answer and "over 2 disjoint draws" in answer
    assert "each screening the same 1,024 nets" in answer
    assert f"passes {i.mean:.2%} (95% CI {i.low:.2%} to {i.high:.2%}, 2 draws) of them" in answer
    assert f"**Passing generalises for {int(best.generalised):,} of the {int(best.passing):,} passing nets:**" in answer
    assert "best val" in answer and "the expected best of chance" in answer and "n = 2 draws" in answer
    assert "## Method" in text and "lock-step" in text
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
    # 3 settings at 1 CPU each on 2 CPUs: the third would wait for a search that never ends
    argv = ["random", "--smoke", "--max-nets", "0", "--weight-scales", "1", "2", "3", "--results", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "3 settings search until stopped but only 2 fit at once" in capsys.readouterr().err
    assert not list(tmp_path.glob("random/*/tune"))


@pytest.mark.slow
def test_a_time_limit_leaves_every_draw_at_the_same_count(tmp_path, ray_session):
    argv = ["random", "--smoke", "--max-nets", "0", "--time-limit", "60", "--nets-per-step", "256",
            "--data-seeds", "0", "1", "2", "--results", str(tmp_path), "--name", "t"]
    assert cli.main(argv) == 0
    searches = read_table(tmp_path / "random" / "t" / "searches.csv")
    assert len(searches) == 3 and searches["evaluated"].nunique() == 1 and searches["evaluated"].iloc[0] >= 512


@pytest.mark.slow
def test_notebook_shows_the_report_and_every_figure(random_run, tmp_path, monkeypatch):
    pytest.importorskip("nbformat"), pytest.importorskip("nbclient")
    run_notebook("random", random_run, tmp_path, monkeypatch)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["draws.png", *(f"{tag}.png" for tag in TAGS)]
    assert "## Answer" in (tmp_path / "REPORT.md").read_text()




@pytest.mark.slow
def test_fused_screen_kernel_counts_and_decides_as_fp32():
    under_triton_interpreter("fused_screen.py")
