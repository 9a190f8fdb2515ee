"""transplant end to end through real Ray Tune, on MNIST subsets."""

import pytest

from conftest import run_notebook, run_study
from tune_mnist.files import read_table


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def transplant_run(results, ray_session):
    return run_study(results, "transplant")


def test_transplanted_layers_change_accuracy(transplant_run):
    long = read_table(transplant_run / "results.csv")
    assert len(long) == 2 * 3 * 2  # seeds x layers (128, 64, output) x directions
    trained = long["trained_test_acc"].iloc[0]
    init = long["init_test_acc"].iloc[0]
    assert trained > 0.8 and init < 0.3
    first_reset = long[(long["layer"] == 1) & (long["direction"] == "reset")]["test_acc"]
    assert (first_reset < trained - 0.05).all(), "resetting the first layer must hurt the trained net"
    summary = read_table(transplant_run / "results_summary.csv")
    assert set(summary["direction"]) == {"reset", "graft"} and "test_acc_std" in summary
    assert (transplant_run / "transplant.png").stat().st_size > 10_000


def test_notebook_shows_the_run(tmp_path, transplant_run, monkeypatch):
    run_notebook("transplant", transplant_run, tmp_path / "figures", monkeypatch)
