"""The one trial body: every study's trial trains a population, a single net being a population of one.

A trial's config holds "members", one entry per member (the keys that set it apart: seed, p, lr, widths, ...);
the study turns the config into Members and a TrainConfig and calls `train`. After each evaluated epoch the trial
reports every member's metrics (in the format of tuning/members.py) and their means for
Tune's metric, with a checkpoint of the whole population (stacked weights, optimizer, which members go on), so a
killed trial resumes at its last epoch. A member that stops early (successive halving, divergence) reports
stopped_early or error once; the last report repeats every member's last metrics, so the trial's
final result holds them all.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ray import tune

from tune_mnist import models, profile
from tune_mnist.data import DeviceSplit, Mnist, to_device
from tune_mnist.population import Member, Population
from tune_mnist.train import TrainConfig, Trainer
from tune_mnist.tuning import cluster, members as report_format

STATE = "state.pt"
# (epoch, members' metrics) -> the positions of the members that train on
Halving = Callable[[int, list[dict[str, Any]]], Sequence[int]]
# (population, its initial weights, splits) -> metrics added to each member's last report (transplant's swaps)
Finish = Callable[[Population, dict[str, torch.Tensor], dict[str, DeviceSplit]], list[dict[str, float]]]


def load_state(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    """A trial checkpoint's state, read without running any code it might hold; None where there is none (a
    resume removes a damaged one, and the trial then starts again)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return models.load_state(Path(d) / STATE) if (Path(d) / STATE).is_file() else None


def train(data: Mnist, members: Sequence[Member], cfg: TrainConfig, extra: dict[str, Any] | None = None,
          halving: Halving | None = None, finish: Finish | None = None) -> None:
    """Trains the members as one population in this Tune trial, resuming from its checkpoint if it has one.

    Besides the members' metrics, each report holds where the trial's time went (profile.TRIAL_KEYS): its
    worker's start, the trainer's Timing, and the seconds spent saving checkpoints and reporting so far."""
    entered_at = time.time()
    worker_started_at = profile.process_started_at() or entered_at
    device = cluster.trial_device()
    saved = load_state(tune.get_checkpoint())
    state = saved or {"epoch": 0, "ids": list(range(len(members))), "stopped": {}}
    ids, stopped = list(state["ids"]), dict(state["stopped"])
    pop = Population([members[i] for i in ids], device)
    splits = to_device(data, device)
    trainer = Trainer(pop, splits, cfg)
    initial = {k: v.detach().clone() for k, v in pop.params.items()} if finish else None
    if saved:
        pop.load(state["params"])
        trainer.opt.load_state_dict(state["optimizer"])
        initial = {k: v.to(device) for k, v in state["initial"].items()} if finish else None
    fixed = {"population": len(members), **cluster.placement(device), **(extra or {}),
             "worker_started_at": worker_started_at, "entered_at": entered_at}
    finished = reported = 0.0  # seconds: transplant's swaps; checkpoints saved and reports handed over

    for metrics in trainer.epochs(state["epoch"]):
        epoch = metrics[0]["epoch"]
        last = epoch == cfg.epochs
        for r, m in enumerate(metrics):
            m["params"] = pop.n_params(r)
        keep = list(range(len(metrics))) if last or not halving else list(halving(epoch, metrics))
        keep = [r for r in keep if "error" not in metrics[r]]
        for r, m in enumerate(metrics):
            if r not in keep and "error" not in m:
                m["stopped_early"] = 1
            if r not in keep:
                stopped[ids[r]] = m
        if last and finish:
            begun = time.perf_counter()
            for m, more in zip(metrics, finish(pop, initial, splits)):
                m.update(more)
            finished = time.perf_counter() - begun
        report = report_format.encode({**(stopped if last else {}), **{ids[r]: m for r, m in enumerate(metrics)}})
        going = [metrics[r] for r in keep] or metrics
        means = {k: sum(m[k] for m in going) / len(going) for k, v in going[0].items() if isinstance(v, (int, float))}
        trainer.keep(keep)
        ids = [ids[r] for r in keep]
        begun = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            torch.save({"epoch": epoch, "ids": ids, "stopped": stopped, "initial": initial,
                        "params": {k: v.detach() for k, v in pop.params.items()},
                        "optimizer": trainer.opt.state_dict()}, Path(d) / STATE)
            timing = trainer.timing.report()
            timing["eval_seconds"] += finished
            timing["report_seconds"] = reported + time.perf_counter() - begun  # this report's hand-over not yet
            tune.report({**means, **report, **fixed, **timing, "reported_at": time.time()},
                        checkpoint=tune.Checkpoint.from_directory(d))
        reported += time.perf_counter() - begun


def member_state(state: dict[str, Any], member: int, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Member `member`'s own weights (its spec's shapes, no padding) from a population trial's checkpoint state."""
    position = state["ids"].index(member)
    shapes = {k: p.shape for k, p in models.build(spec, "meta").named_parameters()}
    return {k: v[position][tuple(slice(0, n) for n in shapes[k])].clone() for k, v in state["params"].items()}
