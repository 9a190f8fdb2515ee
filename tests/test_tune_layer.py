"""The Ray Tune layer: HParams for every net, progress with an estimate, divergence and failure in a line,
interrupted.csv across experiments, checkpoints pruned, a run folder trusted before a resume, --address checked.

The first tests need no Ray (fake trials, run folders written by hand); those marked slow run experiments on real
Ray, with populations of MLPs on an MNIST subset and toy trainables that report as trial.train does.
"""

import io
import json
import os
import pickle
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray.cloudpickle
import torch
from ray import tune

from conftest import cli as run_cli
from test_tensorboard import hparams_dashboard
from tune_mnist import data as mnist_data, models
from tune_mnist.errors import UserError
from tune_mnist.files import read_table
from tune_mnist.population import Member
from tune_mnist.train import TrainConfig
from tune_mnist.tuning import cluster, progress, runner, trial

RES = cluster.Resources(cpus_per_trial=1)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module


class Payload:
    """Pickles as a call of open(marker, "w"): unpickling it creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


# ----------------------------------------------------------------------------------------------------------------
# Progress, on fake trials

def fake_trial(trial_id, members, result=None, error_file=None):
    return SimpleNamespace(trial_id=trial_id, status="RUNNING", config={"lr": 0.01, "members": members},
                           last_result=result or {}, error_file=error_file, path=f"/runs/trial_{trial_id}")


def test_progress_lines_count_trials_and_nets_estimate_what_is_left_and_name_a_diverged_net(capsys, tmp_path):
    trials = [fake_trial("a", [{"seed": 0}, {"seed": 1}], {"val_loss": 0.5, "time_total_s": 2.0, "m1/epoch": 1,
                                                            "m1/error": "diverged in epoch 1: training loss nan"}),
              fake_trial("b", [{"seed": 2}, {"seed": 3}], error_file=str(tmp_path / "error.txt")),
              fake_trial("c", [{"seed": 4}, {"seed": 5}])]
    (tmp_path / "error.txt").write_text("Traceback (most recent call last):\n...\n"
                                        "FloatingPointError: the run diverged\n")
    shown = progress.Progress("grid", "val_loss", [], trials=3, nets=6)
    shown.on_step_begin(0, trials)
    shown.started -= 60  # a minute in
    shown.on_trial_complete(0, trials, trials[0])
    trials[0].status = "TERMINATED"
    shown.on_trial_error(0, trials, trials[1])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "[grid] a net diverged: lr=0.01 seed=1 (diverged in epoch 1: training loss nan); it is recorded with its "
        "error and the others go on",
        "[grid] 1/3 done  val_loss=0.5000  (2.0s)  | trials 1/3, nets 2/6, 01:00 elapsed, ~02:00 left",
        "[grid] 2/3 FAILED b (lr=0.01 seed=2; lr=0.01 seed=3): FloatingPointError: the run diverged; see "
        "/runs/trial_b  | trials 2/3, nets 4/6, 01:00 elapsed, ~00:30 left"]


def test_a_resumed_experiment_estimates_from_the_trials_of_this_command_only(capsys):
    trials = [fake_trial(t, [{"seed": 0}]) for t in "abcd"]
    trials[0].status = trials[1].status = "TERMINATED"
    shown = progress.Progress("grid", "val_loss", [], trials=4, nets=4)
    shown.on_step_begin(0, trials)
    shown.started -= 10
    shown.on_trial_complete(0, trials, trials[2])
    resumed, line = capsys.readouterr().out.splitlines()
    assert resumed == "[grid] resumed: 2 of 4 trials already done, 2 to go"
    assert line.endswith("| trials 3/4, 00:10 elapsed, ~00:10 left")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_in_a_terminal_progress_is_one_refreshing_line_under_the_trials_lines(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    trials = [SimpleNamespace(status="PENDING", config={"members": [{"seed": s}, {"seed": s + 1}]}, trial_id=str(s),
                              last_result={"val_loss": 0.5, "m0/epoch": 2}) for s in range(3)]
    shown = progress.Progress("grid", "val_loss", [], trials=3, nets=6)
    shown.on_step_begin(0, trials)
    assert "\r[grid] trials 0/3, nets 0/6, 00:00 elapsed" in terminal.getvalue()
    assert "left" not in terminal.getvalue(), "no estimate before the first trial ends"
    shown.on_trial_complete(0, trials, trials[0])
    trials[0].status = "TERMINATED"
    shown.on_experiment_end(trials)
    text = terminal.getvalue()
    assert "[grid] 1/3 done  val_loss=0.5000  (0.0s)\n" in text and "| trials" not in text
    assert text.rstrip().endswith("[grid] trials 1/3, nets 2/6, 00:00 elapsed, ~00:00 left")


# ----------------------------------------------------------------------------------------------------------------
# A run folder before a resume, written by hand

def experiment(run_dir, statuses):
    """tune/exp of a run as Ray leaves it: its Tuner's pickle, its saved state (trial a TERMINATED, ...), and each
    trial's last checkpoint."""
    folder = run_dir / "tune" / "exp"
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    trials = [[json.dumps({"trial_id": t, "status": s}), "{}"] for t, s in statuses.items()]
    (folder / "experiment_state-2026-12-07_10-00-00.json").write_text(json.dumps({"trial_data": trials}))
    for t in statuses:
        checkpoint = folder / f"trial_{t}" / "checkpoint_000001"
        checkpoint.mkdir(parents=True)
        torch.save({"epoch": 2, "params": {"w": torch.ones(64, 64)}}, checkpoint / "state.pt")
    return folder


