"""Optuna inside Ray Tune, a population at a time: each Ray trial trains many Optuna trials as one population.

Neither Optuna nor Ray Tune evaluates trials in batches, and one small net per Ray trial leaves a GPU idle. Here,
each time Ray has room for a trial, the searcher asks a population-level Optuna study for what the members of a
population must share (the budget study: depth and activation), then asks the members' study for `size` trials
with those values enqueued and the rest sampled, and hands them to Ray as one trial whose config lists them
under "members". Two studies, so that each sampler models what it decides: the members' study would otherwise
see hundreds of trials of one depth and keep choosing it. Every member is its own Optuna trial: its validation
losses are reported to it as intermediate values, it is told PRUNED when the population's successive halving
stops it, FAIL if it diverged, COMPLETE with its last validation loss otherwise; the population's trial is told
its best member's. Both studies live in a journal in the run folder, so the history survives a kill; on
restore, trials asked but never handed to Ray are handed out first.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tune_mnist.tuning import members

optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would drown the progress lines

# Where this command keeps each study's journal: the searcher was pickled with its run folder's path, and a resumed
# run folder may have moved since
JOURNALS: dict[str, Path] = {}
POPULATION = "population"  # a member trial's user attribute: the number of its population's trial

# An Optuna trial -> its values in a population's config: a member's entry, or what a population shares
Define = Callable[[optuna.Trial], dict[str, Any]]


def journal(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(Path(path).resolve())))


def populations_study(name: str) -> str:
    """The name of the population-level study beside a members' study."""
    return f"{name}-populations"


class PopulationSearch(Searcher):
    def __init__(self, define: Define, define_group: Define, n_trials: int, size: int, journal_path: Path,
                 study_name: str, shared: dict[str, Any], metric: str = "val_loss", mode: str = "min",
                 seed: int = 0):
        super().__init__(metric=metric, mode=mode)
        self.define, self.define_group, self.n_trials, self.size = define, define_group, n_trials, size
        self.journal_path, self.study_name, self.shared, self.seed = Path(journal_path), study_name, shared, seed
        self.running: dict[str, tuple[int, list[int]]] = {}  # Ray trial id -> its population's and members' numbers
        self.pending: list[tuple[int, list[dict[str, Any]]]] = []  # asked of Optuna, not yet handed to Ray
        self._studies: dict[str, optuna.Study] = {}
        self._trials: dict[tuple[str, int], optuna.Trial] = {}  # running trials by (study, number), to report to

    def open(self, name: str, seed: int) -> optuna.Study:
        """A study, opened when first needed: the Tuner pickles its searcher, and a storage's file handles do not."""
        if name not in self._studies:
            path = JOURNALS.get(self.study_name, self.journal_path)
            self._studies[name] = optuna.create_study(
                study_name=name, storage=journal(path), sampler=optuna.samplers.TPESampler(seed=seed),
                direction="minimize" if self.mode == "min" else "maximize", load_if_exists=True)
        return self._studies[name]

    @property
    def study(self) -> optuna.Study:
        """The members' study: one trial per net."""
        return self.open(self.study_name, self.seed)

    @property
    def groups(self) -> optuna.Study:
        """The populations' study: one trial per population, told its best member's value."""
        return self.open(populations_study(self.study_name), self.seed + 1)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_studies": {}, "_trials": {}}

    def trial(self, study: optuna.Study, number: int) -> optuna.Trial | None:
        """The running trial of this number; None once it has finished."""
        if (study.study_name, number) not in self._trials:
            frozen = study.get_trials(deepcopy=False)[number]
            if frozen.state != TrialState.RUNNING:
                return None
            self._trials[study.study_name, number] = optuna.Trial(study, frozen._trial_id)
        return self._trials[study.study_name, number]

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
        for _ in range(min(self.size, self.n_trials - len(self.study.get_trials(deepcopy=False)))):
            self.study.enqueue_trial(shared)
            trial = self.study.ask()
            self._trials[self.study_name, trial.number] = trial
            members.append(self.member(trial, group.number))
        return group.number, members

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.pending:
            if len(self.study.get_trials(deepcopy=False)) >= self.n_trials:
                return Searcher.FINISHED
            self.pending.append(self.ask())
        group, members = self.pending.pop(0)
        self.running[trial_id] = (group, [m["number"] for m in members])
        return {**self.shared, **self.define_group(optuna.trial.FixedTrial(members[0])), "members": members}

    def tell(self, study: optuna.Study, number: int, state: TrialState, value: float | None = None) -> None:
        if self.trial(study, number) is not None:  # a trial is told once, whatever Ray repeats after a resume
            study.tell(number, value if state == TrialState.COMPLETE else None, state=state)
            self._trials.pop((study.study_name, number))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
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
            self.on_trial_result(trial_id, result)
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

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"running": self.running, "pending": self.pending}, f)

    def restore(self, checkpoint_path: str) -> None:
        """The populations Ray knew at its last snapshot; trials asked after it, which no Ray trial trains, are handed
        out again first, as the populations they were asked for. Their sampled values stand; a member killed
        before it sampled everything samples the rest now; a population whose members were never asked is failed."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.running = state["running"]
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
