"""One module per study, each ending in `STUDY = Study(...)`: everything cli.py, `report` and `export` need of it;
and a finished run's study, its report drawn again. cli.py does everything the studies share (settings, checks,
data, Ray, the run folder).

Nothing is imported here: a trial's worker imports its own study's module only, not the others' (budget's
Optuna among them) nor matplotlib, which plots.py imports when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune_mnist import runs
from tune_mnist.errors import UserError
from tune_mnist.settings import Space

if TYPE_CHECKING:
    from tune_mnist.data import Mnist
    from tune_mnist.tuning.cluster import Resources

# A study's name on the command line and its module; adding a study adds one line here.
MODULES = {"budget": "budget", "scaling": "scaling", "corruption": "corruption", "random": "random_nets",
           "transplant": "transplant", "linear": "linear"}


@dataclass(frozen=True)
class Study:
    """A study, as cli.py runs it.

    settings: its Settings dataclass (settings.Common's fields and its TOML's keys), each field typed with
        settings.py's vocabulary, so that every constraint one value can break is declared there, once.
    check(s): what no type can say (one setting against another, a file the setting names); raises UserError.
    run(s, run_dir, data, resources): trains (tuning.runner), writes the CSVs, calls report; returns the summary
        line's fields.
    report(run_dir, out): figures and REPORT.md into `out` (None: the run folder), from the CSVs alone.
    tables(s): the CSVs report reads, with the columns and rows a finished run with settings s has; `report`
        and `export` refuse a run whose tables do not match.
    prepare(s, data): work that needs no cluster (compiling kernels), started while Ray starts.
    """

    name: str
    help: str
    doc: str
    settings: type
    check: Callable[[Any], None]
    run: Callable[[Any, Path, Mnist, Resources], dict[str, Any]]
    report: Callable[[Path, Path | None], None]
    tables: Callable[[Any], list[runs.Table]]
    prepare: Callable[[Any, Mnist], None] | None = None


def load(name: str) -> Study:
    """One study by its name; UserError for a name no study has (a run folder's, say)."""
    if name not in MODULES:
        raise UserError(f"unknown study {name!r}; the studies are {', '.join(MODULES)}")
    return import_module(f"{__name__}.{MODULES[name]}").STUDY


def registry() -> dict[str, Study]:
    """Every study by its name."""
    return {name: load(name) for name in MODULES}


def finished_run(run_dir: str | Path) -> tuple[Study, Any]:
    """A finished run's study and settings, once its run.json, its settings (against the study's types and check)
    and its tables (Study.tables) check out; UserError, one line, otherwise. Reads only."""
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
