"""Run a Tune experiment of a run (or resume it), print one line per finished trial, and give one row per member."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
from ray import tune

from tune_mnist import files, storage
from tune_mnist.data import Mnist
from tune_mnist.errors import UserError
from tune_mnist.tuning import members as report_format
from tune_mnist.tuning.cluster import Resources, trial_slots
from tune_mnist.tuning.tensorboard import MemberTensorboard, TrialTensorboard

# Forced snapshots after each checkpoint are what make resume lose nothing; the warning about them is noise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Ray's own tables and its TensorBoard hint (a driver-side folder, not the run's) give way to Progress's lines
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
RAY_COLUMNS = {"timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "date", "time_this_iter_s",
               "pid", "time_since_restore", "iterations_since_restore", "experiment_tag", "config", "hostname",
               "node_ip"}
FINISHED = ("TERMINATED", "ERROR")
PENDING = "TUNE_MAX_PENDING_TRIALS_PG"  # read by Tune when an experiment starts
STATES = ("state.pt", "search.pt")  # what a trial's checkpoint holds: a population's state, a random search's
KEEP_CHECKPOINTS = 2  # the experiment state saved last can name the checkpoint before the newest: keep it
# Ray's state files, the experiment's first: a restore reads the newest of each
RAY_STATES = ("experiment_state-", "basic-variant-state-", "search_gen_state-", "searcher-state-", "callback-states-")
LOST = "does not exist on storage anymore"  # Ray's error for a trial restored from a checkpoint it had removed


class RayMessages(logging.Filter):
    """Reads Ray Tune's log: notes when it says Ctrl-C interrupted an experiment (Tune returns as if it had
    finished), and drops two messages: metrics it could not read for trials that never started (after Ctrl-C or a
    kill; the rows come from each trial's last report in Ray's experiment state, not from those files), and its
    resume hint (a Python call; tune_mnist prints its own command)."""

    interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        RayMessages.interrupted |= "has been interrupted" in message
        return not ("Failed to fetch metrics" in message or "Resume experiment with: Tuner.restore" in message)


for _name in ("ray.tune.analysis.experiment_analysis", "ray.tune.tune"):
    logging.getLogger(_name).addFilter(RayMessages())


class Interrupted(Exception):
    """Ctrl-C stopped an experiment: its state and finished trials are saved, and --resume continues it."""


class Progress(tune.Callback):
    """One line per finished or failed trial instead of Ray's tables, and, on resume, what was already done."""

    def __init__(self, label: str, metric: str, shown: list[str], total: int | None = None):
        self.label, self.metric, self.shown, self.total, self.started = label, metric, shown, total, False

    def counts(self, trials: list, trial: Any) -> str:
        done = sum(t.status in FINISHED for t in trials if t is not trial) + 1  # this one is not marked yet
        return f"{done}/{self.total or len(trials)}"

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.started:
            self.started = True
            done = sum(t.status in FINISHED for t in trials)
            if done:
                total = self.total or len(trials)
                print(f"[{self.label}] resumed: {done} of {total} trials already done, {total - done} to go", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result, members = trial.last_result or {}, trial.config.get("members", [])
        lone = members[0] if len(members) == 1 else {}  # a population of one: its keys are its trial's
        keys = " ".join(f"{k}={shorten(result.get(k, trial.config.get(k, lone.get(k))))}" for k in self.shown)
        stopped = sum(1 for m in report_format.decode(result).values() if m.get("stopped_early"))
        early = f", {stopped} of {len(members)} members stopped early" if stopped else ""
        print(f"[{self.label}] {self.counts(trials, trial)} done  {keys}  {self.metric}={result.get(self.metric, float('nan')):.4f}"
              f"  ({result.get('time_total_s', 0):.1f}s{early})", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"[{self.label}] {self.counts(trials, trial)} FAILED {trial.trial_id}: see {trial.path}", flush=True)


@contextlib.contextmanager
def pending_trials(count: int | None) -> Iterator[None]:
    """Lets Tune ask a searcher for `count` trials ahead: with a searcher it asks for one at a time, and a second
    trial then waited for the first's worker to be free although the cluster had room for both."""
    if count is None:
        yield
        return
    before = os.environ.get(PENDING)
    os.environ[PENDING] = str(count)
    try:
        yield
    finally:
        if before is None:
            del os.environ[PENDING]
        else:
            os.environ[PENDING] = before


def shorten(value: Any, width: int = 24) -> str:
    """A value for a progress line: a deep net's widths would fill it."""
    text = str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def run(trainable: Callable | type, run_dir: Path, name: str, res: Resources, data: Mnist, *,
        param_space: dict[str, Any] | None = None, metric: str = "val_loss", mode: str = "min",
        num_samples: int = 1, search_alg: Any = None, scheduler: Any = None, shown: list[str] | None = None,
        stop: dict[str, Any] | None = None, time_budget_s: float | None = None, checkpoint_every: int = 0,
        total: int | None = None, callbacks: Sequence[tune.Callback] = (), stop_on_interrupt: bool = False
        ) -> tune.ResultGrid:
    """Runs (or, if the run holds it interrupted, resumes) the Tune experiment `name`, in the run's tune/.

    Finished trials are never rerun on resume; unfinished and errored ones continue from their last checkpoint,
    and the searcher's state comes back with the experiment. `checkpoint_every` is for class trainables
    (function trainables checkpoint when they report); `total` is the trial count the progress lines show.
    Ctrl-C (SIGINT) ends the experiment within seconds, its state saved: Interrupted is raised, after the rows of
    the trials that finished are written to the run's interrupted.csv, unless stop_on_interrupt, where Ctrl-C is
    how the study ends (the random search) and the grid is returned.
    """
    wrapped = tune.with_resources(tune.with_parameters(trainable, data=data),
                                  {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    path = storage.join(res.storage or str(run_dir), "tune", name)

    def restore(**errored: bool) -> tune.Tuner:
        # the search space again: Ray keeps only its keys, and starts an experiment without it if its restore fails
        return tune.Tuner.restore(path, trainable=wrapped, param_space=param_space or {}, resume_unfinished=True,
                                  **errored)

    if restorable(path):
        tuner = restore(resume_errored=True)
    else:
        tuner = tune.Tuner(
            wrapped,
            param_space=param_space or {},
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=num_samples, search_alg=search_alg, scheduler=scheduler,
                max_concurrent_trials=res.max_concurrent or None, reuse_actors=True, time_budget_s=time_budget_s,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=storage.join(res.storage or str(run_dir), "tune"), verbose=0, stop=stop,
                callbacks=[TrialTensorboard(), Progress(name, metric, shown or [], total), *callbacks],
                failure_config=tune.FailureConfig(max_failures=res.max_failures),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=KEEP_CHECKPOINTS, checkpoint_frequency=checkpoint_every,
                    checkpoint_at_end=True if checkpoint_every else None),
            ),
        )
    start, RayMessages.interrupted = time.time(), False
    with pending_trials(max(1, math.ceil(trial_slots(res))) if search_alg else None):
        grid = tuner.fit()
        lost = [r for r in grid if r.error is not None and LOST in str(r.error)]
        if lost and not RayMessages.interrupted:
            print(f"[{name}] {len(lost)} trial(s) resumed from a checkpoint Ray had already removed (its experiment "
                  "state, saved every few seconds, was older than the trial): they train again from the start",
                  flush=True)
            grid = restore(restart_errored=True).fit()
    if RayMessages.interrupted and not stop_on_interrupt:
        # the trials that ended: a report marked done, or an error (the others were stopped mid-training)
        finished = [r for r in grid if r.error is not None or (r.metrics or {}).get("done")]
        if finished:
            files.write_csv(run_dir / "interrupted.csv", member_rows(rows(finished, ["members"])))
        raise Interrupted(f"{name}: {len(finished)} of {len(grid)} trials finished")
    print(f"[{name}] {len(grid)} trials in {time.time() - start:.1f} s", flush=True)
    return grid


def restorable(path: str) -> bool:
    """Whether Ray saved this experiment's state, whole. A kill before its first save leaves only the Tuner; a kill
    while Ray copied its state to storage can leave a state file empty or cut short, from which Ray's restore fails
    and it starts an experiment of one trial without the search space. Either way the experiment starts again."""
    if not tune.Tuner.can_restore(path):
        return False
    fs, root = storage.resolve(path)
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.File]
    saved = any(n.startswith(RAY_STATES[0]) for n in names)
    damaged = damaged_state(fs, root, names) if saved else None
    if damaged:
        print(f"[{Path(root).name}] Ray's saved state {damaged} is damaged (the run was killed while it was "
              "written): this experiment trains again from the start", flush=True)
    if not saved or damaged:
        fs.delete_dir(root)
    return saved and not damaged


