"""linear: its answers on synthetic curves and seeds (fast), then end to end through real Ray Tune on MNIST subsets
(slow); budget draws a linear run as its reference."""

import contextlib
import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import run_notebook, run_study
from tune_mnist.files import read_table
from tune_mnist.studies import linear_report as answers

EPOCHS = np.arange(10, 2001, 10)


def curve(loss: np.ndarray, seed: int, grid: str = "init", scale: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame({"epoch": EPOCHS, "train_loss": loss, "test_acc": 0.9, "grid": grid, "lr": 0.3, "seed": seed,
                         "init_scale": scale})


def flattening(seed: int) -> np.ndarray:
    """Approaches 0.3 exponentially: its fall over the next 100 epochs drops below 1% of itself at epoch 870."""
    return 0.3 + 2.0 * np.exp(-EPOCHS / 150.0) * (1 + 0.01 * seed)


def still_falling(seed: int) -> np.ndarray:
    """A power law whose fall over 100 epochs is still about 2.5% of itself at epoch 2,000."""
    return (1 + 0.01 * seed) * (EPOCHS / 10.0) ** -0.5


def trials_for(stops: pd.DataFrame) -> pd.DataFrame:
    """A trials table whose grid 1 chose step size 0.3."""
    init = len(stops)
    return pd.DataFrame({"grid": ["step_size", "step_size", *["init"] * init], "lr": [0.3, 1.0, *[0.3] * init],
                         "val_loss": [0.30, 0.70, *[0.3] * init], "error": ""})


def test_a_flattening_curve_has_its_plateau_where_the_rate_is_crossed():
    stops = answers.plateaus(pd.concat([curve(flattening(s), s) for s in (1, 2, 3)]), 0.01, 100)
    assert stops["reached"].all() and set(stops["plateau_epoch"]) <= {860.0, 870.0, 880.0}
    assert (stops["last_window_gain"] < 0.01).all() and (stops["last_epoch"] == 2000).all()
    text = answers.plateau_answer(trials_for(stops), stops, 1.0)
    assert text.startswith("Step size 0.3 has the lowest validation loss of the 2 tried after 2000 epochs")
    assert "the training loss improves by less than 1% of itself per 100 epochs from epoch" in text
    assert "in every seed: training stops paying there" in text


def test_a_curve_still_falling_at_the_end_has_not_reached_its_plateau():
    """The old definition (the gain still to come before the last epoch) put this curve's plateau near its end."""
    stops = answers.plateaus(pd.concat([curve(still_falling(s), s) for s in (1, 2, 3)]), 0.01, 100)
    assert not stops["reached"].any() and stops["plateau_epoch"].isna().all()
    assert (stops["last_window_gain"] > 0.02).all()
    text = answers.plateau_answer(trials_for(stops), stops, 1.0)
    assert "its plateau is not reached within 2000 epochs" in text and "train longer" in text


def test_some_seeds_reaching_the_plateau_is_said_as_such():
    stops = answers.plateaus(pd.concat([curve(flattening(1), 1), curve(still_falling(2), 2)]), 0.01, 100)
    text = answers.plateau_answer(trials_for(stops), stops, 1.0)
    assert "in 1 of 2 seeds" in text and "In the other 1 the plateau is not reached within 2000 epochs" in text


def seeds_at(rng: np.random.Generator, n: int, scales: list[float], effects: dict | None = None) -> pd.DataFrame:
    """Grid 2's trials: a seed's runs share a seed effect (the same initial direction at every scale but zero, where
    every seed is alike); a scale's planted effect is added to a metric ({(scale, metric): shift})."""
    rows = []
    for seed in range(1, n + 1):
        shared = rng.standard_normal(3)
        for scale in scales:
            base = {"test_loss": 0.30, "test_acc": 0.91, "final_train_loss": 0.28}
            for i, metric in enumerate(base):
                noise = 0.0 if scale == 0 else 0.002 * (shared[i] + 0.5 * rng.standard_normal())
                base[metric] += noise + (effects or {}).get((scale, metric), 0.0)
            rows.append({"grid": "init", "lr": 0.3, "seed": seed, "init_scale": scale, "error": "", **base})
    return pd.DataFrame(rows)


def test_a_start_differing_in_accuracy_alone_is_found_and_the_metrics_disagreement_said():
    trials = seeds_at(np.random.default_rng(0), 6, [1.0, 0.0, 10.0], {(10.0, "test_acc"): -0.01})
    tests = answers.init_tests(trials, [1.0, 0.0, 10.0])
    assert len(tests) == 6 and (tests["family"] == 6).all() and (tests["reference"] == 1.0).all()
    found = tests[tests["detected"]]
    assert list(zip(found["init_scale"], found["metric"])) == [(10.0, "test_acc")]
    assert found["difference"].iloc[0] == pytest.approx(-0.01, abs=0.003)
    text = answers.init_answer(tests, answers.init_summary(trials, [1.0, 0.0, 10.0]))
    assert text.startswith("The start matters by test accuracy: a difference from PyTorch's init is detected there.")
    assert re.search(r"PyTorch's init better than 10 x PyTorch's init in test accuracy by 0\.0\d+ \(95% CI", text)
    assert "over 6 tests, n = 6 seeds" in text
    assert "The metrics disagree on 10 x PyTorch's init: no difference detected by test loss, worse by test " \
           "accuracy, no difference detected by training loss." in text
    assert "- By test loss: no difference between zero init and PyTorch's init in test loss detected at n = 6" in text
    assert "does not matter" not in text


def test_the_seeds_pair_the_init_scales():
    """A shared seed effect larger than the scales' difference: paired, the difference is found; as two independent
    samples (Welch) it would not be."""
    from tune_mnist import stats

    rng = np.random.default_rng(1)
    trials = seeds_at(rng, 6, [1.0, 10.0])
    trials.loc[trials["init_scale"] == 10.0, "test_loss"] += 0.005
    trials["test_loss"] += np.repeat(0.02 * rng.standard_normal(6), 2)
    tests = answers.init_tests(trials, [1.0, 10.0]).set_index("metric")
    assert tests.loc["test_loss", "detected"]
    by = trials.groupby("init_scale")["test_loss"]
    assert not stats.welch_test(by.get_group(10.0), by.get_group(1.0)).detected


def test_no_start_effect_is_found_in_at_most_10_percent_of_200_nulls(frozen_gc):
    rng = np.random.default_rng(2)
    found = [answers.init_tests(seeds_at(rng, 6, [1.0, 0.0]), [1.0, 0.0])["detected"].any() for _ in range(200)]
    assert np.mean(found) <= 0.10


def test_nothing_detected_is_worded_as_not_detected():
    trials = seeds_at(np.random.default_rng(3), 3, [1.0, 0.0])
    tests = answers.init_tests(trials, [1.0, 0.0]).assign(detected=False)
    text = answers.init_answer(tests, answers.init_summary(trials, [1.0, 0.0]))
    assert text.startswith("No difference from PyTorch's init is detected at n = 3 seeds by test loss, test "
                           "accuracy or training loss (not detected, not shown equal")
    bullets = [line for line in text.splitlines() if line.startswith("- By ")]
    assert len(bullets) == 3 and all("detected at n = 3 seeds" in line and "95% CI" in line for line in bullets)


# ----------------------------------------------------------------------------------------------------------------
# End to end (slow): a --smoke run through Ray


@pytest.fixture(scope="module")
def linear_output(results, ray_session):
    """The run and its summary line."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run = run_study(results, "linear")
    return run, next(line for line in printed.getvalue().splitlines() if line.startswith("STUDY="))


@pytest.fixture(scope="module")
def linear_run(linear_output):
    return linear_output[0]


@pytest.mark.slow
def test_linear_baseline_beats_85_percent(linear_run):
    trials = read_table(linear_run / "trials.csv")
    assert (trials["params"] == 7850).all() and trials["error"].eq("").all()
    assert trials["test_acc"].max() > 0.85
    table = read_table(linear_run / "step_size_x_epochs.csv")
    assert set(table["epochs"]) == {10, 100, 200} and len(table) == 6
    init = trials[trials["grid"] == "init"]
    assert len(init) == 2 * 3 and set(init["init_scale"]) == {0.0, 1.0} and set(init["seed"]) == {1, 2, 3}
    assert set(trials[trials["grid"] == "step_size"]["seed"]) == {0}, "the step size is chosen on a seed of its own"
    zero = init[init["init_scale"] == 0.0]
    assert zero["final_train_loss"].nunique() == 1, "zero init starts every seed alike: full batches train it alike"
    assert (linear_run / "loss_curves.png").is_file() and (linear_run / "init_curves.png").is_file()


@pytest.mark.slow
def test_linear_report_states_the_plateau_and_each_metrics_verdict(linear_output):
    run, line = linear_output
    trials, curves = read_table(run / "trials.csv"), read_table(run / "curves.csv")
    lr = answers.chosen_lr(trials)
    steps = trials[trials["grid"] == "step_size"]
    assert lr == steps.loc[steps["val_loss"].idxmin(), "lr"]
    stops = read_table(run / "plateaus.csv")
    assert len(stops) == len(trials) and (stops["rate"] == 0.1).all() and (stops["window"] == 50).all()
    reference = stops[(stops["grid"] == "init") & (stops["init_scale"] == 1.0)]
    for row in reference.itertuples():  # smoke's curves flatten to 10% per 50 epochs within 200
        part = curves[(curves["grid"] == "init") & (curves["init_scale"] == 1.0) & (curves["seed"] == row.seed)]
        loss = part.set_index("epoch")["train_loss"]
        assert row.reached and row.plateau_epoch in loss.index
        after = loss[loss.index >= row.plateau_epoch]
        assert ((after.to_numpy()[:-5] - after.to_numpy()[5:]) < 0.1 * after.to_numpy()[:-5]).all()
        assert loss[row.plateau_epoch - 10] - loss[row.plateau_epoch + 40] >= 0.1 * loss[row.plateau_epoch - 10]
    tests = read_table(run / "init_tests.csv")
    assert len(tests) == 3 and (tests["family"] == 3).all() and (tests["n"] == 3).all()
    assert set(tests["metric"]) == {"test_loss", "test_acc", "final_train_loss"}
    detected = ",".join(tests[tests["detected"]]["metric"]) or "none"
    assert f"best_lr={lr} plateau_epoch={reference['plateau_epoch'].median():g} plateau_reached=3/3 " \
           f"start_differs_by={detected}" in line
    text = (run / "REPORT.md").read_text()
    answer = text.split("## Answer")[1].split("\n## ")[0]
    assert answers.QUESTION in text and f"Step size {lr:g} has the lowest validation loss of the 2 tried" in answer
    assert "the training loss improves by less than 10% of itself per 50 epochs from epoch" in answer
    for words in ("By test loss:", "By test accuracy:", "By training loss:"):
        assert words in answer
    assert "does not matter" not in answer
    method = text.split("## Method")[1].split("\n## ")[0]
    assert "seeds 1 to 3 at each init scale" in method and "paired t-test" in method and "Holm" in method
    assert "a seed sets only the initial weights" in method and "Bonferroni level 0.05/3" in method
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
