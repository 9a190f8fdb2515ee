"""The population searcher: its saved state is data only, its journal is written once per report and survives a kill
mid-report, its TPE draws as TPE does, strata balance every population, and a conditional weight decay works."""

import json
import os
import pickle
import random
import statistics

import optuna
import pytest
from scipy import stats

from tune_mnist.errors import UserError
from tune_mnist.tuning import members
from tune_mnist.tuning.search import JOURNAL, STATE, PopulationSearch, PopulationTPE, check_state, journal


class Payload:
    """Unpickling it creates a file: the proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def define_group(trial):
    return {"k": trial.suggest_int("k", 1, 2)}


def define(trial):
    return {**define_group(trial), "x": trial.suggest_float("x", 0.0, 1.0)}


def searcher(tmp_path, n_trials=8, size=4, define=define, **options):
    return PopulationSearch(define, define_group, n_trials=n_trials, size=size, journal_path=tmp_path / "j",
                            study_name="s", shared={}, **options)


def report(epoch, losses, stopped=()):
    return members.encode({i: {"epoch": epoch, "val_loss": v, **({"stopped_early": 1} if i in stopped else {})}
                           for i, v in losses.items()})


def test_a_poisoned_state_file_runs_nothing_and_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "ran"
    experiment = tmp_path / "run" / "tune" / "P1-optuna"
    experiment.mkdir(parents=True)
    poisoned = experiment / STATE.format("2026-12-07_10-00-00")
    poisoned.write_bytes(pickle.dumps(Payload(marker)))
    legacy = experiment / "searcher-state-2026-12-07_10-00-00.pkl"
    legacy.write_bytes(pickle.dumps(Payload(marker)))

    with pytest.raises(UserError) as refused:
        check_state(str(tmp_path / "run"))
    assert str(poisoned) in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(UserError):
        searcher(tmp_path).restore(str(poisoned))
    assert not marker.exists()

    poisoned.unlink()
    with pytest.raises(UserError, match="pickled search state"):  # a pickle alone: its search cannot resume
        check_state(str(tmp_path / "run"))
    assert not marker.exists()


def test_a_legacy_pickle_beside_the_state_is_ignored_with_a_line_and_the_state_round_trips(tmp_path, capsys):
    marker = tmp_path / "ran"
    first = searcher(tmp_path)
    first.suggest("t1")
    experiment = tmp_path / "run" / "tune" / "P1-optuna"
    experiment.mkdir(parents=True)
    first.save(str(experiment / STATE.format("2026-12-07_10-00-00")))
    (experiment / "searcher-state-2026-12-07_09-00-00.pkl").write_bytes(pickle.dumps(Payload(marker)))

    check_state(str(tmp_path / "run"))
    assert "searcher-state-2026-12-07_09-00-00.pkl is not read" in capsys.readouterr().out
    again = searcher(tmp_path)
    again.restore_from_dir(str(experiment))  # as Ray restores it: the newest state file
    assert again.running == {"t1": (0, [0, 1, 2, 3])} and not marker.exists()

    state = experiment / STATE.format("2026-12-07_10-00-00")
    state.write_text(state.read_text()[:-5])  # cut short
    with pytest.raises(UserError, match="is not a population search state"):
        check_state(str(tmp_path / "run"))
    state.write_text(json.dumps({"running": {"t1": [0, [0, 1, 99]]}}))
    with pytest.raises(UserError, match="does not hold"):
        searcher(tmp_path).restore(str(state))


def run_population(search, trial_id, losses_by_epoch, until=None):
    """Ray's side of one population: its reports, then completion; `until` (epoch) stops after that epoch's
    report was taken in but before it was written, as a kill mid-report would."""
    last = len(losses_by_epoch)
    for epoch, losses in enumerate(losses_by_epoch, start=1):
        result = report(epoch, losses)
        if epoch == until:
            search.take(trial_id, result)  # taken in, never flushed: the process dies here
            return
        (search.on_trial_result if epoch < last else search.on_trial_complete)(trial_id, result)


def test_one_fsync_per_report_and_a_kill_mid_report_resumes_to_what_an_uninterrupted_run_records(tmp_path,
                                                                                                monkeypatch):
    losses = [{i: 1.0 - 0.1 * epoch - 0.01 * i for i in range(4)} for epoch in range(1, 4)]
    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    whole = searcher(tmp_path / "whole")
    whole.suggest("t0")
    run_population(whole, "t0", losses)

    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    killed = searcher(tmp_path / "killed")
    killed.suggest("t0")
    killed.on_trial_result("t0", report(1, losses[0]))
    assert len(fsyncs) == 2, "one write for the population asked, one for its report"
    killed.save(str(tmp_path / "state.json"))  # Ray's snapshot after epoch 1
    run_population(killed, "t0", losses, until=3)  # epoch 2 written; epoch 3 and the tells lost to the kill

    resumed = searcher(tmp_path / "killed")
    resumed.restore(str(tmp_path / "state.json"))
    assert resumed.study.trials[0].intermediate_values == {1: pytest.approx(0.9), 2: pytest.approx(0.8)}
    run_population(resumed, "t0", losses)  # Ray resumes the trial from its checkpoint: epochs 2 and 3 again
    for ours, reference in zip(resumed.study.trials, whole.study.trials, strict=True):
        assert (ours.params, ours.state, ours.value, ours.intermediate_values) == \
            (reference.params, reference.state, reference.value, reference.intermediate_values)
    assert resumed.groups.trials[0].value == pytest.approx(min(losses[-1].values()))


def test_a_flush_torn_by_a_kill_is_cut_back_to_its_last_whole_line(tmp_path):
    first = searcher(tmp_path)
    first.suggest("t1")
    with open(tmp_path / "j", "ab") as f:
        f.write(b'{"op_code": 5, "worker_')  # half a line: the rest of the write never happened
    again = searcher(tmp_path)
    assert len(again.study.trials) == 4
    again.suggest("t2")
    study = optuna.load_study(study_name="s", storage=journal(tmp_path / "j"))  # Optuna itself reads it whole
    assert [t.number for t in study.trials] == list(range(8)) and all("x" in t.params for t in study.trials)


def finished_study(seed):
    """A history with its best x near 0.8."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = random.Random(seed)
    for _ in range(60):
        trial = study.ask()
        study.tell(trial, (trial.suggest_float("x", 0.0, 1.0) - 0.8) ** 2 + 0.01 * rng.random())
    return study.trials


