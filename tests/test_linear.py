"""linear end to end through real Ray Tune, on MNIST subsets; budget draws a linear run as its reference."""

import contextlib
import io
import json
import re

import pytest

from conftest import run_notebook, run_study
from tune_mnist.files import read_table
from tune_mnist.studies import linear


@pytest.fixture(scope="module")
def linear_output(results, ray_session):
    """The run and its summary line."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run = run_study(results, "linear", "--epoch-counts", "10", "100", "--plateau-tolerance", "0.05")
    return run, next(line for line in printed.getvalue().splitlines() if line.startswith("STUDY="))


@pytest.fixture(scope="module")
def linear_run(linear_output):
    return linear_output[0]


def test_linear_baseline_beats_85_percent(linear_run):
    trials = read_table(linear_run / "trials.csv")
    assert (trials["params"] == 7850).all()
    assert trials["test_acc"].max() > 0.85
    table = read_table(linear_run / "step_size_x_epochs.csv")
    assert set(table["epochs"]) == {10, 100} and len(table) == 4
    init = trials[trials["grid"] == "init"]
    assert len(init) == 2 * 2 and set(init["init_scale"]) == {0.0, 1.0}
    assert (linear_run / "loss_curves.png").is_file() and (linear_run / "init_curves.png").is_file()


def test_linear_report_states_the_plateau_and_whether_the_init_matters(linear_output):
    run, line = linear_output
    trials, curves = read_table(run / "trials.csv"), read_table(run / "curves.csv")
    lr = linear.chosen_lr(trials)
    stops = read_table(run / "plateaus.csv")
    chosen = stops[(stops["grid"] == "step_size") & (stops["lr"] == lr)].iloc[0]
    curve = curves[(curves["grid"] == "step_size") & (curves["lr"] == lr)].set_index("epoch")["train_loss"]
    epoch, before = chosen["plateau_epoch"], chosen["evaluated_before"]
    assert chosen["tolerance"] == 0.05 and epoch in curve.index and epoch < 100  # smoke's curve flattens by 5%
    # from the plateau on the loss falls by at most 5% of itself; from the evaluated epoch before, by more
    assert curve[curve.index >= epoch].min() >= (1 - 0.05) * curve[epoch]
    assert before == 0 or curve[curve.index >= before].min() < (1 - 0.05) * curve[before]
    assert len(stops) == len(trials) and (stops["plateau_epoch"] <= stops["last_epoch"]).all()
    init = read_table(run / "init.csv")
    assert sorted(init["init_scale"]) == [0.0, 1.0] and (init["seeds"] == 2).all()
    for name in ("test_loss", "test_acc"):
        assert (init[f"{name}_low"] <= init[name]).all() and (init[name] <= init[f"{name}_high"]).all()
    # init scale 1's seeds start apart, so their losses differ (their accuracies on 1,000 images may tie)
    assert (init["test_loss_high"] > init["test_loss_low"]).any()
    assert init["test_loss"].is_monotonic_increasing and not init["beaten"].iloc[0]
    verdict = "yes" if init["beaten"].any() else "no"
    assert f"best_lr={lr} plateau_epoch={epoch} init_matters={verdict}" in line
    text = (run / "REPORT.md").read_text()
    answer = text.split("## Answer")[1].split("\n## ")[0]
    assert linear.QUESTION in text and f"Step size {lr:g} gives the lowest final training loss" in answer
    assert f"past epoch {epoch} its training loss improves by less than 5%" in answer
    assert ("The starting point matters" if verdict == "yes" else "The starting point does not matter") in answer
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert {"plateau.png", "init.png"} <= set(links) and all((run / link).is_file() for link in links)


@pytest.fixture(scope="module")
def budget_run(results, linear_run):
    return run_study(results, "budget", "--P", "20000", "--trials", "0", "--max-depth", "2",
                     "--linear-run", str(linear_run))


@pytest.mark.slow
def test_budget_draws_the_linear_run_as_reference(budget_run, linear_run):
    meta = json.loads((budget_run / "run.json").read_text())
    assert meta["settings"]["linear_run"] == str(linear_run)
    assert (budget_run / "loss_vs_k.png").stat().st_size > 10_000


@pytest.mark.slow
def test_notebook_shows_the_run(tmp_path, linear_run, monkeypatch):
    run_notebook("linear", linear_run, tmp_path / "figures", monkeypatch)
