"""corruption: how much of its clean accuracy each activation keeps when MLPs and CNNs train on pixel-corrupted
MNIST, each activation at a learning rate of its own.

Stage 1 (sweep): per family and activation, every lr of --lrs at p = 0 on the sweep's seeds; the lr with the highest
mean validation accuracy is chosen. Stage 2 (grid): every p on seeds 0 .. repeats - 1 at the chosen lr, the same
seeds for every activation. The answers (corruption_report.py) compare activations by paired tests over these seeds.

    python -m tune_mnist corruption --activations relu tanh --p 0 0.25 0.5 0.75 --repeats 10
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import ray
import torch
from annotated_types import Len

from tune_mnist.data import DeviceSplit, Mnist, to_device
from tune_mnist.errors import require
from tune_mnist.files import write_csv
from tune_mnist.population import Member, Population
from tune_mnist.runs import Table
from tune_mnist.settings import (Activation, Common, NonEmpty, NonNegative, NonNegativeInt, Optimizer, Positive,
                                 PositiveInt, Probability)
from tune_mnist.studies import Study, corruption_report as answers
from tune_mnist.train import TrainConfig, epoch_loop, make_optimizer
from tune_mnist.tuning import cluster, runner, trial
from tune_mnist.warmup import compile_ahead, same_kernels

NAME = "corruption"
HELP = "activations x MLP/CNN x pixel-corruption p x repeats, each at its own lr: which keeps its accuracy best"
FAMILIES = answers.FAMILIES


@dataclass
class Settings(Common):
    activations: NonEmpty[Activation]
    families: NonEmpty[Literal[FAMILIES]]
    mlp_widths: NonEmpty[PositiveInt]
    cnn_channels: Annotated[list[PositiveInt], Len(1, 4)]  # each block halves the 28 x 28 image: 4 leave 1 x 1
    cnn_hidden: NonNegativeInt
    p: NonEmpty[Probability]
    repeats: PositiveInt
    lrs: NonEmpty[Positive]
    sweep_seeds: PositiveInt
    population: PositiveInt
    epochs: PositiveInt
    batch_size: PositiveInt
    optimizer: Optimizer
    weight_decay: NonNegative


def spec(config: dict[str, Any], family: str, act: str) -> dict[str, Any]:
    if family == "mlp":
        return {"family": "mlp", "widths": config["mlp_widths"], "activation": act}
    return {"family": "cnn", "channels": config["cnn_channels"], "hidden": config["cnn_hidden"], "activation": act}


def check(s: Settings) -> None:
    require(len(set(s.p)) >= 2, f"--p needs at least two values: robustness is read off accuracy vs p, got {s.p}")
    require(0 in s.p, f"--p must include 0: retention is accuracy relative to clean (p = 0) accuracy, got {s.p}")


def swept(s: Settings) -> bool:
    """Stage 1 runs only where there is an lr to choose."""
    return len(set(s.lrs)) > 1


def sweep_runs(s: Settings, family: str, act: str) -> list[dict[str, Any]]:
    """Stage 1's runs of a family and activation: every lr at p = 0, on seeds after stage 2's, so that no seed
    that chose an lr also estimates a result."""
    return [{"family": family, "activation": act, "lr": lr, "p": 0.0, "seed": s.repeats + i}
            for lr in s.lrs for i in range(s.sweep_seeds)]


def grid_runs(s: Settings, family: str, act: str, lr: float) -> list[dict[str, Any]]:
    """Stage 2's runs of a family and activation: every p on seeds 0 .. repeats - 1, at its chosen lr."""
    return [{"family": family, "activation": act, "lr": lr, "p": p, "seed": seed}
            for p in s.p for seed in range(s.repeats)]


def members(config: dict[str, Any]) -> list[Member]:
    """A trial's runs (one family and activation) as population members."""
    return [Member(spec(config, m["family"], m["activation"]), seed=m["seed"], lr=m["lr"],
                   weight_decay=config["weight_decay"], corruption=m["p"]) for m in config["members"]]


def trainable(config: dict[str, Any], data: Mnist) -> None:
    trial.train(data, members(config), TrainConfig(**config["train"]))