def test_population_tpe_draws_what_tpe_asked_member_by_member_draws_and_fits_once_per_history(monkeypatch):
    history = finished_study(0)
    ours = optuna.create_study(sampler=PopulationTPE(seed=1))
    ours.add_trials(history)
    fits = []
    build = PopulationTPE._build_parzen_estimator
    monkeypatch.setattr(PopulationTPE, "_build_parzen_estimator", lambda *a, **k: (fits.append(1), build(*a, **k))[1])
    drawn = [ours.ask().suggest_float("x", 0.0, 1.0) for _ in range(400)]
    assert len(fits) == 2, "below and above, once for 400 asks on one history"
    tpe = optuna.samplers.TPESampler(seed=2, constant_liar=False)
    reference = []
    for _ in range(400):  # TPE itself, each ask on the same history
        alone = optuna.create_study(sampler=tpe)
        alone.add_trials(history)
        reference.append(alone.ask().suggest_float("x", 0.0, 1.0))
    assert stats.ks_2samp(drawn, reference).pvalue > 0.01
    assert sum(abs(x - 0.8) < 0.1 for x in drawn) > 200, "drawn near the best, not uniformly"
    ours.tell(ours.trials[-1].number, 0.0)
    ours.ask().suggest_float("x", 0.0, 1.0)
    assert len(fits) == 4, "a new finished trial: fitted again"


def test_a_long_history_is_modelled_on_its_best_trials_however_old():
    """600 trials: the 20 best (x near 0.8) came first, the 580 since all near x = 0.2: TPE still draws near 0.8."""
    study = optuna.create_study(sampler=PopulationTPE(seed=0))
    rng = random.Random(0)
    for number in range(600):
        x = 0.8 + 0.02 * rng.random() if number < 20 else 0.2 * rng.random() + 0.1
        study.add_trial(optuna.trial.create_trial(params={"x": x}, value=(x - 0.8) ** 2,
                                                  distributions={"x": optuna.distributions.FloatDistribution(0, 1)}))
    drawn = [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(100)]
    assert statistics.median(drawn) > 0.7


def test_strata_give_every_population_each_value_equally_and_tpe_models_the_rest(tmp_path):
    def shaped(trial):
        return {**define(trial), "shape": trial.suggest_categorical("shape", ["a", "b", "c"])}

    search = searcher(tmp_path, n_trials=60, size=12, define=shaped, strata={"shape": ["a", "b", "c"]})
    rng, populations = random.Random(0), []
    for number in range(5):
        config = search.suggest(f"t{number}")
        populations.append(config["members"])
        losses = {i: (m["x"] - 0.8) ** 2 + 0.01 * rng.random() for i, m in enumerate(config["members"])}
        search.on_trial_complete(f"t{number}", report(1, losses))
    for population in populations:
        assert [m["shape"] for m in population] == ["a", "b", "c"] * 4
        assert len({m["k"] for m in population}) == 1
    assert [search.study.trials[m["number"]].params["shape"] for m in populations[-1]] == ["a", "b", "c"] * 4

    def distance(population):  # median distance to the best x: 0.25 when x is uniform
        return statistics.median(abs(m["x"] - 0.8) for m in population)

    modelled = [m for p in populations[1:] for m in p]
    assert distance(modelled) < 0.15, [distance(p) for p in populations]


def test_weight_decay_off_or_a_log_range_in_one_define_by_run_space(tmp_path):
    def with_decay(trial):
        on = trial.suggest_categorical("weight_decay_on", [True, False])
        decay = trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True) if on else 0.0
        return {**define(trial), "weight_decay": decay}

    search = searcher(tmp_path, n_trials=48, size=8, define=with_decay)
    rng, handed = random.Random(0), []
    for number in range(6):
        config = search.suggest(f"t{number}")
        handed += config["members"]
        losses = {i: m["weight_decay"] * 1e3 + 0.1 * rng.random() for i, m in enumerate(config["members"])}
        search.on_trial_complete(f"t{number}", report(1, losses))
    trials = search.study.trials
    off = [m for m in handed if m["weight_decay"] == 0.0]
    assert 0 < len(off) < len(handed) and all(1e-7 <= m["weight_decay"] <= 1e-3 for m in handed if m not in off)
    assert all(("weight_decay" in trials[m["number"]].params) == (m not in off) for m in handed)
    assert all(t.state.name == "COMPLETE" for t in trials)


def test_a_resumed_searcher_writes_the_journal_where_ray_s_param_space_says_the_run_folder_is_now(tmp_path):
    first = searcher(tmp_path)
    first.suggest("t0")
    first.flush()
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "j").rename(moved / "j")
    restored = pickle.loads(pickle.dumps(first))  # as Ray keeps it in tuner.pkl: the old folder's path
    assert restored.set_search_properties("val_loss", "min", {JOURNAL: str(moved / "j")})
    assert len(restored.study.get_trials()) == 4, "the moved journal's trials"
    restored.suggest("t1")
    restored.flush()
    assert not (tmp_path / "j").exists()
