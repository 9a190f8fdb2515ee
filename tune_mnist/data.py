"""MNIST from local idx files, split once, moved to the trial's device once.

Lookup order: an explicit folder (``--data``), ``$TUNE_MNIST_DATA``, then ``./data``. In each folder
the idx files may sit at the top or under torchvision's ``MNIST/raw``, gzipped or not. With no copy
anywhere, torchvision downloads into ``./data``; offline, the error names every folder it tried.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tune_mnist.errors import UserError

FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
EXPECTED_COUNT = {"train": 60_000, "test": 10_000}
VAL_SIZE = 5_000
SPLIT_SEED = 0  # the validation split never changes between runs, so trials stay comparable
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# What each input scaling makes of images x in [0, 1] (scale_inputs applies it; a saved model records it).
SCALINGS = {"unit": "x", "center": "x - 0.5", "standard": f"(x - {MNIST_MEAN}) / {MNIST_STD}"}
INPUTS = tuple(SCALINGS)


@dataclass
class Mnist:
    """uint8 images (N, 28, 28) and int64 labels; val is carved from train with a fixed seed."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """An explicit folder is the only place looked; otherwise $TUNE_MNIST_DATA, then ./data."""
    if data_dir:
        return [Path(data_dir)]
    env = os.environ.get("TUNE_MNIST_DATA")
    return [Path(env), Path("data")] if env else [Path("data")]


def _find(folder: Path, stem: str) -> Path | None:
    for sub in (folder, folder / "MNIST" / "raw", folder / "raw"):
        for name in (stem + ".gz", stem):
            if (sub / name).is_file():
                return sub / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a truncated stream: EOFError; corrupt deflate data: zlib.error
        raise UserError(f"cannot read MNIST file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8 or len(raw) < 4 + 4 * raw[3]:
        raise UserError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise UserError(f"{path} is truncated: {body.size} bytes of data, header says {math.prod(dims)}")
    return body.reshape(dims)


def _check(paths: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
    """Images N x 28 x 28 and as many labels 0..9, in each split's expected number."""
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise UserError(f"{paths[f'{split}_x']} holds an array of shape {x.shape}, not images N x 28 x 28")
        if y.ndim != 1:
            raise UserError(f"{paths[f'{split}_y']} holds an array of shape {y.shape}, not one label per image")
        if len(y) and y.max() > 9:
            raise UserError(f"{paths[f'{split}_y']} holds the label {y.max()}: MNIST's labels are 0 to 9")
        if len(x) != len(y) or len(x) != EXPECTED_COUNT[split]:
            raise UserError(f"MNIST {split} split has {len(x)} images and {len(y)} labels, "
                            f"expected {EXPECTED_COUNT[split]}")


def locate(data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The four idx files from the first folder that holds all of them."""
    tried = candidate_dirs(data_dir)
    for folder in tried:
        found = {key: _find(folder, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    if data_dir:  # an explicit folder that lacks MNIST is a mistake, not a reason to download
        raise UserError(f"no MNIST idx files in {data_dir} (expected {FILES['train_x']}[.gz] and three more)")
    return _download(tried)


def _download(tried: list[Path]) -> dict[str, Path]:
    from torchvision.datasets import MNIST

    try:
        MNIST("data", train=True, download=True)
        MNIST("data", train=False, download=True)
    except Exception as e:  # noqa: BLE001 - any network failure means the same thing to the user
        looked = ", ".join(str(p.resolve()) for p in tried)
        raise UserError(
            f"MNIST not found (looked in {looked}) and the download failed ({type(e).__name__}); "
            "put the four idx .gz files in one of those folders, or pass --data DIR / set TUNE_MNIST_DATA"
        ) from None
    return locate("data")


def load(data_dir: str | os.PathLike | None = None, val_size: int = VAL_SIZE) -> Mnist:
    paths = locate(data_dir)
    arrays = {key: _read_idx(path) for key, path in paths.items()}
    _check(paths, arrays)
    x = torch.from_numpy(arrays["train_x"].copy())
    y = torch.from_numpy(arrays["train_y"].astype(np.int64))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val, train = order[:val_size], order[val_size:]
    return Mnist(
        train_x=x[train], train_y=y[train], val_x=x[val], val_y=y[val],
        test_x=torch.from_numpy(arrays["test_x"].copy()),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
    )


def subset(data: Mnist, n_train: int | None = None, n_eval: int | None = None, seed: int = 0) -> Mnist:
    """A smaller copy for smoke runs and tests: the first n of a seeded shuffle of each split."""
    g = torch.Generator().manual_seed(seed)

    def take(x: torch.Tensor, y: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if n is None or n >= len(x):
            return x, y
        idx = torch.randperm(len(x), generator=g)[:n]
        return x[idx], y[idx]

    tx, ty = take(data.train_x, data.train_y, n_train)
    vx, vy = take(data.val_x, data.val_y, n_eval)
    sx, sy = take(data.test_x, data.test_y, n_eval)
    return Mnist(tx, ty, vx, vy, sx, sy)


@dataclass
class DeviceSplit:
    """One split on the device: float images in [0, 1] of shape (N, 1, 28, 28), labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def to_device(data: Mnist, device: torch.device | str) -> dict[str, DeviceSplit]:
    """Copies every split to the device once, so the training loop never touches the host."""
    def put(x: torch.Tensor, y: torch.Tensor) -> DeviceSplit:
        return DeviceSplit(x.to(device).unsqueeze(1).float().div_(255.0), y.to(device))

    return {
        "train": put(data.train_x, data.train_y),
        "val": put(data.val_x, data.val_y),
        "test": put(data.test_x, data.test_y),
    }


def scale_inputs(x: torch.Tensor, inputs: str) -> torch.Tensor:
    """Images x in [0, 1] as a net takes them: SCALINGS[inputs]."""
    if inputs == "unit":
        return x
    if inputs == "center":
        return x - 0.5
    if inputs == "standard":
        return (x - MNIST_MEAN) / MNIST_STD
    raise ValueError(f"unknown input scaling {inputs!r}; choose from {', '.join(INPUTS)}")
