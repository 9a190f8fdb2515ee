"""One module per study, each ending in `STUDY = Study(...)`: everything cli.py, `report` and `export` need of it.
cli.py does everything the studies share (settings, checks, data, Ray, the run folder).

Nothing is imported here: a trial's worker imports its own study's module only, not the others' (budget's
Optuna among them) nor matplotlib, which plots.py imports when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune_mnist.errors import UserError

if TYPE_CHECKING:
    from tune_mnist.data import Mnist
    from tune_mnist.runs import Table
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
    tables: Callable[[Any], list[Table]]
    prepare: Callable[[Any, Mnist], None] | None = None


def load(name: str) -> Study:
    """One study by its name; UserError for a name no study has (a run folder's, say)."""
    if name not in MODULES:
        raise UserError(f"unknown study {name!r}; the studies are {', '.join(MODULES)}")
    return import_module(f"{__name__}.{MODULES[name]}").STUDY


def registry() -> dict[str, Study]:
    """Every study by its name."""
    return {name: load(name) for name in MODULES}
