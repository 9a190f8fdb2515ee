"""scaling end to end through real Ray Tune, on MNIST subsets."""

import contextlib
import io
import math
import re

import pytest

from conftest import run_notebook, run_study
from tune_mnist import cli, plots
from tune_mnist.files import read_table
from tune_mnist.studies import scaling


@pytest.fixture(scope="module")
def scaling_run(results, ray_session):
    return run_study(results, "scaling")


@pytest.fixture(scope="module")
def grid_run(results, ray_session):
    """A 3 x 3 grid, the smallest the joint law takes, where more data helps; and its summary line."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run = run_study(results, "scaling", "--widths", "2", "4", "8", "--fractions", "0.5", "0.25", "0.0625",
                        name="grid")
    return run, next(line for line in printed.getvalue().splitlines() if line.startswith("STUDY="))


def figure_links(run_dir):
    return re.findall(r"!\[[^]]*\]\(([^)]+)\)", (run_dir / "REPORT.md").read_text())


@pytest.mark.slow
def test_scaling_fits_say_loss_falls_with_data_and_where_data_wins(grid_run):
    run, line = grid_run
    fits = scaling.read_fits(run).set_index("fit")
    assert list(fits.index) == ["width", "fraction", "joint"] and fits["reason"].eq("").all()
    data, joint = fits.loc["fraction"], fits.loc["joint"]
    assert data["held"] == "width = 8" and data["points"] == 3
    assert data["beta"] > 0 and data["beta_low"] <= data["beta"] <= data["beta_high"]  # loss falls with data
    assert fits.loc["width", "alpha"] > 0 and joint["points"] == 9
    assert all(math.isfinite(joint[k]) for k in ("E", "alpha", "alpha_low", "alpha_high", "beta", "beta_low"))
    assert f"data_beta={data['beta']:.3g}[" in line and f"joint_alpha={joint['alpha']:.3g}[" in line
    doubled = read_table(run / "doubling.csv")
    assert sorted(zip(doubled["width"], doubled["fraction"])) == [(w, f) for w in (2, 4, 8)
                                                                  for f in (0.0625, 0.25, 0.5)]
    law = scaling.laws(scaling.read_fits(run))["joint"]
    for row in doubled.itertuples():
        better, twice_data, twice_width = law.better_doubling(row.width, row.fraction)
        assert row.better == better and twice_data == pytest.approx(row.twice_data)
    assert f"data_wins={(doubled['better'] == 'data').sum()}/9" in line
    text = (run / "REPORT.md").read_text()
    answer = text.split("## Answer")[1].split("##")[0]
    assert scaling.QUESTION in text and f"β = {data['beta']:.3g} (95% CI" in answer
    assert "doubling the" in answer.split("With the joint law, ")[1]
    links = figure_links(run)
    assert {"test_loss_vs_fraction.png", "test_loss_vs_width.png", "doubling.png"} <= set(links)
    assert all((run / link).stat().st_size > 10_000 for link in links)


@pytest.mark.slow
def test_scaling_report_says_the_grid_is_too_small_for_the_joint_law(scaling_run):
    fits = scaling.read_fits(scaling_run).set_index("fit")
    assert "needs at least 3 widths and 3 fractions" in fits.loc["joint", "reason"]
    assert fits.loc["fraction", "reason"] == "" and fits.loc["fraction", "beta"] > 0
    assert not (scaling_run / "doubling.csv").exists()
    answer = (scaling_run / "REPORT.md").read_text().split("## Answer")[1].split("##")[0]
    assert "was not fitted: needs at least 3 widths" in answer and "cannot say where more data beats" in answer
    assert all((scaling_run / link).is_file() for link in figure_links(scaling_run))


@pytest.mark.slow
def test_scaling_population_of_seeds_equals_separate_trials(results, ray_session):
    """--population 2: the two seeds of each cell train stacked, each equal to its own trial."""
    together = run_study(results, "scaling", "--seeds", "2", "--population", "2", name="pop2")
    apart = run_study(results, "scaling", "--seeds", "2", "--population", "1", name="sep2")
    key = ["width", "fraction", "seed"]
    stacked, separate = (read_table(run / "results.csv").set_index(key) for run in (together, apart))
    assert len(stacked) == len(separate) == 2 * 2 * 2 and (stacked["population"] == 2).all()
    assert stacked["error"].eq("").all() and stacked.index.is_unique
    for metric in ("final_train_loss", "test_loss"):
        assert (stacked[metric] / separate.loc[stacked.index, metric] - 1).abs().max() < 5e-4, metric
    member_runs = list((together / "tensorboard").glob("trial_*/m*/events.out.tfevents*"))
    assert len(member_runs) == 8, "one TensorBoard run per member"
    assert cli.main(["scaling", "--resume", str(together)]) == 0  # a finished run: nothing trains again
    assert len(list((together / "tensorboard").glob("trial_*/m*/events.out.tfevents*"))) == 8, "no run twice"


@pytest.mark.slow
def test_scaling_more_data_lowers_test_loss(scaling_run):
    frame = read_table(scaling_run / "results.csv")
    assert len(frame) == 4 and frame["error"].eq("").all()
    by_fraction = frame.groupby("fraction")["test_loss"].mean()
    assert by_fraction[0.5] < by_fraction[0.0625]
    assert (frame["n_train"] == (frame["fraction"] * 4000).round()).all()
    for name in ("heatmaps", "test_loss_vs_compute", "test_loss_vs_fraction", "test_loss_vs_width"):
        assert (scaling_run / f"{name}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_notebook_shows_the_run(tmp_path, scaling_run, monkeypatch):
    run_notebook("scaling", scaling_run, tmp_path / "figures", monkeypatch)


def test_the_grid_fractions_label_as_short_distinct_ticks():
    labels = [plots.tick(2.0 ** -j) for j in range(10)]
    assert labels == ["1", "0.5", "0.25", "0.125", "1/16", "1/32", "1/64", "1/128", "1/256", "1/512"]
    assert plots.tick(0.2) == "0.2" and plots.tick(67) == "67"