def test_a_resume_reads_no_pickle_from_a_run_folder_others_could_write(tmp_path, monkeypatch):
    """As ssh treats its keys: the folder and everything in it this user's, writable by no one else, else one line
    and nothing read (the poisoned tuner.pkl below would run its payload on unpickling)."""
    run_dir, marker = tmp_path / "run", tmp_path / "ran"
    tuner = experiment(run_dir, {"a": "TERMINATED"}) / "tuner.pkl"
    tuner.write_bytes(pickle.dumps(Payload(marker)))
    link = run_dir / "tune" / "link"
    untrusted = [(lambda: tuner.chmod(0o664), f"{tuner} can be written by others than its owner"),
                 (lambda: tuner.parent.chmod(0o757), f"{tuner.parent} can be written by others than its owner"),
                 (lambda: monkeypatch.setattr(os, "getuid", lambda: os.geteuid() + 1),
                  f"{run_dir} belongs to uid {os.geteuid()}, not to you (uid {os.geteuid() + 1})"),
                 (lambda: link.symlink_to(tmp_path), f"{link} is a symbolic link")]
    for make, why in untrusted:
        make()
        with pytest.raises(UserError) as refused:
            runner.check_checkpoints(str(run_dir))
        assert str(refused.value) == (f"refusing to resume {run_dir}: {why}, and a resume unpickles Ray's state "
                                      "there, which runs any code put in it (if you trust the folder: chmod -R "
                                      "go-w, or chown, it)")
        assert not marker.exists()
        monkeypatch.undo()
        tuner.chmod(0o644), tuner.parent.chmod(0o755), link.unlink(missing_ok=True)
    runner.check_checkpoints(str(run_dir))  # trusted: passes, and reads no pickle itself
    assert not marker.exists()
    pickle.loads(tuner.read_bytes())
    assert marker.exists(), "the payload is live"


