"""The one Ray Tune driver: connect to Ray, run a Tuner (or restore it), collect one row per trial.

Trials are plain functions of `config` (Ray Tune's own style). `train_in_trial` is the body most of
them share: pick the device Ray gave the trial, resume from the trial's last epoch checkpoint, train,
and report every epoch with a checkpoint holding the weights and the optimizer.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import torch
from ray import tune
from ray.tune.logger import TBXLoggerCallback

# Forced snapshots after each checkpoint are what make resume lose nothing; the warning about them is noise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
MEMBER_METRIC = re.compile(r"m\d+/")  # a population member's metric in a trial's report, e.g. "m3/test_acc"
RAY_COLUMNS = {"timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "date", "time_this_iter_s",
               "pid", "time_since_restore", "iterations_since_restore", "experiment_tag", "config"}

from tune_mnist import models, population, storage
from tune_mnist.data import Mnist, to_device
from tune_mnist.errors import UserError
from tune_mnist.train import TrainConfig, fit, make_optimizer, use_tf32


class Progress(tune.Callback):
    """One line per finished or failed trial, instead of Ray's full tables."""

    def __init__(self, label: str, metric: str, shown: list[str], total: int | None = None):
        self.label, self.metric, self.shown, self.total, self.done = label, metric, shown, total, 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        result = trial.last_result or {}
        keys = " ".join(f"{k}={result.get(k, trial.config.get(k))}" for k in self.shown)
        print(f"[{self.label}] {self.done}/{self.total or len(trials)} done  {keys}  {self.metric}={result.get(self.metric, float('nan')):.4f}"
              f"  ({result.get('time_total_s', 0):.1f}s)", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        print(f"[{self.label}] {self.done}/{self.total or len(trials)} FAILED {trial.trial_id}: see {trial.path}", flush=True)


class TrialTensorboard(TBXLoggerCallback):
    """Ray's TensorBoard logger, less a population's per-member metrics: each member gets a run of its own
    (MemberTensorboard). A trial waits while the driver logs its report: with 40 members' 460 scalars a
    report took 35-52 ms in a trial on an H100's host, and tensorboardX takes about 56 us a scalar."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if not MEMBER_METRIC.match(k)})


@dataclass
class Resources:
    address: str = "local"         # "local" starts Ray here; "auto" or "ray://host:port" joins a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: GPU_SHARE if the cluster has GPUs, else 0; 0.25 packs four
    max_concurrent: int = 0        # 0: as many as the resources allow
    max_failures: int = 0          # retries of a trial that raised
    storage: str = ""              # this run's folder in shared storage (storage.py); "": the run folder


def _probe(address: str) -> None:
    """Fails fast on a host:port nobody listens on; ray.init would retry for ~20 s, logging all the while."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(f"cannot reach a Ray cluster at --address {address}: {e.strerror or e}") from None


# Separate processes on one GPU are time-sliced, so packing gains little once steps are CUDA graphs:
# benchmarks/trials.py measured 2 trials per GPU as the best (1.14x one), 4 and 8 no better than one.
GPU_SHARE = 0.5


CLIENT_ATTEMPTS = 4


def connect(res: Resources) -> Resources:
    """Starts or joins Ray, settles the GPU share per trial, and checks the cluster can hold one trial."""
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        _probe(res.address)
        for attempt in range(CLIENT_ATTEMPTS):
            try:
                ray.init(address=res.address, include_dashboard=False, configure_logging=False,
                         log_to_driver=res.address.startswith("ray://"))  # a Ray Client run prints on the cluster
                break
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                # Ray Client's per-connection server fails to start on a head that has only just come
                # up (its runtime-env agent is not ready yet); a few seconds later it starts.
                if "Initialization failure from server" in first and attempt + 1 < CLIENT_ATTEMPTS:
                    time.sleep(5)
                    continue
                raise UserError(f"cannot reach a Ray cluster at --address {res.address}: {first}") from None
    have = ray.cluster_resources()
    if res.gpus_per_trial is None:
        res = dataclasses.replace(res, gpus_per_trial=GPU_SHARE if have.get("GPU", 0) else 0.0)
    for kind, need in (("GPU", res.gpus_per_trial), ("CPU", res.cpus_per_trial)):
        if need > have.get(kind, 0):
            raise UserError(f"a trial asks for {need:g} {kind} but the Ray cluster has {have.get(kind, 0):g}")
    return res


def trial_slots(res: Resources) -> float:
    """How many trials the connected cluster holds at once: the scarcest resource decides (ray#28292)."""
    have = ray.cluster_resources()
    slots = have.get("CPU", 0) / res.cpus_per_trial
    if res.gpus_per_trial:
        slots = min(slots, have.get("GPU", 0) / res.gpus_per_trial)
    return slots


def trial_device() -> torch.device:
    """The GPU Ray assigned to this trial (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if torch.cuda.is_available() and ray.get_gpu_ids():
        share = ray.get_runtime_context().get_assigned_resources().get("GPU", 1.0)
        if share < 1:  # Ray counts fractions but never enforces them: cap this trial's allocator
            torch.cuda.set_per_process_memory_fraction(share)
        use_tf32()
        return torch.device("cuda")
    return torch.device("cpu")


def placement(device: torch.device) -> dict[str, Any]:
    """Where and when a trial ran: its results rows show the spread over nodes and GPUs."""
    return {"device": device.type, "node_id": ray.get_runtime_context().get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "started_at": time.time()}


Finish = Callable[[torch.nn.Module, dict[str, torch.Tensor], dict], dict[str, float]]


def train_in_trial(config: dict[str, Any], data: Mnist, spec: dict[str, Any],
                   extra: dict[str, Any] | None = None, finish: Finish | None = None) -> None:
    """Builds spec, trains it with TrainConfig.from_config(config) and reports each evaluated epoch to Tune.

    Checkpoints hold the initial weights too, so `finish(model, initial_state, splits)` (metrics added
    to the last report, e.g. transplant's layer swaps) sees the same start after a resume.
    """
    cfg = TrainConfig.from_config(config)
    device = trial_device()
    torch.manual_seed(cfg.seed)
    model = models.build(spec, device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(model, cfg)
    start_epoch = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = models.load_state(Path(d) / "state.pt", device)
            model.load_state_dict(models.load(Path(d) / "model.pt").state_dict())
        opt.load_state_dict(state["optimizer"])
        initial, start_epoch = state["initial"], state["epoch"]
    fixed = {"params": models.n_params(model), **placement(device), **(extra or {})}
    splits = to_device(data, device)

    def report(metrics: dict[str, float]) -> None:
        if finish and metrics["epoch"] == cfg.epochs:
            metrics = {**metrics, **finish(model, initial, splits)}
        with tempfile.TemporaryDirectory() as d:
            torch.save({"optimizer": opt.state_dict(), "initial": initial, "epoch": metrics["epoch"]},
                       Path(d) / "state.pt")
            models.save(Path(d) / "model.pt", model, spec, **metrics)
            tune.report({**metrics, **fixed, "reported_at": time.time()},
                        checkpoint=tune.Checkpoint.from_directory(d))

    fit(model, splits, cfg, on_epoch=report, opt=opt, start_epoch=start_epoch)


def add_population_argument(p: "argparse.ArgumentParser", members: str) -> None:  # noqa: F821
    """--population, for the studies whose runs of one architecture can train stacked."""
    p.add_argument("--population", type=int, help=f"{members} trained together as one stacked model per trial "
                                                  "(default 0: up to 16 on a GPU, 1 on a CPU, where stacking is slower)")


def check_population(s: dict[str, Any]) -> None:
    if s["population"] < 0:
        raise UserError(f"--population must be >= 0, got {s['population']}")


def population_size(requested: int, res: Resources, runs: int) -> int:
    """Members per trial for `runs` runs that can stack: --population, where 0 picks 16 on a GPU and 1
    (separate trials) on a CPU, where stacking does not pay; never more than there are runs."""
    return min(requested or (16 if res.gpus_per_trial > 0 else 1), runs)


def train_population_in_trial(config: dict[str, Any], data: Mnist, spec: dict[str, Any],
                              extra: dict[str, Any] | None = None) -> None:
    """One trial, R members of `spec` as one stacked model; config["members"] holds each one's seed
    and, optionally, corruption p (run_grouped puts them there).

    Each report carries every member's metrics under "m<r>/<key>" (member_rows splits them back into
    one row per member; MemberTensorboard gives each its own TensorBoard run), plus their mean for
    Tune's metric. The last report's checkpoint holds each member's weights in m<r>/model.pt. A resumed
    population restarts from epoch 0: it is deterministic, so the result is the same.
    """
    cfg = TrainConfig.from_config(config)
    device = trial_device()
    members = [(m.get("p", 0.0), m["seed"]) for m in config["members"]]
    pop = population.Population(spec, [seed for _, seed in members], device)
    fixed = {"params": pop.n_params(), "population": len(members), **placement(device),
             **(extra or {})}

    def report(per_member: list[dict[str, float]]) -> None:
        flat = {f"m{r}/{k}": v for r, m in enumerate(per_member) for k, v in m.items()}
        means = {k: sum(m[k] for m in per_member) / len(per_member) for k in per_member[0]}
        metrics = {**means, **flat, **fixed, "reported_at": time.time()}
        if per_member[0]["epoch"] < cfg.epochs:
            return tune.report(metrics)
        with tempfile.TemporaryDirectory() as d, ThreadPoolExecutor(8) as pool:
            # torch.save lets go of the GIL as it writes: on a 2-core CPU 40 MLPs 1024-512-256 (230 MB) took 0.10 s
            # in 4 threads against 0.37 s in one. Each thread copies its member from the device as it comes to
            # it, so copies and writes overlap. load() checks each state against its spec's module.
            list(pool.map(lambda r: models.save(Path(d) / f"m{r}" / "model.pt", pop.member_state(r), spec,
                                                **per_member[r]), range(len(per_member))))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    population.fit(pop, to_device(data, device), cfg, [p for p, _ in members], on_epoch=report)


def member_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Splits each population trial's row into one row per member: its entry of "members" (the config
    keys that set it apart, e.g. p and seed), its metrics and its own checkpoint folder."""
    out = []
    for row in frame.to_dict("records"):
        shared = {k: v for k, v in row.items() if not k.startswith("m") or "/" not in k}
        shared.pop("members", None)
        for r, entry in enumerate(row["members"]):
            member = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith(f"m{r}/")}
            checkpoint = f"{row['checkpoint']}/m{r}" if row["checkpoint"] else ""
            out.append({**shared, **entry, **member, "member": r, "checkpoint": checkpoint})
    return pd.DataFrame(out)


