"""Trust: model files hold no code and describe themselves, results are readable, a run folder has one user."""

import dataclasses
import json
import os
import stat
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import cli as run_cli, fit
from tune_mnist import cli, data, files, models, runs, settings
from tune_mnist.studies import linear
from tune_mnist.errors import UserError
from tune_mnist.population import Member, Population
from tune_mnist.train import TrainConfig, evaluate


class Payload:
    """Pickles as a call of open(marker, "w"): loading it with plain pickle creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_model_file_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path):
    path, marker = tmp_path / "gift.pt", tmp_path / "ran"
    net = models.mlp([8])
    torch.save({"spec": json.dumps({"family": "mlp", "widths": [8]}), "state_dict": net.state_dict(),
                "info": Payload(marker)}, path)
    for read in (models.load, models.load_state):
        with pytest.raises(UserError) as refused:
            read(path)
        message = str(refused.value)
        assert str(path) in message and "refusing to load it" in message and "\n" not in message
        assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unguarded load runs it
    assert marker.exists()


def test_round_trip_keeps_spec_and_info_and_the_file_describes_the_model(tmp_path):
    spec = {"family": "cnn", "channels": [4, 8], "hidden": 16, "activation": "gelu", "init_scale": 0.5,
            "inputs": "center"}
    net = models.build(spec)
    info = {"test_acc": np.float64(0.8125), "epoch": 3, "note": "best of 4", "curve": [0.5, 0.25]}
    models.save(tmp_path / "m.safetensors", net, spec, **info)

    with safe_open(tmp_path / "m.safetensors", framework="pt") as f:
        raw = f.metadata()
    assert set(raw) == {"spec", "card", "info"}
    assert json.loads(raw["card"]) == {
        "family": "cnn", "channels": [4, 8], "hidden": 16, "activation": "gelu", "init_scale": 0.5,
        "inputs": "center", "scaling": "x - 0.5", "input_shape": [1, 28, 28], "input_range": [0.0, 1.0],
        "classes": list(range(10)),
        "versions": {"torch": torch.__version__, "tune_mnist": metadata.version("tune_mnist")},
    }
    back = models.load(tmp_path / "m.safetensors")
    assert back.spec == spec and back.info == info and back.card == json.loads(raw["card"])
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(back(x), net(x - 0.5)), "the loaded model takes raw images and centres them itself"
    plain = models.build(spec)
    plain.load_state_dict(back.state_dict())
    assert list(back.state_dict()) == list(net.state_dict()) and torch.equal(plain(x - 0.5), net(x - 0.5))

    with pytest.raises(UserError, match="unknown input scaling 'zscore'"):
        models.save(tmp_path / "bad.safetensors", net, {**spec, "inputs": "zscore"})


RELOAD = """
import sys
import torch
from tune_mnist import data, models
model = models.load(sys.argv[1])
mnist = data.load()
with torch.no_grad():
    predicted = model(mnist.test_x.unsqueeze(1).float() / 255).argmax(1)
print(repr((predicted == mnist.test_y).sum().item() / len(mnist.test_y)), repr(model.info["test_acc"]))
"""


def test_a_standardised_mlp_reproduces_its_test_accuracy_in_a_fresh_process_from_raw_images(mnist, tmp_path):
    splits = data.to_device(data.subset(mnist, 3000), "cpu")
    spec = {"family": "mlp", "widths": [32], "activation": "tanh", "inputs": "standard"}
    net = Population([Member(spec)], "cpu")
    (metrics,) = fit(net, splits, TrainConfig(epochs=2, inputs="standard"))
    assert len(splits["test"]) == 10_000 and metrics["test_acc"] > 0.8
    # fed unscaled, the same weights answer differently: matching the accuracy shows the file scales inputs
    assert evaluate(net, splits["test"], "unit")[0]["acc"] != metrics["test_acc"]
    models.save(tmp_path / "mlp.safetensors", net.member_state(0), spec, test_acc=metrics["test_acc"])

    out = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "mlp.safetensors")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [repr(metrics["test_acc"])] * 2


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_results_get_the_modes_the_umask_leaves(tmp_path, umask, file_mode, folder_mode):
    import matplotlib.pyplot as plt
    import pandas as pd

    writers = {
        "table.csv": lambda path: files.write_csv(path, pd.DataFrame({"a": [1, 2]})),
        "result.json": lambda path: files.write_json(path, {"a": 1}),
        "figure.png": lambda path: files.save_figure(path, plt.subplots()[0]),
        "model.safetensors": lambda path: models.save(path, models.mlp([4]), {"family": "mlp", "widths": [4]}),
    }
    old = os.umask(umask)
    try:
        for name, write in writers.items():
            write(tmp_path / name / "new" / name)
    finally:
        os.umask(old)
    for name in writers:
        assert stat.S_IMODE((tmp_path / name / "new" / name).stat().st_mode) == file_mode, name
        for folder in (tmp_path / name, tmp_path / name / "new"):
            assert stat.S_IMODE(folder.stat().st_mode) == folder_mode, folder


HOLD = """
import sys, time
from tune_mnist import runs
runs.lock(sys.argv[1])
print("held", flush=True)
time.sleep(300)
"""


@pytest.mark.slow
def test_a_run_folder_in_use_is_refused_until_its_holder_dies(tmp_path):
    run_dir, no_data = tmp_path / "linear" / "r", tmp_path / "no_data"
    no_data.mkdir()
    args = cli.build_parser().parse_args(["linear"])
    s = settings.Space(linear.Settings, "linear").settings(args, smoke=True)
    files.write_json(run_dir / "run.json", {"study": "linear", "settings": dataclasses.asdict(s)})
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    resume = ("linear", "--resume", str(run_dir), "--data", str(no_data))  # past the lock, it stops at the data
    try:
        assert holder.stdout.readline() == "held\n"
        before = sorted(p.name for p in run_dir.iterdir())
        refused = run_cli(*resume, timeout=120)
        assert refused.returncode == 2 and refused.stderr == (
            f"tune_mnist: error: {run_dir} is in use by another command (pid {holder.pid}): "
            "wait for it to finish, or stop it\n")
        assert sorted(p.name for p in run_dir.iterdir()) == before
    finally:
        holder.kill()  # SIGKILL: the lock goes with the process all the same
        holder.wait()
    resumed = run_cli(*resume, timeout=120)
    assert resumed.returncode == 2 and resumed.stderr.strip() == (
        f"tune_mnist: error: no MNIST idx files in {no_data} (expected train-images-idx3-ubyte[.gz] and three more)")


def test_a_process_may_lock_a_folder_it_holds_again(tmp_path):
    runs.lock(tmp_path)
    runs.lock(tmp_path)
    other = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert other.returncode == 1 and f"is in use by another command (pid {os.getpid()})" in other.stderr
