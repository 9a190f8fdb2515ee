"""One module per study. Each has NAME, HELP, a Settings dataclass (its TOML's keys), check(settings),
run(settings, run_dir, data, resources) -> summary dict, and report(run_dir, out), which draws its figures and
REPORT.md from its CSVs (run() and the notebooks both call it). cli.py does everything they share.

Nothing is imported here: a trial's worker imports its own study's module only, not the others' (budget's
Optuna among them) nor matplotlib, which plots.py imports when a figure is drawn.
"""

from importlib import import_module
from types import ModuleType

MODULES = {"budget": "budget", "scaling": "scaling", "corruption": "corruption", "random": "random_nets",
           "transplant": "transplant", "linear": "linear"}


def registry() -> dict[str, ModuleType]:
    """Every study's module by its NAME."""
    return {name: import_module(f"{__name__}.{module}") for name, module in MODULES.items()}
