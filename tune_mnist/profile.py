"""--profile: where a command's wall time went, printed as a table at its end and written to profile.csv.

The rows follow one another in time, so they add up to the command's wall time from its process's start: the
command's own phases (cli.py marks them on a Clock), and within the study's run, per Tune experiment, its trials'
time split by phase and the driver's time when no trial ran.

A trial's span runs from the later of its experiment's start, its worker process's start and the previous trial's
end on the same worker, to its last report; the keys its reports share (TRIAL_KEYS, from tuning/trial.py and
train.Timing) split it into phases. Trials run at once, so an experiment's trial rows are its trials' summed
phases scaled by the time some trial ran (the union of their spans) over the spans' sum, which is how many ran at
once on average; the rest of the experiment's wall time is the driver's row. tuning/runner.py keeps each
experiment's times in ended/<experiment>/timing.json, so a finished run's experiments can be broken down afterwards.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tune_mnist.files import write_csv, write_json

TIMING = "timing.json"  # an experiment's times, in the run folder's ended/<experiment>/ (runner.ENDED)
FILE = "profile.csv"
# What a trial's reports share about its time (seconds, or Unix times for *_at), and what Ray adds to each report
TRIAL_KEYS = ("worker_started_at", "entered_at", "first_epoch_at", "warmup_seconds", "train_seconds", "eval_seconds",
              "report_seconds", "reported_at")
RAY_KEYS = ("pid", "node_ip", "timestamp")
STUDY = "the study's run"  # the Clock's phase that `breakdown` splits into the experiments and what lies around them

# The rows, and what each measures (printed under the table)
STARTUP = "start-up: Python, imports"
NOTES = {
    STARTUP: "from the process's start (Linux's /proc; elsewhere from main) to the command's main",
    "settings and checks": "parsing, the settings built and checked, a resume's checks",
    "data load": "MNIST read and split",
    "the study's prepare": "the study's work before Ray (compiles started ahead: those it leaves running overlap "
                           "Ray's start, and what is left of them is waited for in the study's code)",
    "Ray start or join": "ray.init and the check that a trial fits",
    "run folder": "run.json written, the run folder locked",
    "study code before and between experiments": "the study's own work outside its experiments (searchers, "
                                                 "estimates, configurations chosen, tables)",
    "worker start, actor reuse": "trials: from the start of their span to the trial body: a new worker's start "
                                 "and imports, or an actor's reuse, the data fetched",
    "set-up to the first epoch": "trials: the device taken, the population built, data to the device, a checkpoint "
                                 "loaded",
    "warm-up (compiles)": "trials: the first training pass's and first evaluation's extra over the median of the "
                          "later ones: Triton compiles, CUDA graph capture, cold caches (0 for a trial of one "
                          "epoch; more than the compiles where halving thins the population)",
    "training": "trials: the training passes, less the warm-up",
    "evaluation": "trials: val and test after each evaluated epoch, the training split after the last, "
                  "transplant's swaps; less the warm-up",
    "checkpoints, reports": "trials: checkpoints saved and reports handed to Tune, which waits for its driver to "
                            "take each (a busy driver or searcher shows here); not the last report's hand-over",
    "rest of the trials": "trials: their spans less the rows above (halving, metrics; all of a trial that reports "
                          "no timings, as random's searches, its worker's start included)",
    "driver, no trial running": "the experiment's wall time when none of its trials ran: Tune's start and end, "
                                "scheduling, the last report's hand-over, results and experiment state written "
                                "(and the time of trials that never reported, in an interrupted experiment)",
    "after the last experiment": "the study's tables, figures and REPORT.md",
    "upload, summary line": "the copy to --storage, the summary line",
    "Ray shutdown": "ray.shutdown (without --profile it runs as the process exits)",
}
TRIAL_PHASES = ("worker start, actor reuse", "set-up to the first epoch", "warm-up (compiles)", "training",
                "evaluation", "checkpoints, reports", "rest of the trials")


def process_started_at() -> float | None:
    """The Unix time this process started, from Linux's /proc (to 10 ms); None where there is no /proc."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