def damaged_state(fs: pafs.FileSystem, root: str, names: list[str]) -> str | None:
    """The first of Ray's newest state files (the ones a restore reads) that is empty or cut short: the experiment
    state must parse as JSON, the others are pickles, which end with the STOP opcode."""
    for prefix in RAY_STATES:
        found = sorted(n for n in names if n.startswith(prefix))
        if not found:
            continue
        with fs.open_input_file(f"{root}/{found[-1]}") as f:
            data = f.read()
        try:
            whole = bool(json.loads(data)) if prefix == RAY_STATES[0] else data.endswith(b".")
        except ValueError:
            whole = False
        if not whole:
            return found[-1]
    return None


def check_checkpoints(location: str) -> None:
    """Before a resume, every trial checkpoint of the run (its folder, or its copy in shared storage): one that
    would run code is refused (UserError); a
    damaged one (truncated, unreadable) is removed, with a line saying so, and its trial trains again from the
    start."""
    fs, root = storage.resolve(storage.join(location, "tune"))
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    for info in found:
        if info.type != pafs.FileType.File or info.base_name not in STATES:
            continue
        location = info.path if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{info.path}"
        try:
            storage.read_checkpoint(location)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever a damaged file raises, the trial starts again
            fs.delete_file(info.path)
            trial = Path(info.path).parent.parent.name
            print(f"[resume] {location} is damaged ({type(e).__name__}): {trial} trains again from the start",
                  flush=True)


