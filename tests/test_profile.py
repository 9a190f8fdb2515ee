"""--profile: the rows add up to the command's wall time, trials counted once however many ran at once; a real
linear run's table, its profile.csv and the timing columns of its trials."""

import json
import time

import pandas as pd
import pytest

from conftest import cli
from tune_mnist import data, profile
from tune_mnist.files import read_table
from tune_mnist.population import Member, Population
from tune_mnist.train import TrainConfig, Trainer


def trial(worker: int, started: float, first: float, end: float, **seconds: float) -> dict:
    phases = {"warmup_seconds": 0.0, "train_seconds": 0.0, "eval_seconds": 0.0, "report_seconds": 0.0, **seconds}
    return {"pid": worker, "node_ip": "n", "worker_started_at": started, "entered_at": first - 0.25,
            "first_epoch_at": first, "reported_at": end, **phases}


# An experiment from 100 to 110: worker 1 runs two trials (its process started before the experiment), worker 2
# one; random's kind of trial reports no timings, only Ray's; a trial of an earlier command is left out.
EXPERIMENT = {"started_at": 100.0, "ended_at": 110.0, "trials": [
    trial(1, 90.0, 101.0, 106.5, warmup_seconds=0.5, train_seconds=3.0, eval_seconds=1.0, report_seconds=0.5),
    trial(1, 90.0, 107.0, 109.0, train_seconds=1.5),
    trial(2, 102.0, 103.0, 108.0, train_seconds=4.0),
    {"pid": 3, "node_ip": "n", "timestamp": 105.0},
    trial(4, 50.0, 51.0, 60.0, train_seconds=9.0),
]}


def test_an_experiment_splits_into_its_trials_phases_and_the_driver():
    rows = {r.phase: r for r in profile.experiment_rows("grid", EXPERIMENT)}
    # spans: worker 1 [100, 106.5] and [106.5, 109], worker 2 [102, 108], worker 3 [100, 105]: 20 s of trials,
    # some trial running from 100 to 109, so 20/9 at once and the driver alone for 1 s
    assert rows["driver, no trial running"].seconds == pytest.approx(1.0)
    assert rows["worker start, actor reuse"].trial_seconds == pytest.approx(0.75 + 0.25 + 0.75)
    assert rows["set-up to the first epoch"].trial_seconds == pytest.approx(3 * 0.25)
    assert rows["training"].trial_seconds == pytest.approx(3.0 + 1.5 + 4.0)
    assert rows["rest of the trials"].trial_seconds == pytest.approx(0.5 + 0.5 + 1.0 + 5.0)
    assert sum(r.trial_seconds for r in rows.values() if r.trial_seconds is not None) == pytest.approx(20.0)
    assert rows["training"].seconds == pytest.approx(8.5 * 9 / 20)
    assert sum(r.seconds for r in rows.values()) == pytest.approx(10.0)
    assert {r.trials for r in rows.values()} == {4}


def test_the_command_rows_add_up_to_its_wall_time(tmp_path):
    (tmp_path / "ended" / "grid").mkdir(parents=True)
    (tmp_path / "ended" / "grid" / profile.TIMING).write_text(json.dumps(EXPERIMENT))
    clock = profile.Clock()
    clock.phases = [(profile.STARTUP, 90.0, 95.0), ("data load", 95.0, 97.0), (profile.STUDY, 97.0, 113.0),
                    ("Ray shutdown", 113.0, 114.0)]
    rows = profile.breakdown(clock, tmp_path)
    assert sum(r.seconds for r in rows) == pytest.approx(24.0)
    by = {r.phase: r.seconds for r in rows}
    assert by["study code before and between experiments"] == pytest.approx(3.0)
    assert by["after the last experiment"] == pytest.approx(3.0)
    printed = profile.report(clock, tmp_path, "title")
    assert read_table(tmp_path / profile.FILE)["seconds"].sum() == pytest.approx(24.0)
    assert "experiment grid: 10.0 s wall, 4 trials, 2.2 at once" in printed and "total" in printed


def test_a_trainer_times_its_passes_evaluations_and_first_epochs_extra(mnist):
    splits = data.to_device(data.subset(mnist, 2000, 500), "cpu")
    trainer = Trainer(Population([Member({"family": "mlp", "widths": [16], "activation": "relu"})], "cpu"), splits,
                      TrainConfig(epochs=4, eval_every=2))
    before = time.time()
    list(trainer.epochs())
    timing, seconds = trainer.timing, trainer.timing.report()
    assert len(timing.passes) == 4 and len(timing.evaluations) == 2 and timing.final > 0
    assert before <= seconds["first_epoch_at"] <= time.time()
    assert seconds["warmup_seconds"] >= 0 and seconds["train_seconds"] > 0 and seconds["eval_seconds"] > 0
    total = sum(timing.passes) + sum(timing.evaluations) + timing.final
    assert sum(seconds[k] for k in ("warmup_seconds", "train_seconds", "eval_seconds")) == pytest.approx(total)


@pytest.mark.slow
def test_a_profiled_linear_run_prints_where_its_wall_time_went(tmp_path):
    started = time.time()
    done = cli("linear", "--smoke", "--profile", "--results", str(tmp_path), "--name", "p", timeout=900)
    wall = time.time() - started
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "linear" / "p"
    rows = read_table(run / profile.FILE)
    total = rows["seconds"].sum()
    # the rows reach from the process's start to the table; the test's clock also holds Python's exit
    assert wall - 5 < total <= wall, (total, wall)
    assert f"{'total':<48}{total:10.2f}" in done.stdout
    trials = rows[rows["trial_seconds"].notna()].set_index(["experiment", "phase"])["trial_seconds"]
    for phase in ("worker start, actor reuse", "set-up to the first epoch", "training", "evaluation",
                  "checkpoints, reports"):
        assert (trials.xs(phase, level="phase") > 0).all(), phase
    assert set(rows["experiment"].fillna("")) == {"", "step_size", "init"}
    assert set(rows["phase"]) <= set(profile.NOTES), "every row says what it measures"
    per_trial = read_table(run / "trials.csv").groupby("trial_id").first()
    assert (per_trial["train_seconds"] > 0).all() and (per_trial["eval_seconds"] > 0).all()
    step_size = rows[(rows["experiment"] == "step_size") & (rows["phase"] == "training")]["trial_seconds"].iloc[0]
    assert step_size == pytest.approx(per_trial[per_trial["grid"] == "step_size"]["train_seconds"].sum())
    assert pd.Series(rows["seconds"] >= -0.01).all()
