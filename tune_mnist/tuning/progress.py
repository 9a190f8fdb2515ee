"""Where an experiment stands, instead of Ray's tables: a line per finished or failed trial and per net that diverged,
and the trials and nets done of their totals, the time elapsed and an estimate of what is left.

The estimate is the time elapsed over the nets (or, where their total is not known, the trials) finished by this
command, times those still to go; it shows from the first finished trial. In a terminal it is one refreshing line
(tqdm) under the trials' lines; elsewhere (a log, CI, a test) it ends each trial's line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import tune
from tqdm import tqdm

from tune_mnist.tuning import members as report_format

FINISHED = ("TERMINATED", "ERROR")
REFRESH_S = 1.0
SETTINGS = ("lr", "weight_decay")  # a trial's own keys named with a net that diverged, where its entry lacks them


def shorten(value: Any, width: int = 24) -> str:
    """A value for a progress line: a deep net's widths would fill it."""
    text = str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def nets(trial: Any) -> int:
    """The nets a trial trains: its members, or one."""
    return len(trial.config.get("members", ())) or 1


class Progress(tune.Callback):
    """`trials`: the experiment's trial count (None: the trials Tune knows of); `nets`: its net count (None: unknown,
    where a searcher makes trials as it goes and the study does not say)."""

    def __init__(self, label: str, metric: str, shown: Sequence[str], trials: int | None = None,
                 nets: int | None = None):
        self.label, self.metric, self.shown, self.trials, self.nets = label, metric, list(shown), trials, nets
        self.started: float | None = None
        self.before = (0, 0)  # trials and nets done before this command (a resume)
        self.bar: tqdm | None = None
        self.shown_at = 0.0

    def __getstate__(self) -> dict[str, Any]:  # the Tuner pickles its callbacks; a bar holds a stream
        return {**self.__dict__, "bar": None, "started": None}

    def total(self, trials: list) -> int:
        return self.trials or len(trials)

    def counts(self, trials: list, trial: Any = None) -> tuple[int, int]:
        """Trials and nets done (`trial` has just ended: Tune marks it after the callbacks)."""
        done = [t for t in trials if t.status in FINISHED and t is not trial] + ([trial] if trial else [])
        return len(done), sum(nets(t) for t in done)

    def status(self, trials: list, trial: Any = None) -> str:
        done, nets_done = self.counts(trials, trial)
        total = self.total(trials)
        text = f"trials {done}/{total}"
        if self.nets is not None and self.nets != total:
            text += f", nets {nets_done}/{self.nets}"
        elif self.nets is None and nets_done != done:
            text += f", nets {nets_done}"
        elapsed = time.time() - self.started
        text += f", {tqdm.format_interval(elapsed)} elapsed"
        left, finished_now = ((self.nets - nets_done, nets_done - self.before[1]) if self.nets is not None
                              else (total - done, done - self.before[0]))
        if finished_now > 0:
            text += f", ~{tqdm.format_interval(elapsed * max(left, 0) / finished_now)} left"
        return text

    def say(self, line: str, trials: list, trial: Any = None) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
            self.refresh(trials, trial)
        else:
            print(f"{line}  | {self.status(trials, trial)}" if trial else line, flush=True)

    def refresh(self, trials: list, trial: Any = None) -> None:
        self.bar.set_description_str(f"[{self.label}] {self.status(trials, trial)}")
        self.shown_at = time.time()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.started is None:
            self.started = time.time()
            self.before = self.counts(trials)
            if self.before[0]:
                total = self.total(trials)
                print(f"[{self.label}] resumed: {self.before[0]} of {total} trials already done, "
                      f"{total - self.before[0]} to go", flush=True)
            if sys.stdout.isatty():
                self.bar = tqdm(file=sys.stdout, bar_format="{desc}", dynamic_ncols=True)
                self.refresh(trials)
        elif self.bar is not None and time.time() - self.shown_at >= REFRESH_S:
            self.refresh(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result, entries = trial.last_result or {}, trial.config.get("members", [])
        lone = entries[0] if len(entries) == 1 else {}  # a population of one: its keys are its trial's
        keys = " ".join(f"{k}={shorten(result.get(k, trial.config.get(k, lone.get(k))))}" for k in self.shown)
        reported = report_format.decode(result)
        stopped = sum(1 for m in reported.values() if m.get("stopped_early"))
        early = f", {stopped} of {len(entries)} members stopped early" if stopped else ""
        for i, m in sorted(reported.items()):
            if "error" in m and i < len(entries):
                self.say(f"[{self.label}] a net diverged: {settings(trial.config, entries[i])} ({m['error']}); "
                         "it is recorded with its error and the others go on", trials)
        parts = [f"[{self.label}] {self.counts(trials, trial)[0]}/{self.total(trials)} done", keys,
                 f"{self.metric}={result.get(self.metric, float('nan')):.4f}",
                 f"({result.get('time_total_s', 0):.1f}s{early})"]
        self.say("  ".join(p for p in parts if p), trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:  # the driver's copy: the one in storage comes with the next sync
            error = Path(trial.error_file).read_text().strip().splitlines()[-1]
        except (OSError, TypeError, IndexError):
            error = ""
        entries = trial.config.get("members", [])
        named = "; ".join(settings(trial.config, e) for e in entries[:4]) + ("; ..." if len(entries) > 4 else "")
        self.say(f"[{self.label}] {self.counts(trials, trial)[0]}/{self.total(trials)} FAILED {trial.trial_id}"
                 + (f" ({named})" if named else "") + f": {error + '; ' if error else ''}see {trial.path}",
                 trials, trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.bar is not None:
            self.refresh(trials)
            self.bar.close()
            self.bar = None


def settings(config: dict[str, Any], entry: dict[str, Any]) -> str:
    """A net's settings for a line: its entry, and its trial's learning rate and weight decay where the entry lacks
    them."""
    named = {**{k: config[k] for k in SETTINGS if k in config}, **entry}
    return " ".join(f"{k}={shorten(v)}" for k, v in named.items())
