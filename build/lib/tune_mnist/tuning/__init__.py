"""The Ray Tune layer: reach a cluster, run trials (each a population), turn their reports into rows.

cluster.py       start or join Ray, the resources a trial takes, the device a trial trains on
trial.py         the one trial body: build or resume a population, train it, report each epoch
runner.py        a Tune experiment (new or resumed), its progress lines, one row per member
tensorboard.py   TensorBoard: Ray's per-trial runs, and one run per population member
search.py        Optuna inside Ray Tune: many trials asked at once, trained as populations
"""
