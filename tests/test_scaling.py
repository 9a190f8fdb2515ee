"""scaling: its statistics on synthetic grids with planted effects and without, its report from CSVs alone, and
smoke runs end to end through real Ray Tune on MNIST subsets."""

import gc
import math
import re

import numpy as np
import pandas as pd
import pytest

from conftest import run_notebook, run_study
from tune_mnist import cli, laws, runs
from tune_mnist.files import read_table, write_csv
from tune_mnist.studies import scaling, scaling_plots, scaling_report

WIDTHS, FRACTIONS = (6, 8, 11, 16, 23), (1.0, 0.5, 0.25, 0.125, 0.0625)


def synthetic(loss, seeds=3, noise=0.01, rng=None, widths=WIDTHS, fractions=FRACTIONS, check=(), epochs=3):
    """A results.csv of a grid whose test loss is loss(w, f) times lognormal seed noise; `check` widths also at
    equal steps, whose loss is loss(w, 1) (training length, not data, sets it)."""
    rng = rng or np.random.default_rng(0)
    rows = []
    cells = [(w, f, "epochs") for w in widths for f in fractions]
    cells += [(w, f, "steps") for w in check for f in fractions if f < max(fractions)]
    for w, f, budget in cells:
        n = scaling.n_train(f, 55_000)
        per_epoch = scaling.steps_per_epoch(n, 128)
        epochs_run = epochs if budget == "epochs" else math.ceil(epochs * 430 / per_epoch)
        for seed in range(seeds):
            y = (loss(w, f) if budget == "epochs" else loss(w, 1.0)) * math.exp(rng.normal(0, noise))
            rows.append({"width": w, "fraction": f, "budget": budget, "seed": seed, "test_loss": y,
                         "test_acc": 1 - y / 3, "final_train_loss": y / 2, "final_train_acc": 1 - y / 6,
                         "n_train": n, "epochs_run": epochs_run, "steps": epochs_run * per_epoch,
                         "compute": scaling.macs(w) * n * epochs_run, "error": ""})
    return pd.DataFrame(rows)


def separable(w, f):
    return 0.02 + 0.3 * w ** -0.8 + 0.02 * f ** -0.5


def test_twice_the_data_beats_the_next_width_where_planted():
    # data matters, width barely: from every cell twice the data lowers the loss by ~30%, the next width by ~1%
    frame = synthetic(lambda w, f: 0.05 * w ** -0.02 * f ** -0.5)
    table = scaling_report.equal_compute(scaling_report.grid(frame))
    loss, acc = (table[table["metric"] == m] for m in ("test_loss", "test_acc"))
    assert len(loss) == len(acc) == 4 * 4 and (loss["family"] == 16).all()
    assert loss["compute_ratio"].between(0.8, 1.01).all()
    assert (loss["better"] == "data").all() and (acc["better"] == "data").all()
    assert (loss["difference_low"] > 0).all()  # wider − more data: the wider net's loss is higher
    # width matters, data not: the next width wins everywhere
    frame = synthetic(lambda w, f: 2 * w ** -1.0)
    loss = scaling_report.equal_compute(scaling_report.grid(frame)).query("metric == 'test_loss'")
    assert (loss["better"] == "width").all()


def test_no_difference_at_equal_compute_gives_few_false_positives(monkeypatch):
    """Every cell the same loss: over 200 simulated 3 x 3 grids at 5%, Holm over the 4 pairs keeps any false
    verdict to about 5% of grids (for each metric)."""
    monkeypatch.setattr(gc, "collect", lambda *_: 0)  # statsmodels' Holm collects garbage each call: 0.7 s here
    rng = np.random.default_rng(1)
    wrong = np.array([(scaling_report.equal_compute(scaling_report.grid(synthetic(
        lambda w, f: 0.1, rng=rng, widths=WIDTHS[:3], fractions=FRACTIONS[:3]))).groupby("metric")["better"]
        .apply(lambda b: (b != "not detected").any())).to_numpy() for _ in range(200)])
    assert wrong.shape == (200, 2) and (wrong.sum(axis=0) <= 20).all()


