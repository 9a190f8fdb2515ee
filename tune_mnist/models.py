"""Every network the studies train, each rebuilt from a small JSON-able spec.

A spec is a dict such as {"family": "mlp", "widths": [256, 128], "activation": "tanh"}; `build(spec)`
makes the module, and `save`/`load` keep weights and spec together in one safetensors file, a data-only
format that any safetensors reader opens and whose loading never runs code. `save_onnx` writes a model as an
ONNX graph that runs without PyTorch.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from tune_mnist.data import SCALINGS, scale_inputs
from tune_mnist.errors import UserError
from tune_mnist.files import atomic_write

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
}
ARCHITECTURES = {  # each family's settings and their defaults (None: the spec must give it)
    "mlp": {"widths": None, "activation": "tanh", "outputs": 10},
    "cnn": {"channels": [32, 64], "hidden": 128, "activation": "relu"},
    "tiny_cnn": {},
}
FAMILIES = tuple(ARCHITECTURES)
INPUT_SHAPE, INPUT_RANGE, CLASSES = [1, 28, 28], [0.0, 1.0], list(range(10))
SUFFIX = ".safetensors"  # what `save` writes; `load` reads any other file as a torch file of earlier versions


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(widths: Sequence[int], act: str = "tanh", d_in: int = 784, n_out: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = [d_in, *widths]
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), activation(act)]
    layers.append(nn.Linear(sizes[-1], n_out))
    return nn.Sequential(*layers)


def cnn(channels: Sequence[int] = (32, 64), hidden: int = 128, act: str = "relu") -> nn.Sequential:
    """3x3 conv + 2x2 max-pool blocks on 28x28 inputs, then an optional hidden dense layer."""
    layers: list[nn.Module] = []
    side, c_in = 28, 1
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), activation(act), nn.MaxPool2d(2)]
        side, c_in = side // 2, c
    layers.append(nn.Flatten())
    flat = c_in * side * side
    if hidden:
        layers += [nn.Linear(flat, hidden), activation(act)]
        flat = hidden
    layers.append(nn.Linear(flat, 10))
    return nn.Sequential(*layers)


def tiny_cnn() -> nn.Sequential:
    """The random-search net: 1->4 and 4->8 5x5 stride-2 convs (28 -> 12 -> 4), then 128 -> 10."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 5, stride=2), nn.ReLU(),
        nn.Conv2d(4, 8, 5, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(128, 10),
    )


def tiny_cnn_patches(x: torch.Tensor) -> torch.Tensor:
    """(images, 25, 144): the 5x5 patch under each of tiny_cnn's 12x12 conv1 positions (qy * 12 + qx).
    Strided views and one copy; F.unfold on CUDA launches a kernel per image (38 ms for 5,000)."""
    return x[:, 0].unfold(1, 5, 2).unfold(2, 5, 2).permute(0, 3, 4, 1, 2).reshape(len(x), 25, 144)


