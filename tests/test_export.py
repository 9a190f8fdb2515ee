"""Exported nets run without tune_mnist: safetensors weights with their description, ONNX graphs for onnxruntime;
and files that are no model file are refused with one line."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from test_trust import Payload
from tune_mnist import cli, data, models
from tune_mnist.errors import UserError

SPECS = {
    "mlp": {"family": "mlp", "widths": [32], "activation": "tanh", "inputs": "standard"},
    "cnn": {"family": "cnn", "channels": [4, 8], "hidden": 16, "activation": "relu", "inputs": "center"},
}

# What a user without tune_mnist (or PyTorch) runs; the test refuses any import of either.
NO_TORCH = "import sys\nsys.modules['torch'] = sys.modules['tune_mnist'] = None\n"
RUN_ONNX = NO_TORCH + """
import numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1])
images = np.load(sys.argv[2])
np.save(sys.argv[3], session.run(["logits"], {"images": images})[0])
print(session.run(["logits"], {"images": images[:1]})[0].shape)
"""
READ_SAFETENSORS = NO_TORCH + """
import json
import numpy as np
from safetensors import safe_open
with safe_open(sys.argv[1], framework="np") as f:
    card, weights = json.loads(f.metadata()["card"]), {k: f.get_tensor(k) for k in f.keys()}
x = np.load(sys.argv[2]).reshape(-1, 784)
x = {"unit": x, "center": x - 0.5, "standard": (x - 0.1307) / 0.3081}[card["inputs"]]
layers = sorted({int(k.split(".")[0]) for k in weights})
for i, layer in enumerate(layers):
    x = x @ weights[f"{layer}.weight"].T + weights[f"{layer}.bias"]
    if i < len(layers) - 1:
        x = {"tanh": np.tanh}[card["activation"]](x)
np.save(sys.argv[3], x)
"""


@pytest.fixture(scope="module")
def splits(mnist):
    return data.to_device(data.subset(mnist, 4000, 2000), "cpu")


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
    """model_file(family): the SPECS net trained for 200 steps, saved with its test accuracy (once per module)."""
    folder, files = tmp_path_factory.mktemp("nets"), {}

    def model_file(family):
        if family not in files:
            files[family] = folder / f"{family}{models.SUFFIX}"
            train(SPECS[family], splits, files[family])
        return files[family]

    return model_file


def train(spec, splits, path):
    torch.manual_seed(0)
    model = models.Exported(models.build(spec), spec["inputs"], spec, {}, models.describe(spec))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    split = splits["train"]
    for _ in range(200):
        i = torch.randint(len(split.x), (64,))
        loss = torch.nn.functional.cross_entropy(model(split.x[i]), split.y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        test_acc = (model(splits["test"].x).argmax(1) == splits["test"].y).float().mean().item()
    assert test_acc > 0.7, spec
    models.save(path, model, spec, test_acc=test_acc)


def run_without_torch(script, *args):
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("family", list(SPECS))
def test_an_onnx_graph_reproduces_the_recorded_test_accuracy_with_onnxruntime_alone(family, trained, splits,
                                                                                    tmp_path):
    model = models.load(trained(family))
    models.save_onnx(tmp_path / "net.onnx", model)
    images = splits["test"].x.numpy()
    np.save(tmp_path / "images.npy", images)
    printed = run_without_torch(RUN_ONNX, tmp_path / "net.onnx", tmp_path / "images.npy", tmp_path / "logits.npy")
    assert printed.strip() == "(1, 10)", "any batch size"
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == (len(images), 10)
    acc = (logits.argmax(1) == splits["test"].y.numpy()).mean()
    assert acc == pytest.approx(model.info["test_acc"], abs=2 / len(images)), "at most a near tie flips"
    with torch.no_grad():
        expected, unscaled = model(splits["test"].x).numpy(), model.net(splits["test"].x).numpy()
    assert np.allclose(logits, expected, atol=1e-4)
    assert not np.allclose(logits, unscaled, atol=1e-2), "the graph scales its inputs itself"

    import onnxruntime

    meta = onnxruntime.InferenceSession(tmp_path / "net.onnx").get_modelmeta().custom_metadata_map
    assert json.loads(meta["card"]) == model.card and json.loads(meta["info"]) == model.info


def test_a_model_file_reads_with_safetensors_and_numpy_alone(trained, splits, tmp_path):
    model = models.load(trained("mlp"))
    np.save(tmp_path / "images.npy", splits["test"].x.numpy())
    run_without_torch(READ_SAFETENSORS, trained("mlp"), tmp_path / "images.npy", tmp_path / "logits.npy")
    with torch.no_grad():
        expected = model(splits["test"].x).numpy()
    assert np.allclose(np.load(tmp_path / "logits.npy"), expected, atol=1e-4)
    assert model.info["test_acc"] > 0.7 and model.card["scaling"] == "(x - 0.1307) / 0.3081"


def test_a_model_file_of_earlier_versions_still_loads(tmp_path):
    spec = {"family": "mlp", "widths": [8], "activation": "gelu"}
    net = models.build(spec)
    torch.save({"spec": json.dumps(spec), "card": json.dumps(models.describe(spec)), "info": json.dumps({"a": 1}),
                "state_dict": net.state_dict()}, tmp_path / "rank1.pt")
    back = models.load(tmp_path / "rank1.pt")
    x = torch.rand(4, 1, 28, 28)
    assert back.spec == spec and back.info == {"a": 1} and torch.equal(back(x), net(x))


def test_files_that_are_no_model_file_are_refused_with_one_line(tmp_path):
    from safetensors.torch import save_file

    net = models.mlp([8])
    marker = tmp_path / "ran"
    files = {
        "torchscript.pt": lambda p: torch.jit.save(torch.jit.script(net), p),
        "random.pt": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        "random.safetensors": lambda p: p.write_bytes(np.random.default_rng(1).bytes(4096)),
        "empty.safetensors": lambda p: p.write_bytes(b""),
        "tensors_only.safetensors": lambda p: save_file(net.state_dict(), p),
        "code.pt": lambda p: torch.save({"spec": "{}", "state_dict": {}, "info": Payload(marker)}, p),
        "missing.safetensors": lambda p: None,
    }
    for name, write in files.items():
        with warnings.catch_warnings():  # torch.jit warns that it is deprecated
            warnings.simplefilter("ignore")
            write(tmp_path / name)
        with pytest.raises(UserError) as refused:
            models.load(tmp_path / name)
        message = str(refused.value)
        assert str(tmp_path / name) in message and "\n" not in message and len(message) < 300, message
    assert not marker.exists(), "the pickled call never ran"


def test_onnx_export_without_its_packages_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: importing it fails
    assert cli.main(["export", str(tmp_path), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "onnxscript" in err and 'pip install -e ".[export]"' in err
    spec = {"family": "mlp", "widths": [8]}
    with pytest.raises(UserError):
        models.save_onnx(tmp_path / "net.onnx", models.Exported(models.build(spec), "unit", spec, {}, {}))
    assert list(tmp_path.iterdir()) == []
