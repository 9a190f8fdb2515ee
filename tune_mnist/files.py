"""Result files and their folders: a file is written beside its target, then renamed, so a crash never leaves half
a file; a folder given on the command line is checked before anything runs."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tune_mnist.errors import UserError


def check_folder(path: str | os.PathLike, flag: str, write: bool) -> None:
    """UserError, one line, unless `path` is a folder this process may read (write: and write into), or, for
    writing, one it may create: its nearest existing parent is a folder it may write into."""
    if "\0" in str(path):
        raise UserError(f"{flag} {path!r}: a path cannot hold NUL")
    path = Path(path)
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as e:  # a name too long, say
        raise UserError(f"{flag} {path}: {e.strerror or e}") from None
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: " + ("not a folder" if existing == path else f"{existing} is not a folder"))
    if not write and existing != path:
        raise UserError(f"{flag} {path}: no such folder")
    if not os.access(existing, (os.W_OK if write else os.R_OK) | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not {'writable' if write else 'readable'}")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Calls write(tmp_path) for a temp file in the target's folder, then renames it over `path`.

    The file and any folders made for it get the modes the umask leaves (0644 and 0755 under umask 022).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
    # mode 0666 less the umask, as open() gives; mkstemp's files are 0600 whatever the umask
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")

    atomic_write(path, write)


def write_csv(path: Path, frame: "pandas.DataFrame") -> None:  # noqa: F821 - pandas imported by callers
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def read_table(path: Path) -> "pandas.DataFrame":  # noqa: F821
    """A results CSV with its text columns (error, checkpoint) as strings, empty where blank."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={"error": "string", "checkpoint": "string"})
    present = [c for c in ("error", "checkpoint") if c in frame]
    frame[present] = frame[present].fillna("")
    return frame


def save_figure(path: Path, fig: "matplotlib.figure.Figure") -> None:  # noqa: F821
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)

