"""transplant: which trained layers carry the learning? Train an FC net per seed, then for each layer i
(a) put layer i of the trained net back to its initial weights ("reset"), and (b) give the initial
net the trained layer i ("graft"); test loss and accuracy of each, tested against the net the swap starts from,
paired by seed, Holm over all tests (transplant_report.py).

    python -m tune_mnist transplant --layers 1024 512 256 --seeds 5 --epochs 10

The original notebook's net (hidden layers 2048-1024-512-256, then 256 -> 128 under log-softmax and NLL, which is
cross-entropy over 128 logits of which only the first 10 are ever a label):

    python -m tune_mnist transplant --layers 2048 1024 512 256 --outputs 128
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import torch
from annotated_types import Ge
from torch import nn

from tune_mnist import models
from tune_mnist.data import DeviceSplit, Mnist
from tune_mnist.errors import require
from tune_mnist.files import write_csv
from tune_mnist.population import Member, Population
from tune_mnist.runs import Table
from tune_mnist.settings import Activation, Common, Inputs, NonEmpty, Optimizer, Positive, PositiveInt
from tune_mnist.studies import Study, transplant_report as answers
from tune_mnist.train import TrainConfig, evaluate
from tune_mnist.tuning import cluster, runner, trial

NAME = "transplant"
HELP = "train an FC net, swap single layers between its initial and trained copies, both ways"


@dataclass
class Settings(Common):
    layers: NonEmpty[PositiveInt]
    outputs: Annotated[PositiveInt, Ge(len(models.CLASSES))]  # one output per label at least
    activation: Activation
    seeds: Annotated[PositiveInt, Ge(2)]  # the tests pair seeds
    population: PositiveInt
    epochs: PositiveInt
    batch_size: PositiveInt
    optimizer: Optimizer
    lr: Positive
    inputs: Inputs


def check(s: Settings) -> None:
    """Nothing beyond what the types say."""


def swaps(pop: Population, initial: dict[str, torch.Tensor], splits: dict[str, DeviceSplit],
          inputs: str) -> list[dict[str, float]]:
    """Each member's test loss/acc with one dense layer swapped at a time, both ways; the weights end as they began."""
    trained = {k: v.detach().clone() for k, v in pop.params.items()}
    layers = [name for name, layer in pop.layers if isinstance(layer, nn.Linear)]
    out: list[dict[str, float]] = [{} for _ in range(len(pop))]
    mixes = [(f"{d}_{i}", {k: (donor if k.startswith(layer + ".") else base)[k] for k in trained})
             for i, layer in enumerate(layers, start=1)
             for d, base, donor in (("reset", trained, initial), ("graft", initial, trained))]
    for key, weights in [*mixes, ("init_test", initial)]:
        pop.load(weights)
        for m, result in zip(out, evaluate(pop, splits["test"], inputs)):
            m[f"{key}_loss"], m[f"{key}_acc"] = result["loss"], result["acc"]
    pop.load(trained)
    return out


def trainable(config: dict[str, Any], data: Mnist) -> None:
    net = {"family": "mlp", "widths": config["layers"], "activation": config["activation"],
           "outputs": config["outputs"]}
    members = [Member(net, seed=m["seed"], lr=config["lr"]) for m in config["members"]]
    cfg = TrainConfig(**config["train"])
    trial.train(data, members, cfg, finish=lambda pop, initial, splits: swaps(pop, initial, splits, cfg.inputs))


def fans(layers: list[int], outputs: int) -> list[str]:
    """Each dense layer's inputs and outputs, as "784→128", first layer first."""
    sizes = [math.prod(models.INPUT_SHAPE), *layers, outputs]
    return [f"{a}→{b}" for a, b in zip(sizes, sizes[1:])]


def long_table(per_seed: pd.DataFrame, fan: list[str]) -> pd.DataFrame:
    """results.csv: one row per (seed, layer, direction) from the wide per-seed metrics, with the seed's trained
    and initial nets beside."""
    rows = []
    for r in per_seed[per_seed["error"].eq("")].to_dict("records"):
        for i, f in enumerate(fan, start=1):
            for direction in answers.START:
                rows.append({"seed": r["seed"], "layer": i, "fan": f, "direction": direction,
                             "test_loss": r[f"{direction}_{i}_loss"], "test_acc": r[f"{direction}_{i}_acc"],
                             "trained_test_loss": r["test_loss"], "trained_test_acc": r["test_acc"],
                             "init_test_loss": r["init_test_loss"], "init_test_acc": r["init_test_acc"]})
    return pd.DataFrame(rows)


def report(run_dir: Path, out: Path | None = None) -> None:
    """The figure and REPORT.md into `out` (default the run folder), from the run's CSVs."""
    answers.write(run_dir, Path(out or run_dir))


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    space = {"layers": s.layers, "outputs": s.outputs, "activation": s.activation, "lr": s.lr,
             "train": TrainConfig.from_settings(s).as_dict()}
    groups = runner.chunks([{"seed": seed} for seed in range(s.seeds)], s.population)
    per_seed = runner.populations(trainable, run_dir, "seeds", res, data, space, groups=groups, keep=[],
                                  shown=["seed"], tensorboard=run_dir / "tensorboard", metric="test_acc", mode="max")
    write_csv(run_dir / "results_per_seed.csv", per_seed)
    require(per_seed["error"].eq("").any(), "no seed trained without error: see results_per_seed.csv's error column")
    long = long_table(per_seed, fans(s.layers, s.outputs))
    tests = answers.tests(long)
    write_csv(run_dir / "results.csv", long)
    write_csv(run_dir / "results_summary.csv", answers.summarise(long))
    write_csv(run_dir / "tests.csv", tests)
    report(run_dir)
    return {"seeds": len(per_seed), "errors": int(per_seed["error"].ne("").sum()),
            "trained_test_acc": round(float(per_seed["test_acc"].mean()), 4),
            **{k: ",".join(map(str, layers)) or "none" for k, layers in answers.carriers(tests).items()}}


def tables(s: Settings) -> list[Table]:
    dense = len(s.layers) + 1  # the output layer is swapped too
    nets = ("test_acc", "test_loss", "init_test_acc", "init_test_loss")
    return [Table("results_per_seed.csv", ("seed", "params", *nets, "final_train_acc", "error"),
                  range(s.seeds, s.seeds + 1), finite=(*nets, "final_train_acc")),
            Table("results_summary.csv", ("layer", "fan", "direction", "seeds", "test_acc", "test_acc_low",
                                          "test_acc_high", "test_loss", "test_loss_low", "test_loss_high"),
                  range(2 * (dense + 1), 2 * (dense + 1) + 1)),  # reset and graft per layer, their starts at 0
            Table("tests.csv", ("layer", "fan", "direction", "metric", "swapped", "start", "difference",
                                "difference_low", "difference_high", "p", "p_adjusted", "family", "detected", "mde",
                                "n", "n_b", "unit", "test"), range(4 * dense, 4 * dense + 1))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, report, tables)