class MemberTensorboard(tune.Callback):
    """One TensorBoard run per population member, folder/<trial>/m<r>, written as each population trial ends
    (completed or failed) from the reports it made, in a thread of the driver's own: the run's finish no
    longer waits for them (on a 2-core CPU, under a profiler, 480 runs of 15 epochs took 2.6 s there), and
    no trial waits while they are written. A population that starts again (a retried trial, a resumed run)
    reports from its first epoch again: its runs are rewritten from its new reports, so no scalar appears
    twice."""

    def __init__(self, folder: Path):
        self.folder, self.reports = folder, {}
        self.writing: ThreadPoolExecutor | None = None  # made when first needed: the Tuner pickles its callbacks

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "population" in result:
            reports = self.reports.setdefault(trial.trial_id, [])
            if reports and result["epoch"] <= reports[-1]["epoch"]:
                reports.clear()
            reports.append(result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reports = self.reports.pop(trial.trial_id, None)
        if reports:
            self.writing = self.writing or ThreadPoolExecutor(1)
            self.writing.submit(write_member_runs, reports, self.folder / Path(trial.path).name)

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.writing:
            self.writing.shutdown(wait=True)
            self.writing = None


def write_member_runs(reports: list[dict], folder: Path) -> None:
    """A population trial's reports as its members' runs, folder/m<r>, one event per epoch (on a 2-core CPU,
    240 runs of 15 epochs took 0.8-1.1 s, against 6.1-6.3 s with an event per scalar). A metric reported at
    some epochs only (final_train_* at the last) is in those epochs' events only."""
    from tensorboardX import SummaryWriter
    from tensorboardX.proto.summary_pb2 import Summary

    for r in range(int(reports[-1]["population"])):
        prefix, run = f"m{r}/", folder / f"m{r}"
        shutil.rmtree(run, ignore_errors=True)
        with SummaryWriter(str(run)) as writer:
            for report in reports:
                values = [Summary.Value(tag=k[len(prefix):], simple_value=v) for k, v in report.items()
                          if k.startswith(prefix) and k != f"{prefix}epoch" and isinstance(v, float)]
                writer.file_writer.add_summary(Summary(value=values), int(report[f"{prefix}epoch"]))


def run(trainable: Callable, run_dir: Path, name: str, res: Resources, data: Mnist, *,
        param_space: dict[str, Any] | None = None, metric: str = "val_loss", mode: str = "min",
        num_samples: int = 1, search_alg: Any = None, scheduler: Any = None,
        shown: list[str] | None = None, stop: dict[str, Any] | None = None,
        time_budget_s: float | None = None, checkpoint_every: int = 0,
        callbacks: Sequence[tune.Callback] = ()) -> tune.ResultGrid:
    """Runs (or, if it holds an interrupted run, resumes) the Tune experiment `name` of a run, in its tune/.

    Finished trials are never rerun on resume; unfinished and errored ones continue from their
    last checkpoint. The searcher's state (Optuna's history) is restored with the experiment.
    `checkpoint_every` is for class trainables (function trainables checkpoint when they report).
    """
    wrapped = tune.with_resources(tune.with_parameters(trainable, data=data),
                                  {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    experiments = storage.join(res.storage or str(run_dir), "tune")
    if tune.Tuner.can_restore(f"{experiments}/{name}"):
        tuner = tune.Tuner.restore(f"{experiments}/{name}", trainable=wrapped, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            wrapped,
            param_space=param_space or {},
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=num_samples, search_alg=search_alg,
                scheduler=scheduler, max_concurrent_trials=res.max_concurrent or None, reuse_actors=True,
                time_budget_s=time_budget_s,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=experiments, verbose=0, stop=stop,
                callbacks=[TrialTensorboard(), Progress(name, metric, shown or [], num_samples if search_alg else None),
                           *callbacks],
                failure_config=tune.FailureConfig(max_failures=res.max_failures),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=1, checkpoint_frequency=checkpoint_every,
                    checkpoint_at_end=True if checkpoint_every else None),
            ),
        )
    start = time.time()
    grid = tuner.fit()
    print(f"[{name}] {len(grid)} trials in {time.time() - start:.1f} s", flush=True)
    return grid


def rows(grid: tune.ResultGrid, keep_config: list[str]) -> pd.DataFrame:
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


def run_grouped(trainable: Callable, population_trainable: Callable, run_dir: Path, name: str, res: Resources,
                data: Mnist, space: dict[str, Any], runs: list[dict[str, Any]], requested: int, keep: list[str],
                shown: list[str], tensorboard: Path, **kwargs: Any) -> pd.DataFrame:
    """Trains `runs` of one architecture (each the config keys that set it apart, e.g. {"p": 0.2, "seed": 1};
    together a full grid of those keys) at every point of `space`, one row per run.

    With --population R > 1 (population_size), R runs share a trial as one stacked model
    (config["members"] holds their keys; each member gets a TensorBoard run under `tensorboard`);
    otherwise each run is a trial of its own, its keys grid-searched. `keep` are the config columns
    of the rows besides the run keys; `shown` the progress line's, run keys included.
    """
    keys = list(runs[0])
    size = population_size(requested, res, len(runs))
    if size > 1:
        space = {**space, "members": tune.grid_search([runs[i:i + size] for i in range(0, len(runs), size)])}
        grid = run(population_trainable, run_dir, name, res, data, param_space=space,
                   shown=[k for k in shown if k not in keys] + ["population"],
                   callbacks=[MemberTensorboard(tensorboard)], **kwargs)
        return member_rows(rows(grid, [*keep, "members"]))
    space = {**space, **{k: tune.grid_search(list(dict.fromkeys(r[k] for r in runs))) for k in keys}}
    grid = run(trainable, run_dir, name, res, data, param_space=space, shown=shown, **kwargs)
    return rows(grid, [*keep, *keys])
