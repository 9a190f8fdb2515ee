"""Optuna inside Ray Tune, a population at a time: each Ray trial trains many Optuna trials as one population.

Neither Optuna nor Ray Tune evaluates trials in batches, and one small net per Ray trial leaves a GPU idle. Here,
each time Ray has room for a trial, the searcher asks a population-level Optuna study for what the members of a
population must share (the budget study: depth and activation), then asks the members' study for `size` trials
with those values enqueued (and, with `strata`, each member's stratum) and the rest sampled, and hands them to Ray
as one trial whose config lists them under "members". Two studies, so that each sampler models what it decides:
the members' study would otherwise see hundreds of trials of one depth and keep choosing it. Every member is its
own Optuna trial: its validation losses are reported to it as intermediate values, it is told PRUNED when the
population's successive halving stops it, FAIL if it diverged, COMPLETE with its last validation loss otherwise;
the population's trial is told its best member's.

Both studies live in a journal in the run folder, written once per population asked or report taken in (see
`BatchedJournal`), so the history survives a kill. The searcher's own state, which Ray saves beside its experiment
state, is JSON (`STATE`): a resume reads data from the run folder, never code. On restore, trials asked but never
handed to Ray are handed out first.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow.fs as pafs
from optuna.samplers._tpe.sampler import _split_trials, default_gamma
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tune_mnist import storage
from tune_mnist.errors import UserError
from tune_mnist.tuning import members

optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would drown the progress lines

JOURNAL = "journal"  # the param_space key naming the journal where the run folder is now (it may have moved)
POPULATION = "population"  # a member trial's user attribute: the number of its population's trial
STATE = "population-search-{}.json"  # the searcher's state in an experiment folder, named by Ray's start time
LEGACY_STATE = "searcher-state-"  # the pickle earlier versions wrote there: never read
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# An Optuna trial -> its values in a population's config: a member's entry, or what a population shares
Define = Callable[[optuna.Trial], dict[str, Any]]


def journal(path: Path) -> optuna.storages.JournalStorage:
    """A study journal as Optuna writes it, one fsync a write: for reading a run's studies."""
    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(path).resolve())))


def populations_study(name: str) -> str:
    """The name of the population-level study beside a members' study."""
    return f"{name}-populations"