class Clock:
    """The command's phases, one after another from the process's start: mark(name) ends the phase going on."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float, float]] = []  # (name, start, end), Unix times
        self.last = process_started_at() or time.time()
        self.mark(STARTUP)

    def mark(self, name: str) -> None:
        now = time.time()
        self.phases.append((name, self.last, now))
        self.last = now


@dataclass
class Row:
    experiment: str                    # "" for the command's own phases
    phase: str
    seconds: float                     # wall time: the rows add up to the command's
    trial_seconds: float | None = None  # a trial row's phase summed over the experiment's trials
    trials: int | None = None           # trials of the experiment that ran in this command


def save_experiment(folder: Path, started: float, results: Iterable[Mapping[str, Any]]) -> None:
    """An experiment's times into folder/timing.json: its start and end (now), and each trial's TRIAL_KEYS and
    RAY_KEYS from its last report."""
    trials = [{k: r[k] for k in (*TRIAL_KEYS, *RAY_KEYS) if k in r} for r in results]
    write_json(Path(folder) / TIMING, {"started_at": started, "ended_at": time.time(), "trials": trials})


def experiments(run_dir: Path, since: float, until: float) -> dict[str, dict[str, Any]]:
    """The experiments of the run that ran between these times, by name, in the order they ran."""
    found = {}
    for path in Path(run_dir).glob(f"ended/*/{TIMING}"):
        timing = json.loads(path.read_text())
        if since <= timing["started_at"] and timing["ended_at"] <= until:
            found[path.parent.name] = timing
    return dict(sorted(found.items(), key=lambda item: item[1]["started_at"]))


def span_end(trial: Mapping[str, Any]) -> float:
    return trial.get("reported_at", trial.get("timestamp", 0.0))


def experiment_rows(name: str, timing: Mapping[str, Any]) -> list[Row]:
    """One experiment's rows: each trial phase (wall time and summed over trials), then the driver's."""
    start, end = timing["started_at"], timing["ended_at"]
    trials = sorted((t for t in timing["trials"] if span_end(t) >= start), key=span_end)
    summed = dict.fromkeys(TRIAL_PHASES, 0.0)
    spans, worker_free = [], {}
    for t in trials:
        worker = (t.get("node_ip"), t.get("pid"))
        itemised = "first_epoch_at" in t
        began = max(start, t.get("worker_started_at", start), worker_free.get(worker, start))
        worker_free[worker] = span_end(t)
        spans.append((began, span_end(t)))
        parts = ({"worker start, actor reuse": t["entered_at"] - began,
                  "set-up to the first epoch": t["first_epoch_at"] - t["entered_at"],
                  "warm-up (compiles)": t["warmup_seconds"],
                  "training": t["train_seconds"], "evaluation": t["eval_seconds"],
                  "checkpoints, reports": t["report_seconds"]} if itemised else {})
        parts["rest of the trials"] = span_end(t) - began - sum(parts.values())
        for phase, seconds in parts.items():
            summed[phase] += seconds
    busy = union(spans)
    scale = busy / sum(b - a for a, b in spans) if spans and busy else 0.0
    rows = [Row(name, phase, seconds * scale, seconds, len(trials)) for phase, seconds in summed.items()]
    return rows + [Row(name, "driver, no trial running", end - start - busy, None, len(trials))]


def union(spans: list[tuple[float, float]]) -> float:
    """The length of the union of intervals."""
    total, reached = 0.0, float("-inf")
    for a, b in sorted(spans):
        total += max(0.0, b - max(a, reached))
        reached = max(reached, b)
    return total


def breakdown(clock: Clock, run_dir: Path) -> list[Row]:
    """The command's rows: the clock's phases, its STUDY phase split into the experiments that ran in it (from
    their timing.json) and the study's code around them."""
    rows = []
    for phase, start, end in clock.phases:
        if phase != STUDY:
            rows.append(Row("", phase, end - start))
            continue
        ran = experiments(run_dir, start, end)
        walls = sum(t["ended_at"] - t["started_at"] for t in ran.values())
        after = end - list(ran.values())[-1]["ended_at"] if ran else 0.0
        rows.append(Row("", "study code before and between experiments", end - start - walls - after))
        for name, timing in ran.items():
            rows += experiment_rows(name, timing)
        rows.append(Row("", "after the last experiment", after))
    return rows


def table(rows: list[Row], title: str) -> str:
    """The rows as the command prints them: each experiment's under a line with its wall time, trials and how many
    ran at once; the total; what each row measures."""
    total = sum(r.seconds for r in rows)
    lines = [title, f"{'phase':<48}{'wall s':>10}{'share':>8}{'trials, summed s':>18}"]
    shown = None
    for r in rows:
        if r.experiment != shown and r.experiment:
            mine = [x for x in rows if x.experiment == r.experiment]
            busy = sum(x.seconds for x in mine if x.trial_seconds is not None)
            summed = sum(x.trial_seconds for x in mine if x.trial_seconds is not None)
            lines.append(f"experiment {r.experiment}: {sum(x.seconds for x in mine):.1f} s wall, {r.trials} trials, "
                         f"{summed / busy if busy else 0:.1f} at once")
        shown = r.experiment
        label = f"  {r.phase}" if r.experiment else r.phase
        summed = f"{r.trial_seconds:18.2f}" if r.trial_seconds is not None else ""
        lines.append(f"{label:<48}{r.seconds:10.2f}{r.seconds / total if total else 0:8.1%}{summed}")
    lines.append(f"{'total':<48}{total:10.2f}{1:8.1%}")
    lines.append("what each row measures:")
    lines += [f"  {phase}: {note}" for phase, note in NOTES.items() if any(r.phase == phase for r in rows)]
    return "\n".join(lines)


def report(clock: Clock, run_dir: Path, title: str) -> str:
    """The command's breakdown: written to run_dir/profile.csv, returned as the printed table."""
    import pandas as pd

    rows = breakdown(clock, run_dir)
    write_csv(Path(run_dir) / FILE, pd.DataFrame([asdict(r) for r in rows]))
    return table(rows, title)
