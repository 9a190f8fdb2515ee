"""Faults: a diverging trial fails alone, a killed Optuna search resumes with its history, writes are atomic."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from tune_mnist import cli
from tune_mnist.files import atomic_write, read_table

from conftest import cli as run_cli


def start_and_kill(args: list[str], marker: str, count: int) -> list[str]:
    """Runs the CLI, SIGKILLs its whole process group (driver and Ray) once `count` lines hold `marker`."""
    proc = subprocess.Popen([sys.executable, "-m", "tune_mnist", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen, hits, deadline = [], 0, time.time() + 240
    for line in proc.stdout:
        seen.append(line)
        hits += marker in line
        if hits >= count or time.time() > deadline:
            break
    ended_early = proc.poll()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert hits >= count, f"process ended with {ended_early} before {count} x {marker}:\n" + "".join(seen[-60:])
    return seen


def test_diverging_trial_is_recorded_and_the_study_goes_on(tmp_path, ray_session, capsys):
    argv = ["linear", "--smoke", "--step-sizes", "1e38", "0.3", "--epoch-counts", "100", "--results", str(tmp_path), "--name", "nan"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    trials = read_table(tmp_path / "linear" / "nan" / "trials.csv")
    failed = trials[trials["lr"] == 1e38]
    assert len(failed) == 1 and "diverged" in failed["error"].iloc[0]
    assert "FAILED" in out and "errors=1" in out
    assert trials[trials["lr"] == 0.3]["test_acc"].iloc[0] > 0.8  # the healthy trial finished


def test_killed_optuna_search_resumes_with_its_history(tmp_path):
    results = tmp_path / "results"
    args = ["budget", "--P", "20000", "--max-depth", "1", "--seeds", "1", "--trials", "8", "--epochs", "3",
            "--train-limit", "10000", "--eval-limit", "1000", "--max-concurrent", "2",
            "--results", str(results), "--name", "o"]
    start_and_kill(args, "[P20000-optuna]", 3)
    run_dir = results / "budget" / "o"
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal")))
    told_before = [t for t in optuna.load_study(study_name="budget-P20000", storage=journal).trials if t.state.is_finished()]
    assert len(told_before) >= 3

    done = run_cli("budget", "--resume", str(run_dir), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study = optuna.load_study(study_name="budget-P20000", storage=journal)
    finished = [t for t in study.trials if t.state.is_finished()]
    # continued, not restarted (that would add 8 more). A trial that finished between Ray's last experiment
    # snapshot and the kill is run again by Ray, so the journal may hold it twice: at most one per slot.
    assert 8 <= len(finished) <= 8 + 2, [t.state for t in study.trials]
    for before in told_before:  # what the sampler had learnt is still there, unchanged
        assert study.trials[before.number].params == before.params
    trials = read_table(run_dir / "trials.csv")
    assert (trials["stage"] == "optuna").sum() == 8 and trials["trial_id"].is_unique


@pytest.mark.parametrize("max_failures", [0, 1])
def test_max_failures_retries_a_trial_whose_worker_died(tmp_path, max_failures):
    """SIGKILL a trial's worker mid-training: with retries it resumes from its checkpoint, else it fails."""
    args = ["budget", "--P", "20000", "--max-depth", "1", "--seeds", "1", "--trials", "0", "--epochs", "12",
            "--eval-limit", "1000", "--max-concurrent", "1", "--max-failures", str(max_failures),
            "--results", str(tmp_path), "--name", "f"]
    proc = subprocess.Popen([sys.executable, "-m", "tune_mnist", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tune_dir, deadline, victim = tmp_path / "budget" / "f" / "tune", time.time() + 300, None
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            for path in tune_dir.glob("*/trial_*/result.json"):
                reports = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
                if 2 <= len(reports) < 10:  # mid-training, a checkpoint behind it
                    victim = path, reports[-1]["pid"]
                    os.kill(victim[1], signal.SIGKILL)
                    break
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert victim, "no trial was caught mid-training"
    assert proc.returncode == 0, out[-3000:]
    trials = read_table(tmp_path / "budget" / "f" / "trials.csv")
    killed = trials[trials["trial_id"] == victim[0].parent.name.removeprefix("trial_")]
    reports = [json.loads(line) for line in victim[0].read_text().splitlines() if line.endswith("}")]
    if max_failures:
        assert trials["error"].eq("").all() and "errors=0" in out
        assert {r["pid"] for r in reports} > {victim[1]}, "a new worker took the trial over"
        assert [r["epoch"] for r in reports] == list(range(1, 13)), "resumed from its checkpoint, no epoch twice"
    else:
        assert "actor is dead" in killed["error"].iloc[0], killed["error"]
        assert "errors=1" in out


def test_searcher_ignores_results_of_a_trial_optuna_already_closed():
    """The resume race, made deterministic: Optuna was told before the kill, Ray reruns and reports."""
    from tune_mnist.studies.budget import ResumableOptunaSearch

    search = ResumableOptunaSearch(space=lambda trial: {"x": trial.suggest_float("x", 0, 1)},
                                   metric="val_loss", mode="min", seed=0)
    search.suggest("t1")
    search._ot_study.tell(search._ot_trials["t1"], 1.0)  # told before the kill (the journal has it)
    search.on_trial_result("t1", {"val_loss": 0.5, "training_iteration": 1})  # Ray's rerun reports
    search.on_trial_complete("t1", {"val_loss": 0.4, "training_iteration": 2})
    (trial,) = search._ot_study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 1.0


def test_atomic_write_leaves_no_half_file(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")

    def crash(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half a ")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["table.csv"]


def test_unreachable_address_is_one_line_and_quick(tmp_path):
    start = time.time()
    done = run_cli("budget", "--smoke", "--address", "127.0.0.1:9", "--results", str(tmp_path / "results"))
    assert done.returncode == 2 and time.time() - start < 30
    assert done.stderr.strip().count("\n") == 0 and "cannot reach a Ray cluster at --address 127.0.0.1:9" in done.stderr
    assert not (tmp_path / "results").exists()
