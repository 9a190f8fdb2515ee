"""One module per study. Each has NAME, HELP, add_arguments(parser), check(settings),
run(settings, run_dir, data, resources) -> summary dict, and report(run_dir, out) which redraws its
figures from its CSVs (run() and the notebooks both call it). cli.py does everything they share."""

from tune_mnist.studies import budget, corruption, linear, random, scaling, transplant

STUDIES = {module.NAME: module for module in (budget, scaling, corruption, random, transplant, linear)}
