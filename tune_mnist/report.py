"""A run's REPORT.md: the question and its answer first, the evidence next, how it was made last."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from tune_mnist import runs
from tune_mnist.files import atomic_write


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
        found = dict(found or runs.versions(dated=True))
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