def test_one_seed_a_cell_gives_no_test_rather_than_a_verdict():
    table = scaling_report.equal_compute(scaling_report.grid(synthetic(separable, seeds=1)))
    assert len(table) and (table["better"] == "no test").all() and table["p"].isna().all()


def test_widths_a_doubling_apart_are_not_at_equal_compute():
    table = scaling_report.equal_compute(scaling_report.grid(synthetic(separable, widths=(4, 8, 16))))
    assert table.empty and "cannot say which pays more" in scaling_report.compute_words(table)


@pytest.fixture(scope="module")
def separable_answers():
    """The answers on a separable grid with the check at width 6: the law fits."""
    return scaling_report.answers(synthetic(separable, check=(6,), rng=np.random.default_rng(2)))


def test_a_separable_law_fits_and_a_law_with_wider_nets_worse_at_small_data_is_rejected(separable_answers):
    found = separable_answers
    joint = scaling_report.row_of(found["fits.csv"], "joint")
    assert joint["rejected"] == "" and joint["lack_of_fit_p"] > 0.05 and found["compute_matched.csv"] is not None
    assert "is not rejected by its test of fit" in scaling_report.joint_words(joint)
    assert found["results.csv"].query("budget == 'epochs'")["residual"].notna().all()

    def crossing(w, f):  # at small data wider nets are worse: the width effect flips sign with the data
        return separable(w, f) * (w / 11) ** -(0.3 * math.log2(f) + 0.6)

    found = scaling_report.answers(synthetic(crossing, seeds=3, rng=np.random.default_rng(3)))
    joint = scaling_report.row_of(found["fits.csv"], "joint")
    assert "lack of fit" in joint["rejected"] and found["compute_matched.csv"] is None
    words = scaling_report.joint_words(joint)
    assert "does not fit" in words and "no conclusion is drawn from it" in words and "α =" not in words
    trend = found["residual_trend.csv"]
    trend = trend.sort_values("fraction")
    assert trend["detected"].any() and trend["slope"].iloc[0] > 0 and (trend["slope"].diff().dropna() < 0).all()


def test_the_check_tells_a_data_effect_from_a_training_length_effect():
    """Planted: loss falls with the steps a cell trains, not with its images. At equal epochs the data seems to
    matter (β > 0); at equal steps it does not (β near 0)."""
    frame = synthetic(lambda w, f: 0.3 * w ** -0.5 * f ** -0.4, check=(6,))
    main = scaling_report.grid(frame)  # the joint law is not what this test reads: no bootstrap
    fitted = scaling_report.fits(frame, laws.joint_power_law(main["width"], main["fraction"], main["test_loss"], n=0))
    epochs = scaling_report.row_of(fitted, "fraction", "epochs", "width = 6")
    steps = scaling_report.row_of(fitted, "fraction", "steps", "width = 6")
    assert epochs["beta_low"] > 0.3 and abs(steps["beta"]) < 0.02 and steps["points"] == 3 * 5
    words = scaling_report.check_words(fitted, scaling_report.finished(frame))
    assert re.search(r"at width 6, β = -?0\.0\d* \(95% CI .*\) at equal steps against 0\.(39|40|41)", words)
    assert "1,290 steps" in words


def test_the_report_is_drawn_from_the_csvs_alone(tmp_path, separable_answers):
    runs.start(tmp_path, "scaling", {"seeds": 3, "epochs": 3}, ["python", "-m", "tune_mnist", "scaling"])
    for name, table in separable_answers.items():
        write_csv(tmp_path / name, table)
    scaling_report.report(tmp_path)
    text = (tmp_path / "REPORT.md").read_text()
    answer = text.split("## Answer")[1].split("## Method")[0]
    assert "25 cells (5 widths x 5 fractions, 3 seeds a cell, equal epochs)" in answer
    assert "is not rejected by its test of fit (lack-of-fit F(20, 50)" in answer
    assert "At about equal compute" in answer and "Holm over 16" in answer and "Check on the budget" in answer
    assert "## Method" in text and "Welch's t-test over seeds" in text and "equal epochs" in text
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert {"residuals.png", "equal_compute.png", "compute_matched.png", "budget_check.png"} <= set(links)
    assert all((tmp_path / link).stat().st_size > 10_000 for link in links)


