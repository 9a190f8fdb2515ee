"""transplant: which trained layers carry the learning? Train an FC net, then for each layer i
(a) put layer i of the trained net back to its initial weights ("reset"), and (b) give the initial
net the trained layer i ("graft"); test loss and accuracy of each, over several seeds.

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

from tune_mnist import models, plots, stats
from tune_mnist.data import DeviceSplit, Mnist
from tune_mnist.files import read_table, write_csv
from tune_mnist.population import Member, Population
from tune_mnist.report import for_run
from tune_mnist.runs import Table
from tune_mnist.settings import Activation, Common, Inputs, NonEmpty, Optimizer, Positive, PositiveInt
from tune_mnist.studies import Study
from tune_mnist.train import TrainConfig, evaluate
from tune_mnist.tuning import cluster, runner, trial

NAME = "transplant"
HELP = "train an FC net, swap single layers between its initial and trained copies, both ways"
DIRECTIONS = {"reset": "trained net, layer i back at init", "graft": "initial net, layer i trained"}
BASELINES = {"reset": "trained_test_acc", "graft": "init_test_acc"}  # the net each direction's swap starts from
QUESTION = "Which trained layers carry what the network learnt?"


@dataclass
class Settings(Common):
    layers: NonEmpty[PositiveInt]
    outputs: Annotated[PositiveInt, Ge(len(models.CLASSES))]  # one output per label at least
    activation: Activation
    seeds: PositiveInt
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
    """One row per (seed, layer, direction) from the wide per-seed metrics."""
    rows = []
    for r in per_seed[per_seed["error"].eq("")].to_dict("records"):
        i = 1
        while f"reset_{i}_acc" in r and pd.notna(r[f"reset_{i}_acc"]):
            for direction in DIRECTIONS:
                rows.append({"seed": r["seed"], "layer": i, "fan": fan[i - 1], "direction": direction,
                             "test_loss": r[f"{direction}_{i}_loss"], "test_acc": r[f"{direction}_{i}_acc"],
                             "trained_test_acc": r["test_acc"], "init_test_acc": r["init_test_acc"]})
            i += 1
    return pd.DataFrame(rows)


def summarise(long: pd.DataFrame) -> pd.DataFrame:
    """Per layer and direction: test accuracy's mean, 95% interval and std over seeds, test loss's mean and std,
    and the accuracy's change from the net the swap starts from (reset: trained, graft: initial), paired by seed."""
    rows = []
    for (layer, direction), part in long.groupby(["layer", "direction"], sort=False):
        acc = stats.mean_interval(part["test_acc"])
        change = stats.mean_interval(part["test_acc"] - part[BASELINES[direction]])
        rows.append({"layer": layer, "fan": part["fan"].iloc[0], "direction": direction, "seeds": acc.n,
                     "test_acc_mean": acc.mean, "test_acc_low": acc.low, "test_acc_high": acc.high,
                     "test_acc_std": part["test_acc"].std(), "test_loss_mean": part["test_loss"].mean(),
                     "test_loss_std": part["test_loss"].std(), "change": change.mean, "change_low": change.low,
                     "change_high": change.high, "beyond_noise": change.excludes(0.0)})
    return pd.DataFrame(rows).fillna({"test_acc_std": 0.0, "test_loss_std": 0.0})  # one seed has no std


def carriers(summary: pd.DataFrame) -> dict[str, list[int]]:
    """The layers whose reset costs accuracy beyond noise, those whose graft alone raises it beyond noise, and
    either: the layers that carry the learning."""
    moved = summary[summary["beyond_noise"]]
    costs = sorted(moved[(moved["direction"] == "reset") & (moved["change"] < 0)]["layer"].astype(int))
    raises = sorted(moved[(moved["direction"] == "graft") & (moved["change"] > 0)]["layer"].astype(int))
    return {"carrying_layers": sorted(set(costs) | set(raises)), "reset_costs": costs, "graft_raises": raises}


def named(layers: list[int]) -> str:
    """"layer 2", "layers 1 and 3" or "layers 1, 2 and 4"."""
    words = [str(i) for i in layers]
    return f"layer {words[0]}" if len(words) == 1 else f"layers {', '.join(words[:-1])} and {words[-1]}"


def accuracies(summary: pd.DataFrame, layers: list[int], direction: str) -> str:
    """Test accuracy with each of these layers swapped one way, with its interval."""
    rows = summary[(summary["direction"] == direction) & summary["layer"].isin(layers)]
    return "; ".join(f"layer {r.layer} ({r.fan}) "
                     f"{stats.Interval(r.test_acc_mean, r.test_acc_low, r.test_acc_high, r.seeds, math.nan)}"
                     for r in rows.itertuples())


def answer(summary: pd.DataFrame, trained: stats.Interval, init: stats.Interval) -> str:
    """Which layers carry the learning, then the evidence: the swaps beyond noise with their intervals."""
    carry, costs, raises = carriers(summary).values()
    verdict = (f"{named(carry).capitalize()} carr{'ies' if len(carry) == 1 else 'y'} what the network learnt." if carry
               else "No single layer is shown to carry what the network learnt; more seeds would narrow the intervals.")
    reset = (f"Resetting {named(costs)} of the trained net to initial weights"
             f"{', one at a time,' if len(costs) > 1 else ''} costs accuracy beyond noise: "
             f"{accuracies(summary, costs, 'reset')}." if costs else
             "Resetting any one layer of the trained net to initial weights costs no accuracy beyond noise.")
    graft = (f"Grafting trained {named(raises)}{', each alone,' if len(raises) > 1 else ' alone'} into the initial net "
             f"raises its accuracy beyond noise: {accuracies(summary, raises, 'graft')}." if raises else
             "Grafting any one trained layer alone into the initial net raises its accuracy by nothing beyond noise.")
    return (f"{verdict} {reset} {graft} Trained, the nets reach test accuracy {trained}; at their initial weights, "
            f"{init}. (Test accuracies: mean and 95% interval over seeds; a change is beyond noise when its 95% "
            "interval, paired by seed, excludes zero.)")