def test_a_damaged_checkpoint_of_a_finished_trial_refuses_the_resume_and_changes_nothing(tmp_path, capsys):
    """Ray does not train a finished trial again: removing its damaged checkpoint would leave the run without it. A
    damaged checkpoint of an unfinished trial is removed, and the trial trains again from the start."""
    run_dir = tmp_path / "run"
    folder = experiment(run_dir, {"a": "TERMINATED", "b": "RUNNING"})
    states = {t: folder / f"trial_{t}" / "checkpoint_000001" / "state.pt" for t in "ab"}
    whole = states["a"].read_bytes()
    for path in states.values():
        path.write_bytes(whole[:len(whole) // 2])
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as refused:
        runner.check_checkpoints(str(run_dir))
    message = str(refused.value)
    assert message.startswith(f"{states['a']} is damaged (") and "its trial had finished" in message
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before, "the folder as it was"

    states["a"].write_bytes(whole)
    runner.check_checkpoints(str(run_dir))
    assert states["a"].is_file() and not states["b"].exists()
    assert f"{states['b']} is damaged" in capsys.readouterr().out


def test_a_grids_trials_and_nets_are_counted_from_its_space():
    space = {"epochs": 2, "activation": tune.grid_search(["relu", "tanh"]),
             "members": tune.grid_search([[{"seed": 0}, {"seed": 1}], [{"seed": 2}]])}
    assert runner.grid_size(space, 1) == (4, 6)
    assert runner.grid_size({"lr": tune.grid_search([0.1, 0.2]), "members": [{"seed": 0}]}, 3) == (6, 6)
    assert runner.grid_size({"scale": tune.grid_search([1, 2, 3])}, 1) == (3, None)


# ----------------------------------------------------------------------------------------------------------------
# --address

@pytest.mark.parametrize("address", ["127.0.0.1:-1", "127.0.0.1:0", "head:65536", "head", "head:", "ray://",
                                     "ray://:10001", "ray://head:x", "http://head:1", "a b:1", "head:1/x"])
def test_a_bad_address_is_refused_in_one_line_before_ray(address):
    start = time.time()
    with pytest.raises(UserError) as refused:
        cluster.connect(address)
    assert time.time() - start < 1 and str(refused.value).startswith(f"--address {address!r} is not local, auto,")


def test_addresses_name_their_host_and_port():
    assert cluster.endpoint("auto") is None and cluster.endpoint("local") is None
    assert cluster.endpoint("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert cluster.endpoint("[::1]:6379") == ("::1", 6379)
    assert cluster.endpoint("ray://head") == ("head", 10001)
    assert cluster.endpoint("ray://head.example.org:10002") == ("head.example.org", 10002)
    assert cluster.endpoint("ray_head:6379") == ("ray_head", 6379)


def test_an_address_where_something_else_listens_is_refused_within_seconds():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer():
        while True:
            conn, _ = server.accept()
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    start = time.time()
    with pytest.raises(UserError, match=f"cannot reach a Ray cluster at --address {address}: what listens there"):
        cluster.probe(address)
    assert time.time() - start < cluster.CONNECT_TIMEOUT_S + 2


# ----------------------------------------------------------------------------------------------------------------
# On real Ray

def mlp_trainable(config, data):
    """One-layer MLPs of the config's widths, seeds and learning rates, as one population."""
    members = [Member({"family": "mlp", "widths": [e["width"]], "activation": config["activation"]}, seed=e["seed"],
                      lr=e["lr"]) for e in config["members"]]
    trial.train(data, members, TrainConfig(epochs=config["epochs"], batch_size=100))


def toy_trainable(config, data):
    """Reports once per epoch with a checkpoint, as trial.train does; "fail" raises, "interrupt" sends the driver
    Ctrl-C's SIGINT once another trial has finished, then waits to be stopped."""
    import tempfile

    if config.get("fail"):
        raise FloatingPointError("training loss is nan in epoch 1 (lr=[1e+38]): the run diverged")
    if config.get("interrupt"):
        time.sleep(3)
        os.kill(config["driver"], signal.SIGINT)
        for _ in range(600):  # Tune stops a trial when it next reports
            time.sleep(0.1)
            tune.report({"epoch": 0})
    for epoch in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.pt").write_bytes(b"")
            tune.report({"epoch": epoch, "val_loss": 1.0 / epoch, "m0/epoch": epoch, "m0/val_loss": 1.0 / epoch},
                        checkpoint=tune.Checkpoint.from_directory(d))


def toy(run_dir, name, **kwargs):
    space = {"members": tune.grid_search([[{"seed": 0}], [{"seed": 1}]]), **kwargs.pop("space", {})}
    return runner.run(toy_trainable, run_dir, name, RES, None, param_space=space, **kwargs)


@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_session, mnist):
    """A run of two experiments: populations of MLPs (one member diverging) at two activations, and a toy one whose
    checkpoints are pruned."""
    run_dir = tmp_path_factory.mktemp("results") / "r"
    run_dir.mkdir()
    groups = [[{"width": 8, "seed": 0, "lr": 1e-2}, {"width": 16, "seed": 1, "lr": 3e-3},
               {"width": 8, "seed": 2, "lr": 1e38}], [{"width": 12, "seed": 3, "lr": 1e-2}]]
    out = io.StringIO()
    with redirect(out):
        frame = runner.populations(mlp_trainable, run_dir, "nets", RES, mnist_data.subset(mnist, 2000, 500),
                                   {"epochs": 2, "activation": tune.grid_search(["relu", "tanh"])}, groups,
                                   keep=["activation"], shown=["activation"], tensorboard=run_dir / "tensorboard")
        toy(run_dir, "toy", prune=True)
    return SimpleNamespace(run_dir=run_dir, frame=frame, out=out.getvalue())


class redirect:
    """sys.stdout to a stream (capsys is function-scoped; the study fixture is the module's)."""

    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        import sys

        self.saved, sys.stdout = sys.stdout, self.stream

    def __exit__(self, *exc):
        import sys

        sys.stdout = self.saved


@pytest.mark.slow
def test_every_net_is_one_hparams_row_with_its_settings_and_final_metrics(study):
    """Populations of three and of one: a row per net, its entry and the trial's activation as hparams, its last
    metrics (the diverged ones stopped at epoch 1) as TensorBoard's dashboard reads them from the whole run folder."""
    shown = hparams_dashboard(study.run_dir)
    assert len(shown) == len(study.frame) == 8, sorted(shown)
    for row in study.frame.itertuples():
        hparams, metrics = shown[f"tensorboard/trial_{row.trial_id}/m{row.member}"]
        assert hparams == {"activation": row.activation, "width": row.width, "seed": row.seed, "lr": row.lr}
        assert metrics["diverged"] == (row.lr > 1) and metrics["epochs_trained"] == row.epoch
        if row.lr < 1:
            assert metrics["val_loss"] == pytest.approx(row.val_loss)
            assert metrics["test_acc"] == pytest.approx(row.test_acc)
            assert metrics["epochs_trained"] == 2 and metrics["stopped_early"] == 0


@pytest.mark.slow
def test_ray_keeps_its_scalars_but_writes_no_hparams_for_a_population_trial(study):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for folder in (study.run_dir / "tune" / "nets").glob("trial_*"):
        events = EventAccumulator(str(folder)).Reload()
        assert "ray/tune/val_loss" in events.Tags()["scalars"]
        with pytest.raises(KeyError):
            events.PluginTagToContent("hparams")


@pytest.mark.slow
def test_progress_counts_trials_and_nets_with_an_estimate_from_the_first_finished_trial(study):
    lines = [line for line in study.out.splitlines() if line.startswith("[nets]") and " done " in line]
    assert len(lines) == 4
    for k, line in enumerate(lines, start=1):
        assert f"[nets] {k}/4 done  activation=" in line
        tail = line.split("  | ")[1]
        assert tail.startswith(f"trials {k}/4, nets ") and tail.endswith(" left") and "elapsed, ~" in tail
    assert lines[-1].split("  | ")[1].startswith("trials 4/4, nets 8/8") and lines[-1].endswith("~00:00 left")


@pytest.mark.slow
def test_a_net_that_diverges_is_one_line_naming_its_settings(study):
    diverged = [line for line in study.out.splitlines() if "diverged" in line]
    assert len(diverged) == 2, diverged  # the lr=1e38 member, at both activations
    for line in diverged:
        assert line.startswith("[nets] a net diverged: width=8 seed=2 lr=1e+38 (diverged in epoch 1")
    assert set(study.frame[study.frame["lr"] > 1]["error"].str[:19]) == {"diverged in epoch 1"}


@pytest.mark.slow
def test_finished_trials_keep_their_last_checkpoint_or_none_where_pruned(study):
    kept = list((study.run_dir / "tune" / "nets").glob("trial_*/checkpoint_*"))
    assert len(kept) == 4 and all((c / "state.pt").is_file() for c in kept), kept
    rows = study.frame[study.frame["checkpoint"].ne("")]
    assert set(rows["checkpoint"]) == {str(c) for c in kept}
    assert not list((study.run_dir / "tune" / "toy").glob("trial_*/checkpoint_*"))
    grid = toy(study.run_dir, "toy", prune=True)  # resuming a finished, pruned experiment: its rows come back
    assert len(grid) == 2 and all(r.error is None and r.checkpoint is None for r in grid)


@pytest.mark.slow
def test_a_resume_of_a_real_run_reads_no_pickle_from_a_folder_others_can_write(study, tmp_path, monkeypatch):
    run_dir, marker = study.run_dir, tmp_path / "ran"
    state = run_dir / "tune" / "toy" / "tuner.pkl"
    original = state.read_bytes()
    state.write_bytes(pickle.dumps(Payload(marker)))
    try:
        for make_untrusted, why in [(lambda: state.chmod(0o664), "can be written by others than its owner"),
                                    (lambda: monkeypatch.setattr(os, "getuid", lambda: os.geteuid() + 1),
                                     f"belongs to uid {os.geteuid()}, not to you")]:
            make_untrusted()
            for resume in (lambda: runner.check_checkpoints(str(run_dir)), lambda: toy(run_dir, "toy", prune=True)):
                with pytest.raises(UserError) as refused:
                    resume()
                assert why in str(refused.value) and "\n" not in str(refused.value)
                assert not marker.exists()
            state.chmod(0o644)
            monkeypatch.undo()
        monkeypatch.setattr(runner, "check_trusted", lambda location: None)
        with pytest.raises(Exception):
            toy(run_dir, "toy", prune=True)  # unguarded, Ray's restore runs the payload
        assert marker.exists()
    finally:
        state.write_bytes(original)
        state.chmod(0o644)
    monkeypatch.undo()
    grid = toy(run_dir, "toy", prune=True)  # the folder as the run left it resumes
    assert len(grid) == 2 and all(r.error is None for r in grid)


@pytest.mark.slow
def test_a_damaged_last_checkpoint_of_a_real_finished_trial_refuses_the_resume(study):
    victim = sorted((study.run_dir / "tune" / "nets").glob("trial_*/checkpoint_*/state.pt"))[0]
    original = victim.read_bytes()
    victim.write_bytes(original[:len(original) // 2])
    try:
        before = sorted(p for p in study.run_dir.rglob("*"))
        with pytest.raises(UserError) as refused:
            runner.check_checkpoints(str(study.run_dir))
        assert f"{victim} is damaged" in str(refused.value) and "its trial had finished" in str(refused.value)
        assert sorted(p for p in study.run_dir.rglob("*")) == before
        assert victim.read_bytes() == original[:len(original) // 2]
    finally:
        victim.write_bytes(original)


@pytest.mark.slow
def test_interrupted_csv_lists_the_finished_trials_of_every_experiment(tmp_path, ray_session, capsys):
    """Ctrl-C in the second experiment: its finished trial and the first experiment's trials are listed."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    toy(run_dir, "first")
    with pytest.raises(runner.Interrupted):
        toy(run_dir, "second", space={"members": [{"seed": 2}], "driver": os.getpid(),
                                      "interrupt": tune.grid_search([False, True])})
    listed = read_table(run_dir / "interrupted.csv")
    assert sorted(zip(listed["experiment"], listed["seed"])) == [("first", 0), ("first", 1), ("second", 2)]
    assert (listed["epoch"] == 2).all()


@pytest.mark.slow
def test_every_trial_failing_is_one_line_and_a_user_error(tmp_path, ray_session, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    with pytest.raises(runner.Failed) as failed:
        toy(run_dir, "all", space={"fail": True})
    message = str(failed.value)
    assert isinstance(failed.value, UserError) and "\n" not in message
    assert message.startswith("every trial of all failed (2), the first with FloatingPointError: training loss is nan")
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if "FAILED" in line]
    assert len(lines) == 2 and all("(seed=" in line and "the run diverged" in line for line in lines), lines
    assert "Traceback" not in out.err + out.out


@pytest.mark.slow
def test_a_refusal_after_ray_started_is_one_line(tmp_path):
    done = run_cli("linear", "--smoke", "--cpus-per-trial", "1000", "--results", str(tmp_path / "results"),
                   timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("tune_mnist: error: a trial asks for 1000 CPU but the Ray cluster has ")


@pytest.mark.slow
def test_a_budget_run_keeps_what_export_and_resume_read_and_a_damaged_final_checkpoint_refuses_its_resume(
        tmp_path, ray_session, capsys):
    """Every net of every stage an HParams row; the depth grid's and Optuna's checkpoints gone, the confirmation's
    last kept for export; a resume of the finished run with that checkpoint damaged refused in one line, the folder
    unchanged; whole again, the finished run resumes to the same rows."""
    from tune_mnist import cli

    assert cli.main(["budget", "--P", "20000", "--max-depth", "1", "--seeds", "1", "--lrs", "0.001",
                     "--search-depths", "1", "--trials", "8", "--search-population", "8", "--epochs", "2",
                     "--train-limit", "2000", "--eval-limit", "500", "--confirm-top", "1", "--confirm-seeds", "1",
                     "--results", str(tmp_path), "--name", "b"]) == 0
    run_dir = tmp_path / "budget" / "b"
    trials = read_table(run_dir / "trials.csv")
    shown = hparams_dashboard(run_dir / "tensorboard")
    assert len(shown) == len(trials) == 2 + 8 + len(trials[trials["stage"] == "confirm"])
    for row in trials.itertuples():
        experiment = "search-k1" if row.stage == "search" else row.stage
        hparams, metrics = shown[f"P20000-{experiment}/trial_{row.trial_id}/m{row.member}"]
        assert (hparams["P"], hparams["stage"], hparams["k"], hparams["lr"]) == (20000, row.stage, row.k, row.lr)
        assert metrics["val_loss"] == pytest.approx(row.val_loss) and metrics["stopped_early"] == row.stopped_early

    assert not list(run_dir.glob("tune/P20000-grid/trial_*/checkpoint_*"))
    assert not list(run_dir.glob("tune/P20000-search-k1/trial_*/checkpoint_*"))
    confirm = sorted(run_dir.glob("tune/P20000-confirm/trial_*/checkpoint_*"))
    assert len(confirm) == trials[trials["stage"] == "confirm"]["trial_id"].nunique()
    assert trials[trials["stage"] != "confirm"]["checkpoint"].eq("").all()
    assert (run_dir / "best" / "P20000" / f"rank1{models.SUFFIX}").is_file()

    victim = confirm[0] / "state.pt"
    whole = victim.read_bytes()
    victim.write_bytes(whole[:len(whole) // 2])
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli.main(["budget", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{victim} is damaged" in err and "its trial had finished" in err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    victim.write_bytes(whole)
    assert cli.main(["budget", "--resume", str(run_dir)]) == 0
    again = read_table(run_dir / "trials.csv")
    columns = ["stage", "trial_id", "member", "val_loss", "checkpoint"]

    def ordered(frame):  # a restored experiment lists its trials in an order of its own
        return frame[columns].sort_values(columns[:3]).reset_index(drop=True)

    assert ordered(again).equals(ordered(trials))
