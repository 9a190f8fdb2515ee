"""A real two-node Ray cluster started with the `ray` CLI on this machine, with logical GPUs."""

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time

import pytest

from tune_mnist.files import read_table

pytestmark = pytest.mark.slow  # real `ray start` clusters: the full suite only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
RAY = [sys.executable, "-m", "ray.scripts.scripts"]


@contextlib.contextmanager
def cluster(*head_args: str):
    """A head started with the `ray` CLI; yields its GCS port and stops every process of this cluster only."""
    temp = f"/tmp/rc{os.getpid()}"  # our cluster's processes carry this in their command line
    port = free_port()
    try:
        subprocess.run([*RAY, "start", "--head", "--port", str(port), "--temp-dir", temp, "--include-dashboard",
                        "false", *head_args], env=ENV, check=True, capture_output=True, timeout=180)
        yield port
    finally:
        subprocess.run(["pkill", "-9", "-f", temp], check=False)
        # Ray Client's per-connection servers do not carry the temp dir, only the GCS address
        subprocess.run(["pkill", "-9", "-f", f"ray.util.client.server --address=[^ ]*:{port} "], check=False)


def wait_for_nodes(port: int, count: int) -> None:
    """Until the GCS lists `count` live nodes: a node that joins late would leave every trial on the head."""
    for _ in range(60):
        status = subprocess.run([*RAY, "status", "--address", f"127.0.0.1:{port}"], env=ENV, capture_output=True,
                                text=True, timeout=60).stdout
        if status.split("Pending:")[0].count(" node_") == count:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster never showed {count} nodes: {status}")


def test_study_runs_on_both_nodes_four_trials_on_two_logical_gpus_into_shared_storage(tmp_path):
    """With GPUs in the cluster and no --gpus-per-trial, each trial takes the default share, half a GPU."""
    with cluster("--num-cpus", "1", "--num-gpus", "1") as port:
        subprocess.run([*RAY, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--num-gpus", "1"],
                       env=ENV, check=True, capture_output=True, timeout=180)
        wait_for_nodes(port, 2)
        done = subprocess.run(
            [sys.executable, "-m", "tune_mnist", "budget", "--address", f"127.0.0.1:{port}",
             "--cpus-per-trial", "0.25", "--P", "20000", "--trials", "0",  # GPU share: the default, 0.5
             "--max-depth", "32", "--seeds", "1", "--lrs", "0.001", "--epochs", "12", "--train-limit", "8000",
             "--eval-limit", "1000",
             "--results", str(tmp_path), "--name", "c", "--storage", f"file://{tmp_path}/shared"],
            env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shared = tmp_path / "shared" / "budget" / "c"
    for name in ("run.json", "trials.csv", "loss_vs_k.png", "best.json", "best/P20000/rank1.safetensors"):
        assert (shared / name).is_file(), f"{name} was copied to the storage"
    assert len(list(shared.glob("tune/P20000-grid/trial_*/events.out.tfevents*"))) == 11, "TensorBoard files"
    assert not (tmp_path / "budget" / "c" / "tune").exists(), "Tune wrote to the storage, not the run folder"
    assert not list(shared.rglob(".*.tmp")), "no temporary files left"
    trials = read_table(tmp_path / "budget" / "c" / "trials.csv")
    assert trials["checkpoint"].str.startswith(str(shared / "tune")).all()
    assert len(trials) == 11 and trials["error"].eq("").all()
    assert trials["node_id"].nunique() == 2, "trials ran on both nodes"
    assert trials["cuda_visible_devices"].astype(str).eq("0").all(), "each trial saw the one logical GPU of its node"
    # half a GPU each: more trials at once than the two GPUs, never more than four (12 epochs, so that trials of a
    # second or less do not finish before the next starts and leave the worker idle)
    assert max_overlap(list(zip(trials["started_at"], trials["reported_at"]))) in (3, 4), "four at most, two a GPU"


def test_ray_client_address_runs_a_study_and_shows_progress(tmp_path):
    client_port = free_port()
    with cluster("--num-cpus", "2", "--ray-client-server-port", str(client_port)):
        done = subprocess.run(
            [sys.executable, "-m", "tune_mnist", "linear", "--smoke", "--address", f"ray://127.0.0.1:{client_port}",
             "--results", str(tmp_path), "--name", "r"], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[init] 2/2 done" in done.stdout, "progress lines reach the client"
    trials = read_table(tmp_path / "linear" / "r" / "trials.csv")
    assert len(trials) == 8 and trials["error"].eq("").all() and trials["test_acc"].max() > 0.5


def test_trials_spread_over_every_gpu_of_a_host_and_the_estimate_counts_them(tmp_path):
    """Four logical GPUs on one node: four trials of a whole GPU each run at once, each seeing its own GPU as its
    CUDA_VISIBLE_DEVICES, and corruption's estimate counts four trials at once."""
    with cluster("--num-cpus", "2", "--num-gpus", "4") as port:
        done = subprocess.run(
            [sys.executable, "-m", "tune_mnist", "corruption", "--smoke", "--address", f"127.0.0.1:{port}",
             "--gpus-per-trial", "1", "--cpus-per-trial", "0.25", "--population", "2", "--families", "cnn",
             "--activations", "relu", "--repeats", "4", "--results", str(tmp_path), "--name", "g"],
            env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "populations of 2), 4 at once" in done.stdout
    runs = read_table(tmp_path / "corruption" / "g" / "results_per_run.csv")
    trials = runs.groupby("trial_id").agg(gpu=("cuda_visible_devices", "first"), start=("started_at", "min"),
                                          end=("reported_at", "max"))
    spans = list(zip(trials["start"], trials["end"], trials["gpu"].astype(str)))
    assert len(trials) == 4 and {gpu for *_, gpu in spans} <= {"0", "1", "2", "3"}, trials
    clashes = [(a, b) for a, b in itertools.combinations(spans, 2) if a[0] < b[1] and b[0] < a[1] and a[2] == b[2]]
    assert not clashes, f"trials running at once share a GPU: {clashes}"
    assert max_overlap([span[:2] for span in spans]) == 4, f"all four at once, a GPU each: {trials}"
