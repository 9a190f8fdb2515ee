"""Redraw a finished run's figures from its CSVs: what the notebooks call."""

from __future__ import annotations

from pathlib import Path

from tune_mnist import runs


def redraw(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Draws the run's figures into `out` (default: the run folder) and returns their paths."""
    from tune_mnist.studies import registry

    run_dir = Path(run_dir)
    out = Path(out or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    registry()[runs.read(run_dir)["study"]].report(run_dir, out)
    return sorted(out.glob("*.png"))
