"""Run folders: results/<study>/<run>/, each with run.json (settings, command, versions) as its birth certificate.

run.json is what makes a folder a run: `--resume`, `report` and `export` refuse any folder without a sound one,
and resume reads the study's settings back from it, so that the continued run is the same run. A command that
runs or resumes a study locks its folder (.lock) before it writes anything there, so that no two commands write
one run at once. `report` and `export` read a run only after checking its tables against its settings (`Table`).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tune_mnist.errors import UserError
from tune_mnist.files import read_table, write_json

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # the run folders this process has locked, and their lock files' descriptors


def new_run_dir(results: Path, study: str, name: str) -> Path:
    """The folder for a new run ("" names it by the time); it is created only later, by `start`, once all input is
    checked."""
    run_dir = Path(results) / study / (name or time.strftime("%Y%m%d-%H%M%S"))
    if os.path.isdir(run_dir) and any(run_dir.iterdir()) or os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise taken(run_dir)
    return run_dir


def taken(run_dir: Path) -> UserError:
    return UserError(f"{run_dir} already holds a run: pass --resume {run_dir} to continue it, or another --name")


def versions(dated: bool = False) -> dict[str, str]:
    """The versions of what a run's numbers depend on (python, torch, ray, optuna, tune_mnist), the commit where
    the package is a git checkout, and with dated=True today's date."""
    found = {"python": platform.python_version()}
    for name in ("torch", "ray", "optuna", "tune_mnist"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if dated:
        found["date"] = time.strftime("%Y-%m-%d")
    if commit := git_commit(Path(__file__).parent):
        found["commit"] = commit
    return found


def git_commit(folder: Path) -> str | None:
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


def start(run_dir: Path, study: str, settings: dict[str, Any], command: list[str]) -> None:
    """Creates and locks the run folder, then writes its run.json; UserError, with nothing written, if another
    command holds the folder or has begun a run in it since it was checked."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None
    lock(run_dir)
    if (run_dir / RUN_FILE).exists():
        raise taken(run_dir)
    write_json(run_dir / RUN_FILE, {
        "study": study, "settings": settings, "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": versions(),
    })


def read(run_dir: Path, study: str | None = None) -> dict[str, Any]:
    """A run's run.json: an object with the study's name and its settings; UserError for anything else."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not os.path.isdir(run_dir):  # os.path's tests take any OSError (a name too long) as "no"
        raise UserError(f"{run_dir} is not a folder" if os.path.lexists(run_dir) else f"{run_dir} does not exist")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir} is not a tune_mnist run folder (no {RUN_FILE})")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is damaged: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is damaged: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("study"), str) and isinstance(meta.get("settings"), dict)):
        raise UserError(f"{path} is damaged: it must be an object with the run's study and its settings")
    if study and meta["study"] != study:
        raise UserError(f"{run_dir} is a {meta['study']!r} run, not {study!r}")
    return meta


def lock(run_dir: Path) -> None:
    """Makes this process the only command using run_dir until it exits; UserError if another one holds it.

    An flock on run_dir/.lock, which holds the pid: the kernel drops it when the process ends, even by
    SIGKILL. A process may lock a folder it holds again (a test or notebook that runs several commands).
    """
    key = Path(run_dir).resolve()
    if key in _held:
        return
    try:
        fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot lock {run_dir}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{run_dir} is in use by another command (pid {holder}): wait for it to finish, "
                        "or stop it") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd


# ---------------------------------------------------------------------------------------------------------------
# A finished run's tables

@dataclass(frozen=True)
class Table:
    """A CSV a study's report reads: the columns it needs, how many rows a finished run has (a range, where the
    count depends on the results), and the columns finite in every row that finished (no error, not stopped
    early)."""

    file: str
    columns: tuple[str, ...]
    rows: range = range(1, 2**63)
    finite: tuple[str, ...] = ()


def check_tables(run_dir: Path, tables: list[Table]) -> None:
    """UserError, one line, for the first table that is missing, unreadable, or not what a finished run holds."""
    import pandas as pd

    for table in tables:
        path = Path(run_dir) / table.file
        if not path.is_file():
            raise UserError(f"{run_dir} has no {table.file}: the run has not finished")
        try:
            frame = read_table(path)
        except (ValueError, OSError) as e:  # pandas' parser and empty-file errors are ValueErrors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path} is damaged: {first}") from None
        missing = [c for c in table.columns if c not in frame.columns]
        if missing:
            raise UserError(f"{path} is damaged: it lacks the column{'s' * (len(missing) > 1)} {', '.join(missing)}")
        if len(frame) not in table.rows:
            expected = (str(table.rows.start) if table.rows.stop - table.rows.start == 1 else
                        f"{table.rows.start} to {table.rows.stop - 1}" if table.rows.stop < 2**63 else
                        f"at least {table.rows.start}")
            raise UserError(f"{path} is damaged: {len(frame)} row{'s' * (len(frame) != 1)} where the run's settings "
                            f"give {expected}")
        done = frame["error"].eq("") if "error" in frame else pd.Series(True, index=frame.index)
        if "stopped_early" in frame:
            done &= pd.to_numeric(frame["stopped_early"], errors="coerce").eq(0)
        for column in table.finite:
            values = pd.to_numeric(frame.loc[done, column], errors="coerce")
            if not values.map(math.isfinite).all():
                raise UserError(f"{path} is damaged: column {column} has a value that is not a finite number in a "
                                "run that finished")
