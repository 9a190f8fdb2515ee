"""TensorBoard: Ray's run per trial (the members' means), and one run per net beside it, with its HParams entry.

Each net's run holds its metrics per epoch and an HParams session (its settings: its entry of the trial's
"members", flattened, and the trial's config keys the study names), so that TensorBoard's HParams dashboard shows
one row per net, its metrics the last value of each scalar (val/test loss and accuracy, epochs_trained,
stopped_early, diverged). No run writes an HParams experiment summary: TensorBoard then builds the dashboard's
columns from every net's session, across the experiments of a run.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.logger import TBXLoggerCallback

from tune_mnist.tuning import members


class TrialTensorboard(TBXLoggerCallback):
    """Ray's TensorBoard logger, less the members' own metrics (each net gets a run of its own) and, for a trial of
    members, less Ray's HParams entry: its config is a population's, and its experiment summary would hide the
    nets' sessions from the dashboard."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        super().log_trial_result(iteration, trial, members.shared(result))

    def _try_log_hparams(self, trial: Any, result: dict) -> None:
        if "members" not in trial.config:
            super()._try_log_hparams(trial, result)


class MemberTensorboard(tune.Callback):
    """One TensorBoard run per net of a trial, folder/<trial>/m<i>, written when its trial ends (completed or failed),
    in a thread of the driver's, from the trial's result.json: Ray appends every report there, across resumes, so a
    resumed trial's runs hold the epochs it trained before the interruption too. `hparams`: the trial's config keys
    that join each net's own settings in its HParams entry (those that set the study's trials apart)."""

    def __init__(self, folder: Path, hparams: Sequence[str] = ()):
        self.folder, self.hparams = folder, list(hparams)
        self.writing: ThreadPoolExecutor | None = None  # made when first needed: the Tuner pickles its callbacks

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if "members" not in trial.config:
            return
        shared = {k: trial.config[k] for k in self.hparams if k in trial.config}
        settings = [flatten({**shared, **entry}) for entry in trial.config["members"]]
        self.writing = self.writing or ThreadPoolExecutor(1)
        self.writing.submit(write_member_runs, Path(trial.local_path) / "result.json",
                            self.folder / Path(trial.path).name, settings)

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.writing:
            self.writing.shutdown(wait=True)
            self.writing = None


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str | float | int | bool]:
    """A net's settings as HParams values: nested keys joined by "/", lists as text ("128-64"), None left out."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (list, tuple)):
            out[prefix + key] = "-".join(map(str, value))
        elif value is not None:
            out[prefix + key] = value
    return out


def reports(result_file: Path) -> list[dict]:
    """A trial's reports, one per epoch: a report repeated after a resume or a retry replaces the earlier one."""
    by_epoch: dict[float, dict] = {}
    for line in result_file.read_text().splitlines() if result_file.is_file() else []:
        if line.strip():
            report = json.loads(line)
            by_epoch[report.get("epoch", len(by_epoch))] = report
    return [by_epoch[e] for e in sorted(by_epoch)]


def write_member_runs(result_file: Path, folder: Path, settings: Sequence[Mapping[str, Any]] = ()) -> None:
    """Each member's run, folder/m<i>: its HParams session (settings[i], where given), one event per epoch, and at
    its last epoch epochs_trained, stopped_early and diverged. A metric reported at some epochs only
    (final_train_* at the last) is in those epochs' events only; a member's epochs after it stopped are not
    repeated."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import summary_v2 as hparams
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    per_member: dict[int, dict[int, dict[str, float]]] = {}
    ended: dict[int, dict[str, float]] = {}
    for report in reports(result_file):
        for member, metrics in members.decode(report).items():
            values = {k: v for k, v in metrics.items() if isinstance(v, float)}
            if values:
                per_member.setdefault(member, {}).setdefault(int(metrics["epoch"]), {}).update(values)
            ended[member] = {"epochs_trained": float(metrics["epoch"]),
                             "stopped_early": float(bool(metrics.get("stopped_early"))),
                             "diverged": float("error" in metrics)}
    for member, steps in per_member.items():
        run = folder / f"m{member}"
        shutil.rmtree(run, ignore_errors=True)
        steps[max(steps)].update(ended[member])
        writer = EventFileWriter(str(run))
        if member < len(settings):
            group = f"{folder.parent.name}/{folder.name}/m{member}"  # one row per net, whatever nets share settings
            session = hparams.hparams_pb(dict(settings[member]), trial_id=group)
            writer.add_event(Event(wall_time=time.time(), step=0, summary=session))
        for step, values in sorted(steps.items()):
            summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
            writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        writer.close()
