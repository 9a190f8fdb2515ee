"""TensorBoard: Ray's run per trial (the members' means), and one run per population member beside it."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.logger import TBXLoggerCallback

from tune_mnist.tuning import members

class TrialTensorboard(TBXLoggerCallback):
    """Ray's TensorBoard logger, less the members' own metrics: each member gets a run of its own."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        super().log_trial_result(iteration, trial, members.shared(result))


class MemberTensorboard(tune.Callback):
    """One TensorBoard run per population member, folder/<trial>/m<i>, written when its trial ends (completed or
    failed), in a thread of the driver's, from the trial's result.json: Ray appends every report there, across
    resumes, so a resumed trial's runs hold the epochs it trained before the interruption too."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.writing: ThreadPoolExecutor | None = None  # made when first needed: the Tuner pickles its callbacks

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if len(trial.config.get("members", ())) < 2:  # a lone net's run is Ray's own
            return
        self.writing = self.writing or ThreadPoolExecutor(1)
        self.writing.submit(write_member_runs, Path(trial.local_path) / "result.json",
                            self.folder / Path(trial.path).name)

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.writing:
            self.writing.shutdown(wait=True)
            self.writing = None


def reports(result_file: Path) -> list[dict]:
    """A trial's reports, one per epoch: a report repeated after a resume or a retry replaces the earlier one."""
    by_epoch: dict[float, dict] = {}
    for line in result_file.read_text().splitlines() if result_file.is_file() else []:
        if line.strip():
            report = json.loads(line)
            by_epoch[report.get("epoch", len(by_epoch))] = report
    return [by_epoch[e] for e in sorted(by_epoch)]


def write_member_runs(result_file: Path, folder: Path) -> None:
    """Each member's run, folder/m<i>, one event per epoch. A metric reported at some epochs only (final_train_*
    at the last) is in those epochs' events only; a member's epochs after it stopped are not repeated."""
    from tensorboardX import SummaryWriter
    from tensorboardX.proto.summary_pb2 import Summary

    per_member: dict[int, dict[int, dict[str, float]]] = {}
    for report in reports(result_file):
        for member, metrics in members.decode(report).items():
            values = {k: v for k, v in metrics.items() if isinstance(v, float)}
            if values:
                per_member.setdefault(member, {}).setdefault(int(metrics["epoch"]), {}).update(values)
    for member, steps in per_member.items():
        run = folder / f"m{member}"
        shutil.rmtree(run, ignore_errors=True)
        with SummaryWriter(str(run)) as writer:
            for step, values in sorted(steps.items()):
                summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
                writer.file_writer.add_summary(summary, step)
