"""linear end to end through real Ray Tune, on MNIST subsets; budget draws a linear run as its reference."""

import json

import pytest

from conftest import run_notebook, run_study
from tune_mnist.files import read_table


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def linear_run(results, ray_session):
    return run_study(results, "linear", "--epoch-counts", "10", "100")


def test_linear_baseline_beats_85_percent(linear_run):
    trials = read_table(linear_run / "trials.csv")
    assert (trials["params"] == 7850).all()
    assert trials["test_acc"].max() > 0.85
    table = read_table(linear_run / "step_size_x_epochs.csv")
    assert set(table["epochs"]) == {10, 100} and len(table) == 4
    init = trials[trials["grid"] == "init"]
    assert len(init) == 2 * 2 and set(init["init_scale"]) == {0.0, 1.0}
    assert (linear_run / "loss_curves.png").is_file() and (linear_run / "init_curves.png").is_file()


@pytest.fixture(scope="module")
def budget_run(results, linear_run):
    return run_study(results, "budget", "--P", "20000", "--trials", "0", "--max-depth", "2",
                     "--linear-run", str(linear_run))


def test_budget_draws_the_linear_run_as_reference(budget_run, linear_run):
    meta = json.loads((budget_run / "run.json").read_text())
    assert meta["settings"]["linear_run"] == str(linear_run)
    assert (budget_run / "loss_vs_k.png").stat().st_size > 10_000


def test_notebook_shows_the_run(tmp_path, linear_run, monkeypatch):
    run_notebook("linear", linear_run, tmp_path / "figures", monkeypatch)
