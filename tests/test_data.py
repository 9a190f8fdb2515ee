import gzip
import shutil

import pytest
import torch

from tune_mnist import data
from tune_mnist.errors import UserError


def test_splits_are_full_disjoint_and_fixed(mnist):
    assert mnist.train_x.shape == (55_000, 28, 28) and mnist.val_x.shape == (5_000, 28, 28)
    assert mnist.test_x.shape == (10_000, 28, 28) and mnist.train_x.dtype == torch.uint8
    again = data.load()
    assert torch.equal(again.val_y, mnist.val_y)  # the validation split never moves
    assert set(mnist.train_y.tolist()) == set(range(10))


def test_torchvision_raw_layout_without_gzip(tmp_path, mnist):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in data.locate().values():
        with gzip.open(path) as src, open(raw / path.name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert torch.equal(data.load(tmp_path).test_y, mnist.test_y)


def test_truncated_file_is_a_clear_error(tmp_path):
    for path in data.locate().values():
        shutil.copy(path, tmp_path / path.name)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100_000])
    with pytest.raises(UserError, match="train-images"):
        data.load(tmp_path)


def test_explicit_folder_without_mnist_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no MNIST idx files"):
        data.load(tmp_path)


def test_subset_and_device_copy(mnist):
    small = data.subset(mnist, 1000, 200)
    assert len(small.train_x) == 1000 and len(small.val_x) == 200 and len(small.test_x) == 200
    splits = data.to_device(small, "cpu")
    assert splits["train"].x.shape == (1000, 1, 28, 28)
    assert 0.0 <= splits["train"].x.min() and splits["train"].x.max() <= 1.0
