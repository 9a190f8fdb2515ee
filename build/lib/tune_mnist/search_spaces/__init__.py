"""Search spaces as data: one TOML file per study, plus common.toml for what every study takes.

Installed with the package as tune_mnist.search_spaces. Each top-level key is a flag of the same name, its comment
the flag's help; a [smoke] table replaces keys under --smoke, a [gpu] table where the cluster has GPUs.
"""
