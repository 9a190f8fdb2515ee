"""The budget study end to end through real Ray Tune and Optuna, on MNIST subsets."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_notebook
from tune_mnist import cli, closed_form, data, models
from tune_mnist.tuning.search import journal

pytestmark = pytest.mark.slow  # real Ray runs of a whole study: the full suite only


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ray_session):
    results = tmp_path_factory.mktemp("results")
    argv = ["budget", "--smoke", "--P", "5000", "20000", "--results", str(results), "--name", "e2e"]
    assert cli.main(argv) == 0
    return results / "budget" / "e2e"


def read_trials(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "trials.csv", keep_default_na=False, na_values=[""])


def study(run_dir: Path, P: int) -> optuna.Study:
    return optuna.load_study(study_name=f"budget-P{P}", storage=journal(run_dir / "optuna.journal"))


def test_every_member_is_a_row_with_exact_parameter_counts(run_dir):
    trials = read_trials(run_dir)
    for P in (5000, 20000):
        part = trials[trials.P == P]
        # smoke: grid k in {0 (linear), 1.., 4} x 1 seed, then 6 Optuna trials, then the confirmed configurations
        depths = [0, *closed_form.depth_grid(P, 4)]
        assert sorted(part[part.stage == "grid"].k) == depths and (part.stage == "optuna").sum() == 6
        assert (part.stage == "confirm").sum() >= 2 * 2
    assert trials["error"].isna().all()
    for row in trials.itertuples():
        widths = closed_form.parse_widths(row.widths) if isinstance(row.widths, str) else []
        assert row.params == closed_form.count(widths)
        if row.stage == "grid" and row.k > 0:
            assert widths == [closed_form.width_for(row.k, row.P)] * row.k
        if "optuna" in (row.stage, row.from_stage):  # stage 1 takes m_P(k) as it is: k = 1 moves in steps of 795
            assert abs(row.params - row.P) <= 0.01 * row.P
    assert (trials.loc[trials.k == 0, "params"] == 7850).all()
    done = trials[trials.stopped_early == 0]
    assert (done["epoch"] == 2).all() and done["final_train_loss"].notna().all()
    assert (trials["test_acc"] > 0.5).any()  # 2 epochs on 4,000 images already learn


def test_each_member_is_its_own_optuna_trial_and_pruned_ones_are_marked(run_dir):
    trials = read_trials(run_dir)
    for P in (5000, 20000):
        told = {t.number: t for t in study(run_dir, P).trials}
        rows = trials[(trials.P == P) & (trials.stage == "optuna")].set_index("number")
        assert sorted(told) == sorted(rows.index) == list(range(6))
        for number, t in told.items():
            row = rows.loc[number]
            assert t.params["k"] == row.k and t.params["activation"] == row.activation
            if row.stopped_early:
                assert t.state == optuna.trial.TrialState.PRUNED and max(t.intermediate_values) == row.epoch
            else:
                assert t.state == optuna.trial.TrialState.COMPLETE and t.value == pytest.approx(row.val_loss)
                assert sorted(t.intermediate_values) == [1, 2]
        # 3 members a population: halving at epoch 1 stops the worst of each population's 3
        assert rows.stopped_early.sum() == 2 and rows.groupby("trial_id")[["k", "activation"]].nunique().max().max() == 1


def test_confirmation_trains_the_best_with_seeds_with_and_without_weight_decay(run_dir):
    trials = read_trials(run_dir)
    confirm = trials[trials.stage == "confirm"]
    for _, runs in confirm.groupby(["P", "config"]):
        decayed = runs[runs.weight_decay > 0]
        assert sorted(runs.seed.unique()) == [0, 1]
        assert len(decayed) in (0, len(runs) / 2) and (runs.weight_decay.isin([0, runs.config_weight_decay.iloc[0]])).all()
    best = json.loads((run_dir / "best.json").read_text())
    assert set(best) == {"5000", "20000"} and all(e[0]["seeds"] >= 2 for e in best.values())


def test_plot_and_run_record(run_dir):
    png = (run_dir / "loss_vs_k.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["study"] == "budget" and meta["settings"]["P"] == [5000, 20000] and meta["command"][:4] == [
        "python", "-m", "tune_mnist", "budget"]


def test_tensorboard_scalars_for_every_trial_and_member(run_dir):
    trials = read_trials(run_dir)
    events = sorted(run_dir.glob("tune/*/trial_*/events.out.tfevents.*"))
    assert len(events) == trials.trial_id.nunique()
    acc = EventAccumulator(str(events[0].parent)).Reload()
    assert all(s.value > 0 for s in acc.Scalars("ray/tune/val_loss"))
    pruned = trials[trials.stopped_early == 1].iloc[0]
    member = run_dir / "tensorboard" / f"P{pruned.P}-optuna" / f"trial_{pruned.trial_id}" / f"m{pruned.member}"
    steps = EventAccumulator(str(member)).Reload().Scalars("val_loss")
    assert [s.step for s in steps] == [1] and steps[0].value == pytest.approx(pruned.val_loss)


def test_exported_models_reload_with_the_same_test_accuracy(run_dir, mnist):
    best = json.loads((run_dir / "best.json").read_text())
    test = data.to_device(data.subset(mnist, 4000, 1000), "cpu")["test"]
    for P, entries in best.items():
        model = models.load(run_dir / entries[0]["file"])
        assert models.n_params(model) == entries[0]["params"]
        with __import__("torch").no_grad():
            acc = (model(test.x).argmax(1) == test.y).float().mean().item()
        assert acc == pytest.approx(entries[0]["test_acc"], abs=1e-6)


def test_stage1_population_of_seeds_equals_separate_trials_and_exports(tmp_path, ray_session):
    flags = ["budget", "--smoke", "--P", "20000", "--trials", "0", "--seeds", "2", "--results", str(tmp_path)]
    assert cli.main([*flags, "--population", "2", "--name", "pop"]) == 0
    assert cli.main([*flags, "--population", "1", "--name", "sep"]) == 0
    stacked, separate = (read_trials(tmp_path / "budget" / name).set_index(["k", "seed"]) for name in ("pop", "sep"))
    assert len(stacked) == len(separate) == 5 * 2 and (stacked["population"] == 2).all()
    assert (stacked["val_loss"] / separate.loc[stacked.index, "val_loss"] - 1).abs().max() < 5e-4
    best = json.loads((tmp_path / "budget" / "pop" / "best.json").read_text())["20000"][0]
    model = models.load(tmp_path / "budget" / "pop" / best["file"])  # a member's own weights
    assert models.n_params(model) == best["params"]


def test_export_command_writes_the_top_n(run_dir, capsys):
    assert cli.main(["export", str(run_dir), "--top", "2", "--format", "onnx"]) == 0
    assert (run_dir / "best" / "P5000" / "rank2.safetensors").is_file()
    assert json.loads((run_dir / "best.json").read_text())["5000"][1]["onnx"] == "best/P5000/rank2.onnx"
    assert (run_dir / "best" / "P5000" / "rank2.onnx").is_file()
    assert "rank=2" in capsys.readouterr().out


def test_killed_run_resumes_and_finishes_every_trial_once(tmp_path):
    """SIGKILL the whole process group (driver and Ray) mid-study, then --resume the run folder.

    The killed run keeps its trials in --storage (a URI), so resume restores Tune from there; the
    local resume is covered by test_faults' Optuna test.
    """
    results = tmp_path / "results"
    args = ["budget", "--P", "20000", "--max-depth", "8", "--seeds", "2", "--epochs", "4", "--trials", "0",
            "--train-limit", "20000", "--eval-limit", "1000", "--results", str(results), "--name", "r"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    storage = ["--storage", f"file://{tmp_path}/shared"]
    proc = subprocess.Popen([sys.executable, "-m", "tune_mnist", *args, *storage], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    finished, seen = [], []
    deadline = time.time() + 240
    for line in proc.stdout:
        seen.append(line)
        if " done " in line:
            finished.append(line.split("done", 1)[1].split()[:3:2])  # ['k=..', 'seed=..']
        if len(finished) >= 3 or time.time() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = results / "budget" / "r"
    assert len(finished) >= 3 and not (run_dir / "trials.csv").exists(), "".join(seen[-40:])

    done = subprocess.run([sys.executable, "-m", "tune_mnist", "budget", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trials already done" in done.stdout
    trials = read_trials(run_dir)
    configured = {(k, s) for k in [0, 1, 2, 3, 4, 6, 8] for s in (0, 1)}
    assert len(trials) == len(configured) == len(set(zip(trials.k, trials.seed)))
    assert set(zip(trials.k, trials.seed)) == configured
    odd = trials[(trials["epoch"] != 4) | trials["error"].notna()]
    assert odd.empty, odd[["k", "seed", "epoch", "training_iteration", "error", "trial_id"]].to_string()
    straight = subprocess.run([sys.executable, "-m", "tune_mnist", *args[:-1], "straight"],
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0
    same = read_trials(results / "budget" / "straight").set_index(["k", "seed"])["val_loss"]
    resumed = trials.set_index(["k", "seed"])["val_loss"]
    assert (resumed - same.loc[resumed.index]).abs().max() < 1e-6, "resumed run equals the uninterrupted run"
    for k, seed in finished:  # trials finished before the kill were not trained again
        row = trials[(trials.k == int(k[2:])) & (trials.seed == int(seed[5:]))].iloc[0]
        # one checkpoint per reported epoch: a rerun from scratch would have reached checkpoint_000007
        assert Path(row.checkpoint).name == "checkpoint_000003"
        assert row.checkpoint.startswith(f"{tmp_path}/shared/budget/r/tune/")


def test_optuna_dashboard_opens_the_study_journal(run_dir):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["optuna-dashboard", str(run_dir / "optuna.journal"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                studies = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2))
                break
            except OSError:
                time.sleep(0.2)
        names = {s["study_name"]: s["study_id"] for s in studies["study_summaries"]}
        assert set(names) == {f"budget-P{P}{kind}" for P in (5000, 20000) for kind in ("", "-populations")}
        shown = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{names['budget-P20000']}"))
        assert sorted(t["state"] for t in shown["trials"]) == ["Complete"] * 4 + ["Pruned"] * 2
    finally:
        server.kill()


def test_notebook_shows_the_run(tmp_path, run_dir, monkeypatch):
    run_notebook("budget", run_dir, tmp_path / "figures", monkeypatch)
