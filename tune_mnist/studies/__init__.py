"""One module per study. Each has NAME, HELP, add_arguments(parser), check(settings) and
run(settings, run_dir, data, resources) -> summary dict; cli.py does everything they share."""
