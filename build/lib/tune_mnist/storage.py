"""Shared storage for cluster runs: a folder every node mounts, or a pyarrow.fs URI (s3://, gs://, ...).

With `--storage`, Tune writes each trial's results, checkpoints and TensorBoard files straight to
<storage>/<study>/<run>/tune/, from whichever node ran it; the driver keeps the run folder under
--results and copies its tables, figures and exports to <storage>/<study>/<run>/ when they are written.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from tune_mnist.errors import UserError


def is_uri(location: str) -> bool:
    return "://" in location


def join(root: str, *parts: str) -> str:
    """root/part/..., for plain paths and URIs alike (pathlib would collapse the '//' of a URI)."""
    root = root if is_uri(root) else str(Path(root).resolve())
    return "/".join([root.rstrip("/"), *parts])


def for_run(root: str, study: str, run_dir: Path) -> str:
    """A run's folder in the storage: <root>/<study>/<run>, as under --results."""
    return join(root, study, Path(run_dir).name)


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(location if is_uri(location) else str(Path(location).resolve()))
    except (ValueError, OSError) as e:  # ValueError (ArrowInvalid): unknown scheme; OSError: no bucket...
        raise UserError(f"cannot use --storage {location}: {str(e).splitlines()[0]}") from None


def check(location: str) -> None:
    """Fails before anything runs if the storage cannot be written (bad scheme, no credentials)."""
    fs, path = resolve(location)
    try:
        fs.create_dir(path, recursive=True)
    except OSError as e:
        raise UserError(f"cannot write to --storage {location}: {str(e).splitlines()[0]}") from None


def upload(run_dir: Path, location: str) -> None:
    """Copies the run folder's files (not tune/, which Tune already wrote there) to `location`.

    Each file goes to a temporary name first and is then moved into place, so readers of the
    storage never see half a file, as with files.atomic_write.
    """
    fs, root = resolve(location)
    for local in sorted(Path(run_dir).rglob("*")):
        relative = local.relative_to(run_dir)
        if not local.is_file() or relative.parts[0] == "tune" or local.name.startswith("."):
            continue
        target = f"{root}/{relative.as_posix()}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        tmp = f"{target.rsplit('/', 1)[0]}/.{local.name}.tmp"
        with local.open("rb") as src, fs.open_output_stream(tmp) as out:
            out.write(src.read())
        fs.move(tmp, target)


def fetch(location: str, target: str) -> None:
    """Copies one file from a local path or URI to the local file `target`."""
    fs, path = resolve(location)
    with fs.open_input_stream(path) as src, open(target, "wb") as out:
        out.write(src.read())


def read_checkpoint(location: str) -> dict:
    """A checkpoint file (a local path or URI) as tensors and plain containers, loaded without running code."""
    import tempfile

    from tune_mnist import models

    if not is_uri(location):
        return models.load_state(location)
    with tempfile.NamedTemporaryFile(suffix=".pt") as local:
        fetch(location, local.name)
        return models.load_state(local.name)


def checkpoint_location(checkpoint: "ray.tune.Checkpoint") -> str:  # noqa: F821
    """A checkpoint's folder as a string that `fetch` reads back: a path if local, else a URI."""
    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"