def training(s: Settings) -> TrainConfig:
    """Both stages read a net's metrics after its last epoch only: evaluating and checkpointing the others would
    cost every epoch of a 72-member CNN population a checkpoint of about 360 MB."""
    return TrainConfig.from_settings(s, eval_every=s.epochs)


def probe_members(s: Settings, family: str, act: str, size: int, p: float = 0.5) -> list[Member]:
    """What the trials train: `size` members of a family and activation, with the trials' optimizer settings."""
    net = spec(vars(s), family, act)
    return [Member(net, seed=r, lr=s.lrs[0], weight_decay=s.weight_decay, corruption=p) for r in range(size)]


def seconds_per_run_step(members: list[Member], split: DeviceSplit, cfg: TrainConfig) -> float:
    """Seconds of one run's training step when these members train together, from an epoch after a warm-up."""
    pop = Population(members, split.x.device)
    run = epoch_loop(pop, make_optimizer(pop, cfg), split, cfg)
    run(0)
    start = time.perf_counter()
    run(1)  # returns the epoch's losses, so it has waited for the device
    return (time.perf_counter() - start) / -(-len(split) // cfg.batch_size) / len(members)


def kernels(s: Settings, train: DeviceSplit, wait: bool = True) -> None:
    """Compiles every family and activation's kernels on the trials' training split, whose size some specialise on:
    stage 2's (corrupted) and, where it runs, the sweep's (clean images launch no corruption kernel)."""
    ps = (0.0, 0.5) if swept(s) else (0.5,)
    compile_ahead([probe_members(s, f, a, 1, p)[0] for f in s.families for a in s.activations for p in ps],
                  train, training(s), wait)


def prepare(s: Settings, data: Mnist) -> None:
    """Before Ray starts: where the trials will train populations on this machine's GPU, their kernels start
    compiling, so that they compile while Ray starts; estimate waits for them."""
    if torch.cuda.is_available() and s.population > 1:
        kernels(s, to_device(data, "cuda")["train"], wait=False)


def stages(s: Settings) -> list[tuple[str, int, int]]:
    """(stage, runs per family and activation, their population size) of each stage that runs."""
    sizes = [("sweep", len(s.lrs) * s.sweep_seeds)] if swept(s) else []
    return [(name, runs, min(s.population, runs)) for name, runs in [*sizes, ("grid", len(s.p) * s.repeats)]]


def estimate(s: Settings, data: Mnist, res: cluster.Resources) -> float:
    """Seconds both stages should take: per stage, runs x measured seconds per run / concurrent trials.

    Times 20 training steps of each family (its first activation) in populations of each stage's size, as the
    trials train them. Trials on a cluster's GPUs will be faster than this machine's device, so on a cluster this
    is an upper bound. On a GPU it first compiles every family and activation's kernels at once (or waits for
    those prepare started), so that no trial waits to compile its own.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, cfg = to_device(data, device)["train"], training(s)
    plan = stages(s)
    if device.type == "cuda" and s.population > 1:
        print(f"[corruption] compiling the kernels of {', '.join(s.families)} x {', '.join(s.activations)} "
              "(Triton keeps them on this machine for later runs)", flush=True)
        start = time.perf_counter()
        kernels(s, train)
        print(f"[corruption] kernels ready ({time.perf_counter() - start:.1f} s waited once Ray was up)", flush=True)
    # 20 batches that launch the kernels the trials' epochs do, so that timing them compiles nothing more
    split = same_kernels(train, s.batch_size, batches=20)
    steps_per_run = s.epochs * -(-len(data.train_x) // s.batch_size)
    per_run = {(f, size): seconds_per_run_step(probe_members(s, f, s.activations[0], size), split, cfg) * steps_per_run
               for f in s.families for size in {size for *_, size in plan}}
    if device.type == "cuda":
        del train, split
        torch.cuda.empty_cache()  # the trials' memory, not the driver's
    slots = min(cluster.trial_slots(res), res.max_concurrent or 10**9)
    if res.gpus_per_trial:  # trials that share a GPU take turns on it, and a population keeps it busy
        slots = min(slots, ray.cluster_resources().get("GPU", 1))
    concurrent, total = max(1, int(slots)), 0.0
    for _, runs, size in plan:  # one stage after the other
        trials = len(s.families) * len(s.activations) * -(-runs // size)
        total += sum(per_run[f, size] for f in s.families) * runs * len(s.activations) / min(concurrent, trials)
    grid = plan[-1]
    parts = ", ".join(f"{f} {t:.1f}s/run" if t >= 1 else f"{f} {t:.2f}s/run"
                      for (f, size), t in per_run.items() if size == grid[2])
    combos = len(s.families) * len(s.activations)
    sweep = (f"{combos * plan[0][1]} lr-sweep runs in populations of {plan[0][2]}, then " if swept(s) else "")
    print(f"[corruption] estimate: {sweep}{combos * grid[1]} runs ({parts}, populations of {grid[2]}), {concurrent} "
          f"at once -> about {total / 60:.1f} min", flush=True)
    return total


def train_stage(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources, name: str,
                runs: list[list[dict[str, Any]]]) -> pd.DataFrame:
    """Trains each family and activation's runs in populations of up to s.population; one row per run. Nothing
    reads a finished trial's weights (a resume skips it), so its checkpoints go once the stage ends."""
    space = {"train": training(s).as_dict(), "weight_decay": s.weight_decay, "mlp_widths": s.mlp_widths,
             "cnn_channels": s.cnn_channels, "cnn_hidden": s.cnn_hidden}
    groups = [chunk for arm in runs for chunk in runner.chunks(arm, s.population)]
    return runner.populations(trainable, run_dir, name, res, data, space, groups=groups, keep=[],
                              shown=["family", "activation", "lr", "p"], tensorboard=run_dir / "tensorboard" / name,
                              metric="val_acc" if name == "sweep" else "test_acc", mode="max", prune=True)


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    estimate(s, data, res)
    arms = [(f, a) for f in s.families for a in s.activations]
    if swept(s):
        sweep = train_stage(s, run_dir, data, res, "sweep", [sweep_runs(s, f, a) for f, a in arms])
        write_csv(run_dir / "sweep.csv", sweep)
        lrs = answers.choose_lr(sweep)
    else:
        lrs = pd.DataFrame([{"family": f, "activation": a, "lr": s.lrs[0], "chosen": True} for f, a in arms])
    write_csv(run_dir / "lr.csv", lrs)
    chosen = lrs[lrs["chosen"]].set_index(["family", "activation"])["lr"]
    if chosen.empty:
        raise RuntimeError(f"every lr diverged on some seed for every family and activation: see {run_dir}/lr.csv")
    per_run = train_stage(s, run_dir, data, res, "grid",
                          [grid_runs(s, f, a, float(chosen[f, a])) for f, a in arms if (f, a) in chosen.index])
    write_csv(run_dir / "results_per_run.csv", per_run)
    return answers.write_answers(run_dir, per_run)


def tables(s: Settings) -> list[Table]:
    """The CSVs report reads. Stage 2 leaves out a family and activation where every lr diverged, and a seed
    without a net at every p, so most counts are at most the settings'."""
    arms, measures = len(s.families) * len(s.activations), len(answers.MEASURES)
    pairs = len(s.activations) * (len(s.activations) - 1) // 2
    lrs = len(set(s.lrs)) if swept(s) else 1
    return [Table("lr.csv", ("family", "activation", "lr", "chosen"), range(arms * lrs, arms * lrs + 1)),
            Table("results_summary.csv", ("family", "activation", "p", "repeats", "test_acc", "test_acc_low",
                                          "test_acc_high", "retention", "retention_low", "retention_high"),
                  range(1, arms * len(set(s.p)) + 1), finite=("test_acc", "retention")),
            Table("robustness.csv", ("family", "activation", "lr", "repeats", "clean_acc", "threshold"),
                  range(1, arms + 1)),
            Table("ranking.csv", answers.RANKED, range(1, arms * measures + 1), finite=("mean",)),
            Table("comparisons.csv", answers.COMPARED, range(0, len(s.families) * measures * pairs + 1))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, answers.report, tables, prepare=prepare)
