"""Tests run on CPU against real MNIST subsets from ../shared/data/mnist (or $TUNE_MNIST_DATA)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TUNE_MNIST_DATA", str(REPO.parent / "shared" / "data" / "mnist"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def mnist():
    from tune_mnist import data

    return data.load()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A module's results folder: its study runs land in it."""
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray for all in-process study runs: the CLI joins it instead of starting its own.

    Always a new, private one ("local", its files under pytest's tmp): never a Ray someone else started here.
    """
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, configure_logging=False,
             log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def under_triton_interpreter(script: str) -> None:
    """Runs tests/interpreted/<script> in a fresh process under Triton's interpreter, which runs the GPU kernels on
    the CPU: TRITON_INTERPRET must be set before a kernel is defined, so not in this process."""
    pytest.importorskip("triton")
    result = subprocess.run([sys.executable, str(REPO / "tests" / "interpreted" / script)],
                            env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def cli(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    """The real command, in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "tune_mnist", *args], cwd=cwd, capture_output=True,
                          text=True, **kw)


def run_study(results: Path, study: str, *flags: str, name: str = "t") -> Path:
    """A study's smoke run, in this process (it joins ray_session's Ray)."""
    from tune_mnist import cli as main

    assert main.main([study, "--smoke", "--results", str(results), "--name", name, *flags]) == 0
    return results / study / name


def run_notebook(study: str, run_dir: Path, figures: Path, monkeypatch) -> None:
    """The study's notebook, executed against a run: it shows one image per figure it drew."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TUNE_MNIST_RUN", str(run_dir))
    monkeypatch.setenv("TUNE_MNIST_FIGURES", str(figures))
    notebook = nbformat.read(REPO / "notebooks" / f"{study}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 1 and len(images) == len(list(figures.glob("*.png")))


def fit(pop, splits, cfg):
    """Trains every member to the end, letting diverged ones go; the last evaluated epoch's metrics."""
    from tune_mnist.train import Trainer

    trainer, metrics = Trainer(pop, splits, cfg), []
    for metrics in trainer.epochs():
        trainer.keep([r for r, m in enumerate(metrics) if "error" not in m])
    return metrics


@pytest.fixture
def frozen_gc():
    """statsmodels' Holm runs gc.collect() on every call: objects frozen before a simulation are not scanned."""
    import gc

    gc.freeze()
    yield
    gc.unfreeze()
