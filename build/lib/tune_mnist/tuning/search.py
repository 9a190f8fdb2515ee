"""Optuna inside Ray Tune, a population at a time: each Ray trial trains many Optuna trials as one population.

Neither Optuna nor Ray Tune evaluates trials in batches, and one small net per Ray trial leaves a GPU idle. Here,
each time Ray has room for a trial, the searcher asks Optuna for a lead trial, which samples every parameter,
then for `size` - 1 more with the lead's grouping parameters (depth and activation: what members of one
population must share) enqueued and the rest sampled, and hands them to Ray as one trial whose config lists
them under "members". Every member is its own Optuna trial: its validation losses are reported to it as
intermediate values, it is told PRUNED when the population's successive halving stops it, FAIL if it
diverged, COMPLETE with its last validation loss otherwise. Optuna's journal lives in the run folder, so the
history survives a kill; on restore, trials asked but never handed to Ray are handed out again.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would drown the progress lines

# Where this command keeps each study's journal: the searcher was pickled with its run folder's path, and a resumed
# run folder may have moved since
JOURNALS: dict[str, Path] = {}

# An Optuna trial -> its member's entry in a population's config ("number" added by the searcher)
Define = Callable[[optuna.Trial], dict[str, Any]]


def journal(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(Path(path).resolve())))


class PopulationSearch(Searcher):
    def __init__(self, define: Define, group: Sequence[str], n_trials: int, size: int, journal_path: Path,
                 study_name: str, shared: dict[str, Any], metric: str = "val_loss", mode: str = "min",
                 seed: int = 0):
        super().__init__(metric=metric, mode=mode)
        self.define, self.group, self.n_trials, self.size = define, list(group), n_trials, size
        self.journal_path, self.study_name, self.shared, self.seed = Path(journal_path), study_name, shared, seed
        self.running: dict[str, list[int]] = {}  # Ray trial id -> its members' Optuna trial numbers
        self.pending: list[list[dict[str, Any]]] = []  # populations asked of Optuna, not yet handed to Ray
        self._study: optuna.Study | None = None
        self._trials: dict[int, optuna.Trial] = {}  # running Optuna trials by number, to report to

    @property
    def study(self) -> optuna.Study:
        """Opened when first needed: the Tuner pickles its searcher, and a storage's file handles do not pickle."""
        if self._study is None:
            sampler = optuna.samplers.TPESampler(seed=self.seed)
            path = JOURNALS.get(self.study_name, self.journal_path)
            self._study = optuna.create_study(study_name=self.study_name, storage=journal(path),
                                              sampler=sampler, direction="minimize" if self.mode == "min" else
                                              "maximize", load_if_exists=True)
        return self._study

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None, "_trials": {}}

    def trial(self, number: int) -> optuna.Trial | None:
        """The running Optuna trial of this number; None once it has finished."""
        if number not in self._trials:
            frozen = self.study.get_trials(deepcopy=False)[number]
            if frozen.state != TrialState.RUNNING:
                return None
            self._trials[number] = optuna.Trial(self.study, frozen._trial_id)
        return self._trials[number]

    def entry(self, trial: optuna.Trial) -> dict[str, Any]:
        """A member's config entry, from its Optuna trial (asked again, a parameter returns its sampled value)."""
        return {**self.define(trial), "number": trial.number}

    def ask(self) -> list[dict[str, Any]]:
        """A population: a lead trial that samples everything, then members that share its grouping parameters."""
        asked = len(self.study.get_trials(deepcopy=False))
        trials = [self.study.ask()]
        members = [self.entry(trials[0])]
        shared = {k: trials[0].params[k] for k in self.group if k in trials[0].params}
        for _ in range(min(self.size, self.n_trials - asked) - 1):
            self.study.enqueue_trial(shared)
            trials.append(self.study.ask())
            members.append(self.entry(trials[-1]))
        self._trials.update({t.number: t for t in trials})
        return members

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.pending:
            if len(self.study.get_trials(deepcopy=False)) >= self.n_trials:
                return Searcher.FINISHED
            self.pending.append(self.ask())
        members = self.pending.pop(0)
        self.running[trial_id] = [m["number"] for m in members]
        return {**self.shared, **{k: members[0][k] for k in self.group}, "members": members}

    def tell(self, number: int, state: TrialState, value: float | None = None) -> None:
        if number in self._trials or self.trial(number) is not None:  # a trial is told once, whatever Ray repeats
            self.study.tell(number, value if state == TrialState.COMPLETE else None, state=state)
            self._trials.pop(number)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        for i, number in enumerate(self.running.get(trial_id, [])):
            if f"m{i}/{self.metric}" not in result:
                continue
            trial, step = self.trial(number), int(result[f"m{i}/epoch"])
            # a resumed trial reports its last epoch again, which Optuna already has
            if trial is not None and step not in trial._cached_frozen_trial.intermediate_values:
                trial.report(result[f"m{i}/{self.metric}"], step)
            if result.get(f"m{i}/stopped_early"):
                self.tell(number, TrialState.PRUNED)
            elif f"m{i}/error" in result:
                self.tell(number, TrialState.FAIL)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        result = result or {}
        if not error:
            self.on_trial_result(trial_id, result)
        for i, number in enumerate(self.running.pop(trial_id, [])):
            value = result.get(f"m{i}/{self.metric}")
            self.tell(number, TrialState.FAIL if error or value is None else TrialState.COMPLETE, value)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"running": self.running, "pending": self.pending}, f)

    def restore(self, checkpoint_path: str) -> None:
        """The populations Ray knew at its last snapshot; Optuna trials asked after it, which no Ray trial trains,
        are grouped into populations again and handed out first. Their sampled values stand, and a trial killed
        before it sampled everything samples the rest now."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.running = state["running"]
        known = {n for numbers in self.running.values() for n in numbers}
        orphans: dict[tuple, list[dict[str, Any]]] = {}
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in known:
                entry = self.entry(self.trial(frozen.number))
                orphans.setdefault(tuple(entry[k] for k in self.group), []).append(entry)
        self.pending = [group[i:i + self.size] for group in orphans.values()
                        for i in range(0, len(group), self.size)]