class BatchedJournal(JournalFileBackend):
    """Optuna's journal file, its appends held in memory until `flush`: one write and one fsync for all of them.

    Only one command writes a run's journal (the run's lock), so what the file held when it was opened plus this
    process's appends is the whole journal, and reads never go back to the file. A flush cut short by a kill
    leaves a torn last line, which no later append may extend: it is dropped when the journal is opened."""

    def __init__(self, path: Path):
        drop_torn_tail(Path(path))
        super().__init__(str(Path(path).resolve()))
        self.pending: list[dict[str, Any]] = []
        self.written: int | None = None  # logs in the file, once read

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        if self.written is None:
            logs = list(super().read_logs(0))
            self.written = len(logs)
            return logs[log_number_from:] + self.pending
        return self.pending[log_number_from - self.written:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.pending += logs

    def flush(self) -> None:
        if self.pending:
            super().append_logs(self.pending)
            self.written = (self.written or 0) + len(self.pending)
            self.pending = []


def drop_torn_tail(path: Path) -> None:
    """Cuts a journal file back to its last whole line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


class PopulationTPE(optuna.samplers.TPESampler):
    """Optuna's TPE, fitted once per history on its best and most recent trials, and drawn from in batches.

    A population's members are all asked before any of them reports, so TPE (without the constant liar, which
    models running trials) sees the same finished trials for each: one fit of its two Parzen estimators serves
    every member, and each member's values are still TPE's own choice, the best of n_ei_candidates draws by
    l(x)/g(x). The draws of `batch` members are made and scored in one numpy call; a fit and the draws left from
    it are dropped as soon as another trial finishes. The fit models at most `best` + `recent` finished trials:
    the `best` first by TPE's own ranking (l(x) is fitted on at most 25 of them) and the `recent` newest of the
    others, so that a member's cost stops growing with the history."""

    def __init__(self, seed: int | None = None, batch: int = 32, best: int = 64, recent: int = 192, **kwargs: Any):
        super().__init__(seed=seed, constant_liar=False, **kwargs)
        self.batch, self.best, self.recent = batch, best, recent
        self.history: list[optuna.trial.FrozenTrial] = []  # the finished trials when the trial being sampled began
        self.fits: dict[tuple, Any] = {}  # (finished trials, search space) -> Parzen estimators
        self.draws: dict[tuple, list[dict[str, Any]]] = {}  # same key -> values drawn, not yet handed out

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        self.history = study.get_trials(deepcopy=False, states=FINISHED)

    def _sample(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                search_space: dict[str, optuna.distributions.BaseDistribution]) -> dict[str, Any]:
        key = (len(self.history), tuple(search_space.items()))
        if not self.draws.get(key):
            if key not in self.fits:
                self.fits = {k: v for k, v in self.fits.items() if k[0] == key[0]}
                self.draws = {k: v for k, v in self.draws.items() if k[0] == key[0]}
                self.fits[key] = self.fit(study, search_space)
            self.draws[key] = self.draw(*self.fits[key], search_space)
        return self.draws[key].pop()

    def fit(self, study: optuna.Study, search_space: dict[str, optuna.distributions.BaseDistribution]
            ) -> tuple[Any, Any]:
        """TPE's l(x), on the best of the modelled trials, and g(x), on the others."""
        best, others = _split_trials(study, self.history, self.best)
        modelled = sorted(best + others[len(others) - self.recent:], key=lambda t: t.number)
        below, above = _split_trials(study, modelled, (self._gamma or default_gamma)(len(modelled)))
        return (self._build_parzen_estimator(study, search_space, below, handle_below=True),
                self._build_parzen_estimator(study, search_space, above, handle_below=False))

    def draw(self, below: Any, above: Any, search_space: dict[str, optuna.distributions.BaseDistribution]
             ) -> list[dict[str, Any]]:
        """`batch` values, each the best of its own n_ei_candidates draws from l(x)."""
        samples = below.sample(self._rng.rng, self._n_ei_candidates * self.batch)
        score = self._compute_acquisition_func(samples, below, above).reshape(self.batch, self._n_ei_candidates)
        best = np.arange(self.batch) * self._n_ei_candidates + score.argmax(axis=1)
        return [{name: dist.to_external_repr(samples[name][i].item()) for name, dist in search_space.items()}
                for i in best]


def read_state(text: str | bytes, where: str) -> dict[str, tuple[int, list[int]]]:
    """A saved searcher state, {Ray trial id: (its population's number, its members' numbers)}; UserError if the
    text is not one (damaged, or written by something else)."""
    try:
        state = json.loads(text)
        running = state["running"]
        ok = isinstance(running, dict) and all(
            isinstance(k, str) and isinstance(v, list) and len(v) == 2 and is_number(v[0])
            and isinstance(v[1], list) and all(is_number(n) for n in v[1]) for k, v in running.items())
    except (ValueError, TypeError, KeyError, RecursionError):  # not JSON, not text, not an object
        ok = False
    if not ok:
        raise UserError(f"{where} is not a population search state (damaged, or not written by tune_mnist): "
                        "this run's search cannot resume")
    return {trial_id: (group, numbers) for trial_id, (group, numbers) in running.items()}


def is_number(value: Any) -> bool:
    return type(value) is int and value >= 0


def check_state(location: str) -> None:
    """Before a resume, the search state of every experiment of a run (its folder, or its copy in shared storage)
    that a resume would read: the newest of each experiment must be a population search's JSON, else UserError.
    A pickle that an earlier version wrote there is never read: beside a JSON state it is ignored with a line,
    alone it is refused, as the search it held cannot be restored without running it."""
    fs, root = storage.resolve(storage.join(location, "tune"))
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    folders: dict[str, list[str]] = {}
    for info in found:
        if info.type == pafs.FileType.File:
            folders.setdefault(info.path.rsplit("/", 1)[0], []).append(info.base_name)
    for folder, names in sorted(folders.items()):
        states = sorted(n for n in names if n.startswith(STATE.split("{")[0]) and n.endswith(".json"))
        legacy = sorted(n for n in names if n.startswith(LEGACY_STATE))
        if states:
            with fs.open_input_file(f"{folder}/{states[-1]}") as f:
                read_state(f.read(), f"{folder}/{states[-1]}")
            for name in legacy:
                print(f"[resume] {folder}/{name} is not read (a pickle; the search state is {states[-1]})",
                      flush=True)
        elif legacy:
            raise UserError(f"{folder}/{legacy[-1]} is a pickled search state, which tune_mnist no longer reads "
                            "(it could run code): this run's search cannot resume")