def build(spec: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The module for a spec; "init_scale" multiplies PyTorch's default initialisation (0 gives zeros).

    Its weights are made and initialised on `device`, from that device's generator: a population's members
    are built where they train, ten times faster than drawn on the host and copied over.
    """
    with torch.device(device):
        model = _build(spec)
    if spec.get("init_scale", 1.0) != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(spec["init_scale"])
    return model


def architecture(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's family, every setting `build` reads for it (defaults filled in) and its init_scale, if any."""
    family = spec.get("family")
    if family not in ARCHITECTURES:
        raise UserError(f"unknown model family {family!r}; choose from {', '.join(FAMILIES)}")
    arch = {"family": family, **{k: spec.get(k, default) for k, default in ARCHITECTURES[family].items()}}
    if "init_scale" in spec:
        arch["init_scale"] = spec["init_scale"]
    return arch


def _build(spec: dict[str, Any]) -> nn.Module:
    arch = architecture(spec)
    if arch["family"] == "mlp":
        return mlp(arch["widths"], arch["activation"], n_out=arch["outputs"])
    if arch["family"] == "cnn":
        return cnn(arch["channels"], arch["hidden"], arch["activation"])
    return tiny_cnn()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(spec: dict[str, Any]) -> dict[str, Any]:
    """What a saved model's file says about it, for readers with or without tune_mnist: the architecture,
    the input scaling it applies (spec["inputs"], default "unit"; see data.SCALINGS), the images it takes,
    its classes and the versions that wrote it."""
    inputs = spec.get("inputs", "unit")
    if inputs not in SCALINGS:
        raise UserError(f"unknown input scaling {inputs!r}; choose from {', '.join(SCALINGS)}")
    return {**architecture(spec), "inputs": inputs, "scaling": SCALINGS[inputs], "input_shape": INPUT_SHAPE,
            "input_range": INPUT_RANGE, "classes": CLASSES,
            "versions": {"torch": torch.__version__, "tune_mnist": version()}}


def version() -> str:
    """tune_mnist's version; a checkout run without installing it has none."""
    try:
        return metadata.version("tune_mnist")
    except metadata.PackageNotFoundError:
        return "not installed"


class Exported(nn.Module):
    """A saved model as `load` returns it: raw images in [0, 1] in, logits out; it scales its inputs itself.

    Its state_dict is the inner network's, with the keys `build(spec)` gives, so either loads the other's.
    """

    def __init__(self, net: nn.Module, inputs: str, spec: dict[str, Any], info: dict[str, Any],
                 card: dict[str, Any]):
        super().__init__()
        self.net, self.inputs = net, inputs
        self.spec, self.info, self.card = spec, info, card

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(scale_inputs(x, self.inputs))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        return self.net.load_state_dict(state_dict, strict, assign)


def save(path: str | os.PathLike, weights: nn.Module | dict[str, torch.Tensor], spec: dict[str, Any],
         **info: Any) -> None:
    """Weights (a module's, or its state dict) as a safetensors file named *.safetensors, on CPU, written
    atomically, with spec, describe(spec) and any metrics as JSON text in its metadata (`file_metadata`)."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"a model file's name ends in {SUFFIX}, got {path.name}")
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    # safetensors refuses tensors that share memory, as one member's slices of a population's weights do
    state = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    data = safetensors_bytes(state, file_metadata(spec, describe(spec), info))
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))  # safetensors' own writer ignores the umask


def file_metadata(spec: dict[str, Any], card: dict[str, Any], info: dict[str, Any]) -> dict[str, str]:
    """What a model file says beside its weights, as JSON text under "spec", "card" and "info"."""
    return {"spec": json.dumps(spec), "card": json.dumps(card), "info": json.dumps(info)}


def load_state(path: str | os.PathLike, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """A dict saved with torch.save (a checkpoint, a model file of earlier versions), read with weights_only=True:
    tensors and plain containers, strings and numbers only. A file whose pickle names anything else (a class, a
    function to call) is refused with a UserError before any of it runs."""
    try:
        with warnings.catch_warnings():  # torch warns about a pickle it did not write, then refuses it below
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} is not a tune_mnist file (it holds code or objects other than tensors); "
                        "refusing to load it") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a tune_mnist file (it holds a {type(state).__name__}, not a dict)")
    return state


def load(path: str | os.PathLike) -> Exported:
    """The model saved at `path`, on the CPU, read without running any code from the file.

    It takes raw images: a float tensor (N, 1, 28, 28) with values in [0, 1] (pixel / 255), and returns
    logits (N, 10) for the classes 0..9 (an MLP's are spec["outputs"] wide, the logits past the 10th naming no
    class); it applies the input scaling it was trained with (card["inputs"]) itself. `model.spec` is the spec
    as saved (`build(model.spec)` makes the plain network, whose state_dict equals `model.state_dict()`),
    `model.info` the metrics saved with it, `model.card` the file's description (see `describe`). A *.safetensors
    file is read with safetensors, any other as a torch file of earlier versions (`load_state`). A file that would
    run code, or is no model file (a TorchScript archive, a damaged file), raises UserError.
    """
    try:
        texts, state = _read(Path(path))
        spec, info = _text(texts["spec"]), _text(texts.get("info", {}))
        card = _text(texts["card"]) if "card" in texts else describe(spec)
        net = build(spec)
        net.load_state_dict(state)
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"cannot read {path} ({type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - whatever a file that is no model file makes safetensors or torch raise
        raise UserError(f"{path} is not a tune_mnist model file ({_reason(e)})") from None
    return Exported(net, card["inputs"], spec, info, card)


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A model file's metadata (spec, card, info) and weights."""
    if path.suffix == SUFFIX:
        with safe_open(path, framework="pt") as f:
            texts, state = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    else:
        texts = load_state(path)
        state = texts.get("state_dict")
    if "spec" not in texts or not isinstance(state, dict):
        raise UserError(f"{path} is not a tune_mnist model file (it has no spec and weights)")
    return texts, state


def _reason(e: Exception) -> str:
    """An exception's type and first sentence, for a one-line message."""
    text = str(e).strip().split("\n")[0].split(". ")[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _text(value: str | dict[str, Any]) -> dict[str, Any]:
    """JSON text as a dict; files saved before spec and info were JSON hold them as dicts."""
    return json.loads(value) if isinstance(value, str) else value


def check_onnx() -> None:
    """Raises UserError unless the packages that `save_onnx` needs (the [export] extra) are installed."""
    try:
        import onnxscript  # noqa: F401 - torch.onnx's exporter builds the graph with it (and onnx)
    except ImportError as e:
        raise UserError(f"ONNX export needs the package {e.name}: install the [export] extra "
                        '(pip install -e ".[export]")') from None


def save_onnx(path: str | os.PathLike, model: Exported) -> None:
    """`model` (as `load` returns it) as an ONNX graph, written atomically: input "images", float32
    (N, 1, 28, 28) in [0, 1], any N; output "logits" (N, outputs). The input scaling is inside the graph, and
    the model file's metadata (spec, card, info as JSON text) is in the graph's metadata_props."""
    check_onnx()
    sample = torch.rand(2, *INPUT_SHAPE)  # two images: torch.export takes a size of 1 to be fixed
    program = torch.onnx.export(model.eval(), (sample,), dynamo=True, input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    program.model.metadata_props.update(file_metadata(model.spec, model.card, model.info))
    atomic_write(Path(path), lambda tmp: program.save(tmp, external_data=False))
