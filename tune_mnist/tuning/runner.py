"""Run a Tune experiment of a run (or resume it), and give one row per member; check a run folder before a resume."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
from ray import tune

from tune_mnist import files, profile, storage
from tune_mnist.data import Mnist
from tune_mnist.errors import UserError
from tune_mnist.tuning import members as report_format
from tune_mnist.tuning.cluster import Resources, trial_slots
from tune_mnist.tuning.progress import Progress
from tune_mnist.tuning.tensorboard import MemberTensorboard, TrialTensorboard

# Forced snapshots after each checkpoint are what make resume lose nothing; the warning about them is noise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Ray's own tables and its TensorBoard hint (a driver-side folder, not the run's) give way to Progress's lines
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
RAY_COLUMNS = {"timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "date", "time_this_iter_s",
               "pid", "time_since_restore", "iterations_since_restore", "experiment_tag", "config", "hostname",
               "node_ip"}
PENDING = "TUNE_MAX_PENDING_TRIALS_PG"  # read by Tune when an experiment starts
STATES = ("state.pt", "search.pt")  # what a trial's checkpoint holds: a population's state, a random search's
KEEP_CHECKPOINTS = 2  # the experiment state saved last can name the checkpoint before the newest: keep it
# Ray's state files, the experiment's first: a restore reads the newest of each
RAY_STATES = ("experiment_state-", "basic-variant-state-", "search_gen_state-", "callback-states-")
ENDED = "ended"  # the run folder's record of ended experiments: <experiment>/rows.csv (interrupted.csv lists them)
# and <experiment>/timing.json (profile.py); beside tune/, which may be on --storage
LOST = "does not exist on storage anymore"  # Ray's error for a trial restored from a checkpoint it had removed


class RayMessages(logging.Filter):
    """Reads Ray Tune's log while one experiment runs: notes when it says Ctrl-C interrupted the experiment (Tune
    returns as if it had finished), and drops what Progress says in a line or tune_mnist says itself: metrics it
    could not read for trials that never started (after Ctrl-C or a kill; the rows come from each trial's last
    report in Ray's experiment state, not from those files), a failed trial's traceback (its error.txt holds it),
    the list of failed trials, and its resume hint (a Python call; tune_mnist prints its own command)."""

    LOGGERS = ("ray.tune.analysis.experiment_analysis", "ray.tune.tune", "ray.tune.execution.tune_controller")
    DROPPED = ("Failed to fetch metrics", "Resume experiment with: Tuner.restore", "Trial task failed for trial",
               "Trials did not complete")

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        self.interrupted |= "has been interrupted" in message
        return not any(dropped in message for dropped in self.DROPPED)

    def __enter__(self) -> RayMessages:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


class Interrupted(Exception):
    """Ctrl-C stopped an experiment: its state and finished trials are saved, and --resume continues it."""


class Failed(UserError):
    """Every trial of an experiment failed (every net diverged, say): the study has nothing to answer from. The
    command ends with its one line and exit code 1; the failures stay in the run folder."""


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


def run(trainable: Callable | type, run_dir: Path, name: str, res: Resources, data: Mnist, *,
        param_space: dict[str, Any] | None = None, metric: str = "val_loss", mode: str = "min",
        num_samples: int = 1, search_alg: Any = None, scheduler: Any = None, shown: list[str] | None = None,
        stop: dict[str, Any] | None = None, time_budget_s: float | None = None, checkpoint_every: int = 0,
        total: int | None = None, nets: int | None = None, callbacks: Sequence[tune.Callback] = (),
        tensorboard: Path | None = None, hparams: Sequence[str] = (), prune: bool = False,
        stop_on_interrupt: bool = False) -> tune.ResultGrid:
    """Runs (or, if the run holds it interrupted, resumes) the Tune experiment `name`, in the run's tune/.

    Finished trials are never rerun on resume; unfinished and errored ones continue from their last checkpoint,
    and the searcher's state comes back with the experiment, once the run folder is found trusted
    (`check_trusted`). `checkpoint_every` is for class trainables (function trainables checkpoint when they
    report). `total` and `nets` are the trial and net counts the progress shows, where a searcher makes the
    trials (a grid's are counted from `param_space`). `tensorboard`: the folder of the nets' own TensorBoard runs,
    each with an HParams entry of its settings and of the trial's config keys `hparams`. Once the experiment has
    ended, a finished trial keeps its last checkpoint only, and none where `prune` says that nothing reads them
    then (not a resume, not an export). Ctrl-C (SIGINT) ends the experiment within seconds, its state saved:
    Interrupted is raised, after the rows of the trials that finished, in this experiment and in those of the run
    that ended before it, are written to the run's interrupted.csv, unless stop_on_interrupt, where Ctrl-C is how
    the study ends (the random search) and the grid is returned. Failed (a UserError) if every trial failed.
    """
    started = time.time()
    space = param_space or {}
    wrapped = tune.with_resources(tune.with_parameters(trainable, data=data),
                                  {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    path = storage.join(res.storage or str(run_dir), "tune", name)

    def restore(**errored: bool) -> tune.Tuner:
        # the search space again: Ray keeps only its keys, and starts an experiment without it if its restore fails
        return tune.Tuner.restore(path, trainable=wrapped, param_space=space, resume_unfinished=True, **errored)

    if tune.Tuner.can_restore(path):
        check_trusted(res.storage or str(run_dir))
    if restorable(path):
        tuner = restore(resume_errored=True)
    else:
        trials, grid_nets = (None, None) if search_alg else grid_size(space, num_samples)
        progress = Progress(name, metric, shown or [], total or trials, nets or grid_nets)
        extra = [MemberTensorboard(tensorboard, hparams)] if tensorboard else []
        tuner = tune.Tuner(
            wrapped,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=num_samples, search_alg=search_alg, scheduler=scheduler,
                max_concurrent_trials=res.max_concurrent or None, reuse_actors=True, time_budget_s=time_budget_s,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=storage.join(res.storage or str(run_dir), "tune"), verbose=0, stop=stop,
                callbacks=[TrialTensorboard(), progress, *extra, *callbacks],
                failure_config=tune.FailureConfig(max_failures=res.max_failures),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=KEEP_CHECKPOINTS, checkpoint_frequency=checkpoint_every,
                    checkpoint_at_end=True if checkpoint_every else None),
            ),
        )
    with pending_trials(max(1, math.ceil(trial_slots(res))) if search_alg else None), RayMessages() as ray_log:
        grid = tuner.fit()
        lost = [r for r in grid if r.error is not None and LOST in str(r.error)]
        if lost and not ray_log.interrupted:
            print(f"[{name}] {len(lost)} trial(s) resumed from a checkpoint Ray had already removed (its experiment "
                  "state, saved every few seconds, was older than the trial): they train again from the start",
                  flush=True)
            grid = restore(restart_errored=True).fit()
    ended = run_dir / ENDED / name / "rows.csv"
    profile.save_experiment(ended.parent, started, [r.metrics for r in grid if r.metrics])
    if ray_log.interrupted and not stop_on_interrupt:
        # the trials that ended: a report marked done, or an error (the others were stopped mid-training)
        finished = [r for r in grid if r.error is not None or (r.metrics or {}).get("done")]
        frames = [files.read_table(f) for f in sorted((run_dir / ENDED).glob("*/rows.csv")) if f != ended]
        frames += [experiment_rows(name, finished)] if finished else []
        if frames:
            files.write_csv(run_dir / "interrupted.csv", pd.concat(frames, ignore_index=True))
        raise Interrupted(f"{name}: {len(finished)} of {len(grid)} trials finished")
    failed = [r for r in grid if r.error is not None]
    if failed and len(failed) == len(grid):
        raise Failed(f"every trial of {name} failed ({len(failed)}), the first with {last_line(failed[0].error)} "
                     f"(see {failed[0].path})")
    if not ray_log.interrupted:
        prune_checkpoints(grid, keep_last=not prune)
        files.write_csv(ended, experiment_rows(name, list(grid)))
    print(f"[{name}] {len(grid)} trials in {time.time() - started:.1f} s", flush=True)
    return grid


def grid_size(space: dict[str, Any], num_samples: int) -> tuple[int, int | None]:
    """A grid search's trials and nets: every point of the grid, num_samples times, each trial's nets its members
    (None where the trials have no members)."""
    grids = {k: v["grid_search"] for k, v in space.items() if isinstance(v, dict) and "grid_search" in v}
    points = num_samples * math.prod(len(v) for k, v in grids.items() if k != "members")
    if "members" in grids:
        return points * len(grids["members"]), points * sum(map(len, grids["members"]))
    return points, points * len(space["members"]) if "members" in space else None


def experiment_rows(name: str, results: Sequence[tune.Result]) -> pd.DataFrame:
    """An experiment's rows for interrupted.csv: one per member (one per trial where the trials have no members, as
    random's searches), with the experiment's name."""
    frame = rows(results, ["members"])
    members = frame.get("members", pd.Series(dtype=object))
    split = member_rows(frame) if members.notna().all() else frame.drop(columns="members")
    return split.assign(experiment=name)


def last_line(error: Any) -> str:
    """A trial's error in a line: its exception's."""
    return str(error).strip().splitlines()[-1][:300] if str(error).strip() else type(error).__name__


def prune_checkpoints(grid: tune.ResultGrid, keep_last: bool) -> None:
    """Deletes the checkpoints of the trials that finished, all but the last where keep_last (the one before it was
    kept while the trial ran, in case Ray's state, saved every few seconds, still named it); the rows then name the
    last or no checkpoint. A failed trial keeps its own: a resume retries it from there."""
    for result in grid:
        if result.error is not None:
            continue
        kept = result.checkpoint.path.rstrip("/") if keep_last and result.checkpoint else None
        fs = result.filesystem
        for info in fs.get_file_info(pafs.FileSelector(result.path, allow_not_found=True)):
            if (info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_")
                    and info.path.rstrip("/") != kept):
                fs.delete_dir(info.path)
        result.best_checkpoints = [(c, m) for c, m in result.best_checkpoints or [] if c.path.rstrip("/") == kept]
        result.checkpoint = result.checkpoint if kept else None


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


def check_trusted(location: str) -> None:
    """Ray's saved state in a run folder holds pickles that a resume unpickles (tuner.pkl, the experiment's and the
    searcher's state, a failed trial's error), running any code put in them: a resume reads them only from a run
    folder of this user that no one else can write, as ssh treats its keys. Every folder and file of the run
    folder (or of its shared copy, where that is a folder) is checked; a bucket's trust is its access control.
    UserError, one line, before anything is read."""
    fs, root = storage.resolve(location)
    if not isinstance(fs, pafs.LocalFileSystem) or not os.path.isdir(root):
        return
    refuse_untrusted(root, root)
    for folder, names, file_names in os.walk(root):
        for name in [*names, *file_names]:
            refuse_untrusted(root, os.path.join(folder, name))


def refuse_untrusted(root: str, path: str) -> None:
    """UserError if `path` is a link, another user's, or writable by its group or others."""
    info = os.lstat(path)
    why = ("is a symbolic link" if stat.S_ISLNK(info.st_mode) else
           f"belongs to uid {info.st_uid}, not to you (uid {os.getuid()})" if info.st_uid != os.getuid() else
           "can be written by others than its owner" if info.st_mode & 0o022 else "")
    if why:
        raise UserError(f"refusing to resume {root}: {path} {why}, and a resume unpickles Ray's state there, which "
                        "runs any code put in it (if you trust the folder: chmod -R go-w, or chown, it)")


def check_checkpoints(location: str) -> None:
    """Before a resume, the run folder (or its copy in shared storage) is checked (`check_trusted`), then every trial
    checkpoint in it: one that would run code is refused (UserError); a damaged one (truncated, unreadable)
    is removed, with a line saying so, and its trial trains again from the start, unless its trial had finished,
    which a resume does not train again: then the resume is refused, and the folder left as it was."""
    check_trusted(location)
    fs, root = storage.resolve(storage.join(location, "tune"))
    damaged = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File or info.base_name not in STATES:
            continue
        where = info.path if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{info.path}"
        try:
            storage.read_checkpoint(where)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever a damaged file raises, the trial starts again
            damaged.append((PurePosixPath(info.path), where, type(e).__name__))
    for path, where, error in damaged:
        trial = path.parent.parent
        if trial.name.removeprefix("trial_") in finished_trials(fs, str(trial.parent)):
            raise UserError(f"{where} is damaged ({error}) and its trial had finished: a resume does not train it "
                            "again; put the file back from a copy, or run the study again")
    for path, where, error in damaged:
        fs.delete_file(str(path))
        print(f"[resume] {where} is damaged ({error}): {path.parent.parent.name} trains again from the start",
              flush=True)


def finished_trials(fs: pafs.FileSystem, root: str) -> set[str]:
    """The trials an experiment's newest saved state marks finished, read as plain JSON (its pickled parts stay
    text)."""
    names = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                   if i.base_name.startswith(RAY_STATES[0]))
    if not names:
        return set()
    with fs.open_input_file(names[-1]) as f:
        try:
            states = [json.loads(trial[0]) for trial in json.loads(f.read())["trial_data"]]
        except (ValueError, KeyError, TypeError, IndexError):
            return set()
    return {state.get("trial_id") for state in states if state.get("status") == "TERMINATED"}


def rows(grid: Iterable[tune.Result], keep_config: Sequence[str]) -> pd.DataFrame:
    """One row per trial: the chosen config keys, the last reported metrics, error and checkpoint path."""
    out = []
    for result in grid:
        metrics = result.metrics or {}
        row = {key: result.config.get(key) for key in keep_config}
        row.update({k: v for k, v in metrics.items() if k not in RAY_COLUMNS})
        row["seconds"] = row.pop("time_total_s", None)
        row["trial_id"] = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        row["error"] = last_line(result.error) if result.error else ""
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
        if not isinstance(row["members"], list):  # a trial of one net, not a population
            out.append(shared)
            continue
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
    `keep` are the config columns of the rows besides the run keys, and join each net's HParams entry; `shown` the
    progress line's. `kwargs` go to `run` (metric, prune, ...)."""
    space = {**space, "members": tune.grid_search(groups)}
    lone = all(len(g) == 1 for g in groups)
    shown = [k for k in shown if lone or k not in groups[0][0]] + ([] if lone else ["population"])
    grid = run(trainable, run_dir, name, res, data, param_space=space, shown=shown, tensorboard=tensorboard,
               hparams=keep, **kwargs)
    return member_rows(rows(grid, [*keep, "members"]))
