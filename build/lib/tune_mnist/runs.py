"""Run folders: results/<study>/<run>/, each with run.json (settings, command, versions) as its birth certificate.

run.json is what makes a folder a run: `--resume` and `export` refuse any folder without one, and resume reads
the study's settings back from it, so that the continued run is the same run. A command that runs or resumes a
study locks its folder (.lock), so that no two commands write one run at once.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

from tune_mnist.errors import UserError
from tune_mnist.files import write_json

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # the run folders this process has locked, and their lock files' descriptors


def new_run_dir(results: Path, study: str, name: str | None) -> Path:
    """The folder for a new run; it is created only later, by `start`, once all input is checked."""
    run_dir = Path(results) / study / (name or time.strftime("%Y%m%d-%H%M%S"))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} already holds a run: pass --resume {run_dir} to continue it, or another --name")
    return run_dir


def versions() -> dict[str, str]:
    """The versions of what a run's numbers depend on, and the commit where the package is a git checkout."""
    from tune_mnist.report import current_versions

    found = current_versions()
    found.pop("date")
    return found


def start(run_dir: Path, study: str, settings: dict[str, Any], command: list[str]) -> None:
    write_json(run_dir / RUN_FILE, {
        "study": study, "settings": settings, "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": versions(),
    })


def read(run_dir: Path, study: str | None = None) -> dict[str, Any]:
    import json

    meta_path = Path(run_dir) / RUN_FILE
    if not meta_path.is_file():
        raise UserError(f"{run_dir} is not a tune_mnist run folder (no {RUN_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{meta_path} is damaged: {e}") from None
    if study and meta.get("study") != study:
        raise UserError(f"{run_dir} is a {meta.get('study')!r} run, not {study!r}")
    return meta


def lock(run_dir: Path) -> None:
    """Makes this process the only command using run_dir until it exits; UserError if another one holds it.

    An flock on run_dir/.lock, which holds the pid: the kernel drops it when the process ends, even by
    SIGKILL. A process may lock a folder it holds again (a test or notebook that runs several commands).
    """
    key = Path(run_dir).resolve()
    if key in _held:
        return
    fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode().strip() or "unknown"
        os.close(fd)
        raise UserError(f"{run_dir} is in use by another command (pid {holder}): wait for it to finish, "
                        "or stop it") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd
