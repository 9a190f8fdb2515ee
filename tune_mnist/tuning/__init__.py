"""The Ray Tune layer: reach a cluster, run trials (each a population), turn their reports into rows.

cluster.py       start or join Ray, the resources a trial takes, the device a trial trains on
trial.py         the one trial body: build or resume a population, train it, report each epoch
runner.py        a Tune experiment (new or resumed), one row per member; a run folder checked before a resume
progress.py      a line per finished trial, and trials and nets done with an estimate of what is left
tensorboard.py   TensorBoard: Ray's per-trial runs, and one run per net with its HParams entry
members.py       the population report format: each member's metrics in a trial's report
search.py        Optuna inside Ray Tune: many trials asked at once, trained as populations
"""