def test_the_grid_fractions_label_as_short_distinct_ticks():
    labels = [scaling_plots.tick(2.0 ** -j) for j in range(10)]
    assert labels == ["1", "0.5", "0.25", "0.125", "1/16", "1/32", "1/64", "1/128", "1/256", "1/512"]
    assert scaling_plots.tick(0.2) == "0.2" and scaling_plots.tick(67) == "67"


# ----------------------------------------------------------------------------------------------------------------
# Smoke runs through Ray


@pytest.fixture(scope="module")
def scaling_run(results, ray_session):
    """The smoke grid: 3 widths x 3 fractions, 3 seeds a cell, and the check at width 3."""
    return run_study(results, "scaling")


@pytest.mark.slow
def test_smoke_run_trains_every_cell_and_states_its_seeds_fit_and_method(scaling_run):
    frame = read_table(scaling_run / "results.csv")
    grid, check = frame[frame["budget"] == "epochs"], frame[frame["budget"] == "steps"]
    assert len(grid) == 3 * 3 * 3 and len(check) == 2 * 3 and frame["error"].eq("").all()
    assert (grid["population"] == 3).all() and (grid.groupby(["width", "fraction"])["seed"].nunique() == 3).all()
    assert (grid["epochs_run"] == 1).all() and (grid["n_train"] == (grid["fraction"] * 4000).round()).all()
    assert (check["steps"] >= 16).all() and (check["width"] == 3).all()  # the largest fraction's 2,000 images: 16
    assert len(list((scaling_run / "tensorboard").glob("*/trial_*/m*/events.out.tfevents*"))) == 33, "a run per net"
    by_fraction = grid.groupby("fraction")["test_loss"].mean()
    assert by_fraction[0.5] < by_fraction[0.125]  # more data (and so more steps) lowers test loss
    fits = scaling_report.read_fits(scaling_run)
    joint = scaling_report.row_of(fits, "joint")
    assert joint["reason"] == "" and joint["units"] == 9 and math.isfinite(joint["lack_of_fit_p"])
    text = (scaling_run / "REPORT.md").read_text()
    answer = text.split("## Answer")[1].split("## Method")[0]
    assert "9 cells (3 widths x 3 fractions, 3 seeds a cell, equal epochs)" in answer
    assert ("is not rejected by its test of fit" in answer) != ("does not fit the grid" in answer)
    assert "At about equal compute" in answer and "Check on the budget" in answer
    assert "## Method" in text and scaling_report.QUESTION in text
    assert all((scaling_run / link).is_file() for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text))


@pytest.mark.slow
def test_a_cells_seeds_trained_together_equal_each_trained_alone(scaling_run, results):
    """--seeds 1 trains the first of the smoke's seeds alone: its nets equal that seed's in the 3-seed populations,
    and a grid of one width fits no joint law, which its report says."""
    alone = run_study(results, "scaling", "--seeds", "1", "--widths", "4", "--check-widths", "4", name="one")
    stacked = read_table(scaling_run / "results.csv").set_index(["width", "fraction", "budget", "seed"])
    single = read_table(alone / "results.csv").set_index(["width", "fraction", "budget", "seed"])
    assert len(single) == 3 + 2 and (single["population"] == 1).all()
    grid = single.xs("epochs", level="budget", drop_level=False)
    for metric in ("final_train_loss", "test_loss"):
        assert (grid[metric] / stacked.loc[grid.index, metric] - 1).abs().max() < 5e-4, metric
    answer = (alone / "REPORT.md").read_text().split("## Answer")[1].split("##")[0]
    assert "was not fitted: needs at least 3 widths" in answer and "cannot say which pays more" in answer
    assert cli.main(["scaling", "--resume", str(alone)]) == 0  # a finished run: nothing trains again
    assert len(list((alone / "tensorboard").glob("*/trial_*/m*/events.out.tfevents*"))) == 5, "no run twice"


@pytest.mark.slow
def test_notebook_shows_the_run(tmp_path, scaling_run, monkeypatch):
    run_notebook("scaling", scaling_run, tmp_path / "figures", monkeypatch)