def nets(per_seed: pd.DataFrame) -> tuple[stats.Interval, stats.Interval]:
    """The trained and the initial nets' test accuracy over seeds."""
    ok = per_seed[per_seed["error"].eq("")]
    return stats.mean_interval(ok["test_acc"]), stats.mean_interval(ok["init_test_acc"])


def bar_frame(summary: pd.DataFrame, trained: stats.Interval, init: stats.Interval, swapped: str) -> pd.DataFrame:
    """The figure's bars, with the labels its axes show: each swap, and at layer 0 the nets the swaps start from."""
    start = pd.DataFrame([{"layer": 0, "direction": d, "test_acc_mean": net.mean, "test_acc_high": net.high}
                          for d, net in (("reset", trained), ("graft", init))])
    frame = pd.concat([start, summary], ignore_index=True)
    swap = {"reset": "reset: trained net, this layer at init", "graft": "graft: initial net, this layer trained"}
    return pd.DataFrame({swapped: frame["layer"], "swap": frame["direction"].map(swap),
                         "test accuracy": frame["test_acc_mean"],
                         "95% CI": frame["test_acc_high"] - frame["test_acc_mean"]})


def report(run_dir: Path, out: Path | None = None) -> None:
    """Figures and REPORT.md into `out` (default the run folder), from the run's CSVs."""
    out = Path(out or run_dir)
    summary, per_seed = read_table(run_dir / "results_summary.csv"), read_table(run_dir / "results_per_seed.csv")
    trained, init = nets(per_seed)
    fan = list(dict.fromkeys(summary["fan"]))
    net = "→".join([fan[0].split("→")[0], *(f.split("→")[1] for f in fan)])
    swapped = f"layer of the {net} net swapped (0: none)"
    plots.grouped_bars(out / "transplant.png", bar_frame(summary, trained, init, swapped), swapped, "swap",
                       "test accuracy", "95% CI",
                       title="Test accuracy with one layer swapped (mean, 95% CI over seeds)")
    md = for_run(run_dir, "transplant: which trained layers carry what the network learnt?", QUESTION)
    md.answer(answer(summary, trained, init))
    md.section("Per layer", f"`results_summary.csv`: test accuracy of the {net} net with layer i reset (the trained "
                            "net with that layer back at its initial weights) or grafted (the initial net with that "
                            "layer trained); mean and 95% interval over seeds, and the change from the net the swap "
                            "starts from (reset: trained, graft: initial), paired by seed.")
    md.table(summary, ["layer", "fan", "direction", "seeds", "test_acc_mean", "test_acc_low", "test_acc_high",
                       "change", "change_low", "change_high", "beyond_noise"])
    md.section("The nets", "`results_per_seed.csv`: each seed's parameters and test accuracy, trained and initial.")
    md.table(per_seed, ["seed", "params", "test_acc", "init_test_acc", "final_train_acc", "error"])
    md.section("Figures")
    md.figure(out / "transplant.png", "Test accuracy with one layer swapped, 95% intervals over seeds; at layer 0 "
                                      "the trained net (reset) and the initial net (graft)")
    md.write(out)


def run(s: Settings, run_dir: Path, data: Mnist, res: cluster.Resources) -> dict[str, Any]:
    space = {"layers": s.layers, "outputs": s.outputs, "activation": s.activation, "lr": s.lr,
             "train": TrainConfig.from_settings(s).as_dict()}
    per_seed = runner.populations(trainable, run_dir, "seeds", res, data, space,
                                  groups=runner.chunks([{"seed": seed} for seed in range(s.seeds)], s.population), keep=[],
                                  shown=["seed"], tensorboard=run_dir / "tensorboard", metric="test_acc", mode="max")
    long = long_table(per_seed, fans(s.layers, s.outputs))
    summary = summarise(long)
    write_csv(run_dir / "results_per_seed.csv", per_seed)
    write_csv(run_dir / "results.csv", long)
    write_csv(run_dir / "results_summary.csv", summary)
    report(run_dir)
    return {"seeds": len(per_seed), "errors": int(per_seed["error"].ne("").sum()),
            "trained_test_acc": round(float(per_seed["test_acc"].mean()), 4),
            **{k: ",".join(map(str, layers)) or "none" for k, layers in carriers(summary).items()}}


def tables(s: Settings) -> list[Table]:
    swapped = 2 * (len(s.layers) + 1)  # each dense layer, the output layer too, reset and grafted
    return [Table("results_per_seed.csv", ("seed", "params", "test_acc", "init_test_acc", "final_train_acc", "error"),
                  range(s.seeds, s.seeds + 1), finite=("test_acc", "init_test_acc", "final_train_acc")),
            Table("results_summary.csv", ("layer", "fan", "direction", "seeds", "test_acc_mean", "test_acc_low",
                                          "test_acc_high", "change", "change_low", "change_high", "beyond_noise"),
                  range(swapped, swapped + 1))]


STUDY = Study(NAME, HELP, __doc__, Settings, check, run, report, tables)
