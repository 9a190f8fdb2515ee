"""One module per study. Each has NAME, HELP, add_arguments(parser), check(settings),
run(settings, run_dir, data, resources) -> summary dict, and report(run_dir, out) which redraws its
figures from its CSVs (run() and the notebooks both call it). cli.py does everything they share.

Nothing is imported here: a trial's worker imports its own study's module only, not the others' (budget's
Optuna among them) nor matplotlib, which plots.py imports when a figure is drawn.
"""

from importlib import import_module
from types import ModuleType

NAMES = ("budget", "scaling", "corruption", "random", "transplant", "linear")


def registry() -> dict[str, ModuleType]:
    """Every study's module by its NAME."""
    return {name: import_module(f"{__name__}.{name}") for name in NAMES}
