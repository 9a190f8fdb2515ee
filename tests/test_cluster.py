"""A real two-node Ray cluster started with the `ray` CLI on this machine, with logical GPUs."""

import os
import socket
import subprocess
import sys

from tune_mnist.files import read_table


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


def test_study_runs_on_both_nodes_four_trials_on_two_logical_gpus_into_shared_storage(tmp_path):
    temp = f"/tmp/rc{os.getpid()}"  # our cluster's processes carry this in their command line: we stop only them
    port = free_port()
    # Ray 2.60 turns token auth on for `ray start --head`; this throwaway loopback cluster does without
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    try:
        subprocess.run([*ray, "start", "--head", "--port", str(port), "--num-cpus", "1", "--num-gpus", "1",
                        "--temp-dir", temp, "--include-dashboard", "false"], env=env, check=True,
                       capture_output=True, timeout=180)
        subprocess.run([*ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--num-gpus", "1"],
                       env=env, check=True, capture_output=True, timeout=180)
        done = subprocess.run(
            [sys.executable, "-m", "tune_mnist", "budget", "--address", f"127.0.0.1:{port}",
             "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.25", "--P", "20000", "--trials", "0",
             "--max-depth", "32", "--seeds", "1", "--epochs", "3", "--train-limit", "8000", "--eval-limit", "1000",
             "--results", str(tmp_path), "--name", "c", "--storage", f"file://{tmp_path}/shared"],
            env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        subprocess.run(["pkill", "-9", "-f", temp], check=False)
    shared = tmp_path / "shared" / "budget" / "c"
    for name in ("run.json", "trials.csv", "loss_vs_k.png", "best.json", "best/P20000/rank1.pt"):
        assert (shared / name).is_file(), f"{name} was copied to the storage"
    assert len(list(shared.glob("tune/P20000-grid/trial_*/events.out.tfevents*"))) == 11, "TensorBoard files"
    assert not (tmp_path / "budget" / "c" / "tune").exists(), "Tune wrote to the storage, not the run folder"
    assert not list(shared.rglob(".*.tmp")), "no temporary files left"
    trials = read_table(tmp_path / "budget" / "c" / "trials.csv")
    assert trials["checkpoint"].str.startswith(str(shared / "tune")).all()
    assert len(trials) == 11 and trials["error"].eq("").all()
    assert trials["node_id"].nunique() == 2, "trials ran on both nodes"
    assert trials["cuda_visible_devices"].astype(str).eq("0").all(), "each trial saw the one logical GPU of its node"
    assert max_overlap(list(zip(trials["started_at"], trials["reported_at"]))) == 4, "four trials at once on two GPUs"