def rows(grid: Iterable[tune.Result], keep_config: Sequence[str]) -> pd.DataFrame:
    """One row per trial: the chosen config keys, the last reported metrics, error and checkpoint path."""
    out = []
    for result in grid:
        metrics = result.metrics or {}
        row = {key: result.config.get(key) for key in keep_config}
        row.update({k: v for k, v in metrics.items() if k not in RAY_COLUMNS})
        row["seconds"] = row.pop("time_total_s", None)
        row["trial_id"] = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        row["error"] = str(result.error).strip().splitlines()[-1][:300] if result.error else ""
        row["checkpoint"] = storage.checkpoint_location(result.checkpoint) if result.checkpoint else ""
        out.append(row)
    return pd.DataFrame(out)


def member_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Splits each population trial's row into one row per member: its entry of "members" (the config keys that set
    it apart, e.g. p and seed), its metrics, and where its weights are (the trial's checkpoint, at position "member";
    none for a member that stopped early or diverged, whose weights went with it)."""
    out = []
    for row in frame.to_dict("records"):
        shared = {k: v for k, v in report_format.shared(row).items() if k != "members"}
        reported = report_format.decode(row)
        for i, entry in enumerate(row["members"]):
            member = {k: v for k, v in reported.get(i, {}).items() if not (isinstance(v, float) and pd.isna(v))}
            error = member.pop("error", "") or shared["error"]
            stopped = int(member.pop("stopped_early", 0) or 0)
            weights = shared["checkpoint"] if shared["checkpoint"] and not error and not stopped else ""
            out.append({**shared, **entry, **member, "member": i, "stopped_early": stopped, "error": error,
                        "checkpoint": weights})
    return pd.DataFrame(out)


def chunks(runs: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Runs in populations of `size` (the last may be smaller)."""
    return [runs[i:i + size] for i in range(0, len(runs), size)]


def populations(trainable: Callable, run_dir: Path, name: str, res: Resources, data: Mnist,
                space: dict[str, Any], groups: list[list[dict[str, Any]]], keep: Sequence[str],
                shown: Sequence[str], tensorboard: Path, **kwargs: Any) -> pd.DataFrame:
    """Trains each group of runs (each run the config keys that set it apart, e.g. {"p": 0.2, "seed": 1}) as one
    population, a trial (config["members"] holds their keys), at every point of `space`; one row per run.
    `keep` are the config columns of the rows besides the run keys; `shown` the progress line's."""
    space = {**space, "members": tune.grid_search(groups)}
    lone = all(len(g) == 1 for g in groups)
    shown = [k for k in shown if lone or k not in groups[0][0]] + ([] if lone else ["population"])
    grid = run(trainable, run_dir, name, res, data, param_space=space, shown=shown,
               callbacks=[MemberTensorboard(tensorboard)], **kwargs)
    return member_rows(rows(grid, [*keep, "members"]))
