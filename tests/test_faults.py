"""Faults: a diverging trial fails alone, a killed Optuna search resumes with its history, writes are atomic."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import optuna
import pytest

from tune_mnist import cli
from tune_mnist.files import atomic_write, read_table
from tune_mnist.tuning import runner
from tune_mnist.tuning.search import STATE, PopulationSearch, journal

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


@pytest.mark.slow
def test_diverging_trial_is_recorded_and_the_study_goes_on(tmp_path, ray_session, capsys):
    argv = ["linear", "--smoke", "--step-sizes", "1e38", "0.3", "--epoch-counts", "100", "--population", "1",
            "--results", str(tmp_path), "--name", "nan"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    trials = read_table(tmp_path / "linear" / "nan" / "trials.csv")
    failed = trials[trials["lr"] == 1e38]
    assert len(failed) == 1 and "diverged" in failed["error"].iloc[0]
    assert "FAILED" in out and "errors=1" in out
    assert trials[trials["lr"] == 0.3]["test_acc"].iloc[0] > 0.8  # the healthy trial finished


@pytest.mark.slow
def test_killed_optuna_search_resumes_with_its_history_and_no_member_twice(tmp_path):
    """SIGKILL mid-stage-2 (populations of 8 Optuna trials): the resumed search keeps what Optuna was told and
    trains every one of the 32 trials exactly once."""
    results = tmp_path / "results"
    args = ["budget", "--P", "20000", "--max-depth", "1", "--seeds", "1", "--lrs", "0.001", "--search-depths", "1",
            "--trials", "32", "--search-population", "8", "--epochs", "3", "--train-limit", "10000",
            "--eval-limit", "1000", "--max-concurrent", "2", "--confirm-top", "1", "--confirm-seeds", "1",
            "--results", str(results), "--name", "o"]
    start_and_kill(args, "[P20000-search-k1]", 2)
    run_dir = results / "budget" / "o"
    told_before = [t for t in load(run_dir).trials if t.state.is_finished()]
    assert len(told_before) >= 2

    # the searcher's state poisoned, and a pickle beside it under the name earlier versions read: nothing runs
    experiment, marker = run_dir / "tune" / "P20000-search-k1", tmp_path / "ran"
    state = sorted(experiment.glob(STATE.format("*")))[-1]
    original = state.read_bytes()
    legacy = experiment / "searcher-state-2026-12-07_00-00-00.pkl"
    for target in (state, legacy):
        subprocess.run([sys.executable, "-c", CODE, str(target), str(marker)], check=True)
    refused = run_cli("budget", "--resume", str(run_dir), timeout=300)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-3000:]
    assert "is not a population search state" in refused.stderr and not marker.exists()
    state.write_bytes(original)

    done = run_cli("budget", "--resume", str(run_dir), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{legacy} is not read" in done.stdout and not marker.exists()
    trials = load(run_dir).trials
    assert len(trials) == 32 and all(t.state.is_finished() for t in trials), [t.state for t in trials]
    for before in told_before:  # what the sampler had learnt is still there, unchanged
        assert trials[before.number].params == before.params and trials[before.number].state == before.state
    rows = read_table(run_dir / "trials.csv")
    optuna_rows = rows[rows["stage"] == "search"]
    assert sorted(optuna_rows["number"]) == list(range(32)), "every member once"
    for t in trials:
        row = optuna_rows[optuna_rows["number"] == t.number].iloc[0]
        assert t.params["lr"] == pytest.approx(row["lr"]) and bool(row["stopped_early"]) == (t.state.name == "PRUNED")


def load(run_dir) -> optuna.Study:
    return optuna.load_study(study_name="budget-P20000-k1", storage=journal(run_dir / "optuna.journal"))


@pytest.mark.slow
@pytest.mark.parametrize("max_failures", [0, 1])
def test_max_failures_retries_a_trial_whose_worker_died(tmp_path, max_failures):
    """SIGKILL a trial's worker mid-training: with retries it resumes from its checkpoint, else it fails."""
    args = ["budget", "--P", "20000", "--max-depth", "1", "--seeds", "1", "--lrs", "0.001", "--trials", "0",
            "--epochs", "12", "--eval-limit", "1000", "--max-concurrent", "1", "--max-failures", str(max_failures),
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


def test_searcher_hands_out_again_what_optuna_asked_after_rays_last_snapshot(tmp_path):
    """The kill race, made deterministic: populations asked after the searcher's last save are trained on restore
    (a trial killed before it sampled its values samples them then), those Ray knew are not asked again, a trial
    told before the kill is not told twice, and no trial number is handed out twice."""
    def group(trial):
        return {"k": trial.suggest_int("k", 1, 2)}

    def define(trial):
        return {**group(trial), "x": trial.suggest_float("x", 0, 1)}

    def searcher():
        return PopulationSearch(define, group, n_trials=6, size=2, journal_path=tmp_path / "j", study_name="s",
                                shared={"P": 1})

    first = searcher()
    known = first.suggest("t1")
    first.save(str(tmp_path / "state"))
    lost = first.suggest("t2")  # asked after Ray's last snapshot: neither Ray nor the saved searcher knows it
    next_group = first.groups.ask()  # the next population: killed between a member's ask and its sampling
    first.study.enqueue_trial(group(next_group))
    bare = first.study.ask()
    assert len({m["k"] for m in known["members"]}) == 1 and len(known["members"]) == 2
    first.on_trial_result("t1", {"m0/val_loss": 0.5, "m0/epoch": 1, "m0/stopped_early": 1})
    first.on_trial_complete("t1", {"m0/val_loss": 0.5, "m0/epoch": 1, "m0/stopped_early": 1,
                                   "m1/val_loss": 0.3, "m1/epoch": 2})

    again = searcher()
    again.restore(str(tmp_path / "state"))
    handed, suggestion = [], again.suggest("t3")
    while suggestion != PopulationSearch.FINISHED:
        handed += suggestion["members"]
        suggestion = again.suggest(f"t{len(handed) + 4}")
    numbers = [m["number"] for m in handed]
    assert sorted(numbers) == [2, 3, 4, 5], "every trial after the snapshot once, then one more to reach 6"
    assert {m["number"]: m["x"] for m in lost["members"]} == {m["number"]: m["x"] for m in handed if m["number"] < 4}
    assert bare.number == 4 and "x" in again.study.trials[4].params
    again.on_trial_complete("t1", {"m0/val_loss": 0.9, "m0/epoch": 2, "m1/val_loss": 0.9, "m1/epoch": 2})
    pruned, complete = again.study.trials[:2]
    assert pruned.state.name == "PRUNED" and complete.state.name == "COMPLETE" and complete.value == 0.3
    populations = again.groups.trials
    assert populations[0].state.name == "COMPLETE" and populations[0].value == 0.3, "told its best member's value"
    assert [p.number for p in populations] == [0, 1, 2, 3], "the populations of before the kill, and one more"
    of = {2: 1, 3: 1, 4: 2, 5: 3}
    assert {m["number"]: m["k"] for m in handed} == {n: populations[p].params["k"] for n, p in of.items()}, \
        "members share their population's depth"


def test_an_experiment_whose_ray_state_was_cut_short_starts_again(tmp_path, capsys):
    """A kill while Ray copied its state to storage left its search state empty (seen in a resume from --storage):
    Ray's own restore would fail and start one trial without the search space, so the experiment starts again."""
    folder = tmp_path / "P20000-grid"
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(pickle.dumps({}))
    (folder / "experiment_state-2026-12-06_07-52-53.json").write_text(json.dumps({"trial_data": [], "stats": {}}))
    (folder / "basic-variant-state-2026-12-06_07-52-49.json").write_bytes(pickle.dumps({"older": True}))
    (folder / "basic-variant-state-2026-12-06_07-52-53.json").write_bytes(pickle.dumps({"variants": [1, 2]}))
    assert runner.restorable(str(folder)), "whole state files restore"
    (folder / "basic-variant-state-2026-12-06_07-52-53.json").write_bytes(pickle.dumps({"variants": [1, 2]})[:-7])
    assert not runner.restorable(str(folder)) and not folder.exists()
    assert "basic-variant-state-2026-12-06_07-52-53.json is damaged" in capsys.readouterr().out


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
    # Ray alone retries such an address for minutes; the bound leaves room for a loaded machine's imports
    done = run_cli("budget", "--smoke", "--address", "127.0.0.1:9", "--results", str(tmp_path / "results"),
                   timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "cannot reach a Ray cluster at --address 127.0.0.1:9" in done.stderr
    assert not (tmp_path / "results").exists()


CODE = """
import pickle, sys
class Payload:
    def __reduce__(self):
        return (open, (sys.argv[2], "w"))
with open(sys.argv[1], "wb") as f:
    pickle.dump({"epoch": Payload()}, f)
"""


@pytest.mark.slow
def test_ctrl_c_stops_in_seconds_and_a_resume_refuses_code_and_retrains_a_damaged_checkpoint(tmp_path):
    """SIGINT to the whole process group, as Ctrl-C in a terminal sends it: the command stops within seconds, says
    how to continue and saves what finished. A checkpoint that would run code is then refused; a truncated one
    is removed with a line saying so, and its trial trains again from the start."""
    results = tmp_path / "results"
    args = ["budget", "--P", "20000", "--max-depth", "2", "--seeds", "2", "--lrs", "0.001", "--epochs", "6",
            "--trials", "0", "--train-limit", "8000", "--eval-limit", "1000", "--results", str(results), "--name", "c"]
    proc = subprocess.Popen([sys.executable, "-m", "tune_mnist", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if " done " in line:
            break
    tune_dir = results / "budget" / "c" / "tune"
    while len({p.parent.parent for p in tune_dir.glob("*/trial_*/checkpoint_*/state.pt")}) < 3:
        time.sleep(0.1)  # a trial beside the finished one is mid-training, a checkpoint behind it
    sent = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    run_dir = results / "budget" / "c"
    assert proc.returncode == 130 and time.time() - sent < 20, err[-2000:]
    assert f"continue with python -m tune_mnist budget --resume {run_dir}" in err.strip().splitlines()[-1]
    finished = read_table(run_dir / "interrupted.csv")
    assert len(finished) >= 1 and (finished["epoch"] == 6).all() and not (run_dir / "trials.csv").exists()

    states = [p for p in run_dir.glob("tune/*/trial_*/checkpoint_*/state.pt")
              if p.parent.parent.name.removeprefix("trial_") not in set(finished["trial_id"])]
    assert states, "a trial was stopped mid-training, a checkpoint behind it"
    victim, original = states[0], states[0].read_bytes()
    subprocess.run([sys.executable, "-c", CODE, str(victim), str(tmp_path / "ran")], check=True)
    refused = run_cli("budget", "--resume", str(run_dir), timeout=300)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "holds code" in refused.stderr
    assert not (tmp_path / "ran").exists() and not (run_dir / "trials.csv").exists()

    victim.write_bytes(original[:len(original) // 2])
    done = run_cli("budget", "--resume", str(run_dir), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{victim} is damaged" in done.stdout and "trains again from the start" in done.stdout
    trials = read_table(run_dir / "trials.csv")
    assert len(trials) == 3 * 2 and (trials["epoch"] == 6).all() and trials["error"].eq("").all()
    assert not (run_dir / "interrupted.csv").exists()