class PopulationSearch(Searcher):
    """Optuna's trials, `size` at a time, as one Ray trial each (see the module's docstring).

    define: a member's config entry from its Optuna trial; define_group: what a population's members share (asked
    of the populations' study, then enqueued into each member); n_trials: Optuna trials in all; journal_path,
    study_name: where the studies live; shared: config keys every Ray trial gets; strata: parameters fixed per
    member, round-robin, so that every population holds each combination of their values equally often (member i
    of a population gets combination i mod the number of combinations, in itertools.product's order, enqueued
    like the shared values; TPE models the rest); sampler: the studies' sampler, from a seed."""

    CKPT_FILE_TMPL = STATE  # the file Ray's save_to_dir writes and restore_from_dir reads

    def __init__(self, define: Define, define_group: Define, n_trials: int, size: int, journal_path: Path,
                 study_name: str, shared: dict[str, Any], metric: str = "val_loss", mode: str = "min",
                 seed: int = 0, strata: Mapping[str, list[Any]] | None = None,
                 sampler: Callable[[int], optuna.samplers.BaseSampler] = PopulationTPE):
        super().__init__(metric=metric, mode=mode)
        self.define, self.define_group, self.n_trials, self.size = define, define_group, n_trials, size
        self.journal_path, self.study_name, self.shared, self.seed = Path(journal_path), study_name, shared, seed
        strata = strata or {}
        self.strata = [dict(zip(strata, values)) for values in itertools.product(*strata.values())]
        self.sampler = sampler
        self.running: dict[str, tuple[int, list[int]]] = {}  # Ray trial id -> its population's and members' numbers
        self.pending: list[tuple[int, list[dict[str, Any]]]] = []  # asked of Optuna, not yet handed to Ray
        self._studies: dict[str, optuna.Study] = {}
        self._journal: BatchedJournal | None = None  # both studies' journal, opened with the first study
        self._storage: optuna.storages.JournalStorage | None = None
        self._trials: dict[tuple[str, int], optuna.Trial | None] = {}  # by (study, number): running, or None

    def open(self, name: str, seed: int) -> optuna.Study:
        """A study, opened when first needed: the Tuner pickles its searcher, and a storage's file handles do not."""
        if name not in self._studies:
            if self._journal is None:
                self._journal = BatchedJournal(self.journal_path)
                self._storage = optuna.storages.JournalStorage(self._journal)
            self._studies[name] = optuna.create_study(
                study_name=name, storage=self._storage, sampler=self.sampler(seed),
                direction="minimize" if self.mode == "min" else "maximize", load_if_exists=True)
        return self._studies[name]

    def flush(self) -> None:
        """Writes what Optuna was told since the last flush: called before each callback returns, so that any
        state Ray saves afterwards (its experiment, this searcher's) finds the journal at least as new as itself."""
        if self._journal is not None:
            self._journal.flush()

    @property
    def study(self) -> optuna.Study:
        """The members' study: one trial per net."""
        return self.open(self.study_name, self.seed)

    @property
    def groups(self) -> optuna.Study:
        """The populations' study: one trial per population, told its best member's value."""
        return self.open(populations_study(self.study_name), self.seed + 1)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        """Ray hands every fit, a resumed one's too, the experiment's param_space: its JOURNAL key is where the
        studies are now (the searcher was pickled with the run folder's path of its first command)."""
        if JOURNAL in config:
            self.journal_path = Path(config[JOURNAL])
        return True

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_studies": {}, "_trials": {}, "_journal": None, "_storage": None}

    def trial(self, study: optuna.Study, number: int) -> optuna.Trial | None:
        """The running trial of this number; None once it has finished."""
        key = (study.study_name, number)
        if key not in self._trials:
            frozen = study.get_trials(deepcopy=False)[number]
            self._trials[key] = optuna.Trial(study, frozen._trial_id) if frozen.state == TrialState.RUNNING else None
        return self._trials[key]

    def member(self, trial: optuna.Trial, population: int) -> dict[str, Any]:
        """A member's config entry, from its trial (asked again, a parameter returns its sampled value)."""
        trial.set_user_attr(POPULATION, population)
        return {**self.define(trial), "number": trial.number}

    def ask(self) -> tuple[int, list[dict[str, Any]]]:
        """A population: what its members share, from the populations' study, then its members."""
        group = self.groups.ask()
        shared = self.define_group(group)
        self._trials[self.groups.study_name, group.number] = group
        members = []
        for i in range(min(self.size, self.n_trials - len(self.study.get_trials(deepcopy=False)))):
            self.study.enqueue_trial({**shared, **self.strata[i % len(self.strata)]})
            trial = self.study.ask()
            self._trials[self.study_name, trial.number] = trial
            members.append(self.member(trial, group.number))
        return group.number, members

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.pending:
            if len(self.study.get_trials(deepcopy=False)) >= self.n_trials:
                return Searcher.FINISHED
            self.pending.append(self.ask())
            self.flush()  # before Ray holds a config that names these trials
        group, members = self.pending.pop(0)
        self.running[trial_id] = (group, [m["number"] for m in members])
        return {**self.shared, **self.define_group(optuna.trial.FixedTrial(members[0])), "members": members}

    def tell(self, study: optuna.Study, number: int, state: TrialState, value: float | None = None) -> None:
        if self.trial(study, number) is not None:  # a trial is told once, whatever Ray repeats after a resume
            study.tell(number, value if state == TrialState.COMPLETE else None, state=state)
            self._trials[study.study_name, number] = None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.take(trial_id, result)
        self.flush()

    def take(self, trial_id: str, result: dict[str, Any]) -> None:
        """A population's report: each member's validation loss, and the members it stopped or lost."""
        reported = members.decode(result)
        for i, number in enumerate(self.running.get(trial_id, (0, []))[1]):
            member = reported.get(i, {})
            if self.metric not in member:
                continue
            trial, step = self.trial(self.study, number), int(member["epoch"])
            # a resumed trial reports its last epoch again, which Optuna already has
            if trial is not None and step not in trial._cached_frozen_trial.intermediate_values:
                trial.report(member[self.metric], step)
            if member.get("stopped_early"):
                self.tell(self.study, number, TrialState.PRUNED)
            elif "error" in member:
                self.tell(self.study, number, TrialState.FAIL)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        result = result or {}
        if not error:
            self.take(trial_id, result)
        group, numbers = self.running.pop(trial_id, (None, []))
        values, reported = [], members.decode(result)
        for i, number in enumerate(numbers):
            member = reported.get(i, {})
            value = member.get(self.metric)
            finished = not error and value is not None and not member.get("stopped_early")
            values += [value] if finished else []
            self.tell(self.study, number, TrialState.COMPLETE if finished else TrialState.FAIL, value)
        if group is not None:
            best = (min if self.mode == "min" else max)(values) if values else None
            self.tell(self.groups, group, TrialState.COMPLETE if values else TrialState.FAIL, best)
        self.flush()

    def save(self, checkpoint_path: str) -> None:
        self.flush()
        running = {trial_id: [group, numbers] for trial_id, (group, numbers) in self.running.items()}
        Path(checkpoint_path).write_text(json.dumps({"running": running}))

    def restore(self, checkpoint_path: str) -> None:
        """The populations Ray knew at its last snapshot; trials asked after it, which no Ray trial trains, are handed
        out again first, as the populations they were asked for. Their sampled values stand; a member killed
        before it sampled everything samples the rest now; a population whose members were never asked is failed."""
        self.running = read_state(Path(checkpoint_path).read_bytes(), checkpoint_path)
        asked = len(self.study.get_trials(deepcopy=False))
        if any(n >= asked for _, numbers in self.running.values() for n in numbers):
            raise UserError(f"{checkpoint_path} names Optuna trials that {self.journal_path.name} does not hold")
        while self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            self.study.ask()  # enqueued before the kill, never asked: asked now, an orphan like the rest
        known = {n for _, numbers in self.running.values() for n in numbers}
        orphans: dict[int, list[dict[str, Any]]] = {}
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in known:
                group = frozen.user_attrs.get(POPULATION)
                if group is None:  # killed before it was given to a population: the newest population is its own
                    group = self.groups.get_trials(deepcopy=False)[-1].number
                orphans.setdefault(group, []).append(self.member(self.trial(self.study, frozen.number), group))
        self.pending = [(group, members) for group, members in orphans.items()]
        busy = {group for group, _ in self.running.values()} | set(orphans)
        for frozen in self.groups.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in busy:
                self.tell(self.groups, frozen.number, TrialState.FAIL)
        self.flush()
