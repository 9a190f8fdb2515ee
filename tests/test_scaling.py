"""scaling end to end through real Ray Tune, on MNIST subsets."""

import pytest

from conftest import run_notebook, run_study
from tune_mnist import cli
from tune_mnist.files import read_table


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def scaling_run(results, ray_session):
    return run_study(results, "scaling")


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


def test_scaling_more_data_lowers_test_loss(scaling_run):
    frame = read_table(scaling_run / "results.csv")
    assert len(frame) == 4 and frame["error"].eq("").all()
    by_fraction = frame.groupby("fraction")["test_loss"].mean()
    assert by_fraction[0.5] < by_fraction[0.0625]
    assert (frame["n_train"] == (frame["fraction"] * 4000).round()).all()
    for name in ("heatmaps", "test_loss_vs_compute", "test_loss_vs_fraction", "test_loss_vs_width"):
        assert (scaling_run / f"{name}.png").stat().st_size > 10_000


def test_notebook_shows_the_run(tmp_path, scaling_run, monkeypatch):
    run_notebook("scaling", scaling_run, tmp_path / "figures", monkeypatch)
