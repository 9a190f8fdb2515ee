"""What the notebooks call: the newest finished run of a study, its figures and REPORT.md drawn again beside it."""

from __future__ import annotations

from pathlib import Path

from tune_mnist.studies import redraw

__all__ = ["markdown", "newest_run", "redraw"]


def newest_run(study: str, roots: tuple[str, ...] = ("results", "../results")) -> Path:
    """The newest finished run of a study (one with a REPORT.md) under the first results folder that has one:
    what a notebook opens by default, from the repository or from notebooks/."""
    for root in map(Path, roots):
        finished = sorted((root / study).glob("*/REPORT.md"), key=lambda p: p.stat().st_mtime)
        if finished:
            return finished[-1].parent
    raise FileNotFoundError(f"no finished {study} run under {' or '.join(roots)}: run `python -m tune_mnist {study}` "
                            "first, or set TUNE_MNIST_RUN to a run folder")


def markdown(folder: Path) -> str:
    """A folder's REPORT.md without its figure links, which a notebook shows itself."""
    text = (Path(folder) / "REPORT.md").read_text()
    return "\n".join(line for line in text.splitlines() if not line.startswith("!["))
