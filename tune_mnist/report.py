"""Redraw a finished run's figures from its CSVs (what the notebooks call), and write its REPORT.md."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pandas as pd

from tune_mnist import runs
from tune_mnist.errors import UserError
from tune_mnist.files import atomic_write
from tune_mnist.settings import Space

if TYPE_CHECKING:
    from tune_mnist.studies import Study


def finished_run(run_dir: str | Path) -> tuple[Study, Any]:
    """A finished run's study and settings, once its run.json, its settings (against the study's types and check)
    and its tables (Study.tables) check out; UserError, one line, otherwise. Reads only."""
    from tune_mnist.studies import load

    meta = runs.read(run_dir)
    study = load(meta["study"])
    s = Space(study.settings, study.name).saved(meta["settings"], str(Path(run_dir) / runs.RUN_FILE))
    study.check(s)
    runs.check_tables(Path(run_dir), study.tables(s))
    return study, s


def redraw(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Draws a finished run's figures and REPORT.md into `out` (default: the run folder) and returns the figures'
    paths; only `out` is created, once the run has checked out."""
    study, _ = finished_run(run_dir)
    out = Path(out or run_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write the figures to {out}: {e.strerror or e}") from None
    study.report(Path(run_dir), out)
    return sorted(out.glob("*.png"))


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


class Report:
    """A run's REPORT.md: the question and its answer first, the evidence next, how it was made last."""

    def __init__(self, title: str, question: str) -> None:
        self.title, self.question = title, question
        self._answer = ""
        self._body: list[str | tuple[Path, str]] = []  # markdown, or a (figure, caption) checked at write time
        self._made: list[str] = []

    def command(self, argv: list[str]) -> None:
        """Records the exact command, shell-quoted so it can be pasted back."""
        self._made.append(f"```bash\n{shlex.join(argv)}\n```")

    def versions(self, found: dict[str, str] | None = None) -> None:
        """Records the versions a run was made with (run.json's), or this process's: python and packages, the
        date, and the git commit when the package is a checkout."""
        found = dict(found or current_versions())
        self._made.append("\n".join(f"- {k}: {v}" for k, v in found.items()))

    def answer(self, text: str) -> None:
        self._answer = text.strip()

    def section(self, title: str, text: str = "") -> None:
        self._body.append(f"## {title}" + (f"\n\n{text.strip()}" if text.strip() else ""))

    def table(self, frame: pd.DataFrame, columns: list[str] | None = None, floatfmt: str = ".4g",
              max_rows: int = 30) -> None:
        """A markdown table of the frame's columns (not its index), numbers right-aligned, cut at max_rows."""
        frame = frame[columns or list(frame.columns)]
        numeric = [pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in frame.dtypes]
        lines = ["| " + " | ".join(_cell(c, floatfmt) for c in frame.columns) + " |",
                 "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(_cell(v, floatfmt) for v in row) + " |"
                  for row in frame.head(max_rows).itertuples(index=False)]
        if len(frame) > max_rows:
            lines.append(f"\n({len(frame) - max_rows} more rows not shown)")
        self._body.append("\n".join(lines))

    def figure(self, path: str | Path, caption: str) -> None:
        """A figure: a file that exists (its path absolute or from the working directory), or a path relative to the
        report's folder; it must exist when written."""
        path = Path(path)
        self._body.append((path.resolve() if path.is_file() else path, caption))

    def write(self, run_dir: str | Path) -> Path:
        """Writes run_dir/REPORT.md atomically and returns its path; a missing figure or answer raises ValueError."""
        run_dir = Path(run_dir)
        if not self._answer:
            raise ValueError(f"report {self.title!r} has no answer: call answer() before write()")
        blocks = [f"# {self.title}", f"**Question.** {self.question.strip()}", "## Answer", self._answer]
        for block in self._body:
            if isinstance(block, tuple):
                figure, caption = block
                if not (run_dir / figure).is_file():
                    raise ValueError(f"figure {figure} does not exist (looked in {run_dir})")
                block = f"![{caption}]({quote(Path(os.path.relpath(run_dir / figure, run_dir)).as_posix())})"
            blocks.append(block)
        if self._made:
            blocks += ["## How this was made", *self._made]
        path = run_dir / "REPORT.md"
        atomic_write(path, lambda tmp: Path(tmp).write_text("\n\n".join(blocks) + "\n"))
        return path


def current_versions() -> dict[str, str]:
    """Python and package versions, today's date, and the git commit when the package is a checkout."""
    found = {"python": platform.python_version()}
    for name in ("torch", "ray", "optuna", "tune_mnist"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["date"] = time.strftime("%Y-%m-%d")
    if commit := _git_commit(Path(__file__).parent):
        found["commit"] = commit
    return found


def for_run(run_dir: Path, title: str, question: str) -> Report:
    """A report whose "how this was made" is the run's own: its command and the versions it ran with."""
    meta = runs.read(run_dir)
    report = Report(title, question)
    report.command(meta.get("command", []))
    report.versions({**meta.get("versions", {}), "date": meta.get("created", "")[:10]})
    return report


def _cell(v: object, floatfmt: str) -> str:
    """A table cell: floats in floatfmt, and pipes escaped so text cannot split a row."""
    return format(v, floatfmt) if isinstance(v, float) else str(v).replace("|", "\\|")


def _git_commit(folder: Path) -> str | None:
    """HEAD of the git checkout holding `folder`, marked when tracked files changed since; None outside git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
