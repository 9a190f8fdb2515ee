"""transplant: which trained layers carry the learning? Train an FC net, then for each layer i
(a) put layer i of the trained net back to its initial weights ("reset"), and (b) give the initial
net the trained layer i ("graft"); test loss and accuracy of each, over several seeds.

    python -m tune_mnist transplant --layers 1024 512 256 --seeds 5 --epochs 10
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from ray import tune

from tune_mnist import driver, plots
from tune_mnist.data import DeviceSplit, Mnist
from tune_mnist.errors import require
from tune_mnist.files import read_table, write_csv
from tune_mnist.train import evaluate

NAME = "transplant"
HELP = "train an FC net, swap single layers between its initial and trained copies, both ways"
COLUMNS = ["seed"]
DIRECTIONS = {"reset": "trained net, layer i back at init", "graft": "initial net, layer i trained"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, nargs="+", help="hidden widths (default 2048 1024 512 256 128)")
    p.add_argument("--seeds", type=int, help="trained nets (default 3)")
    p.add_argument("--epochs", type=int, help="SGD epochs (default 25)")
    p.add_argument("--lr", type=float, help="SGD step size (default 0.01)")
    p.add_argument("--batch-size", type=int, help="minibatch size (default 256)")


def check(s: dict[str, Any]) -> None:
    require(len(s["layers"]) > 0 and all(w >= 1 for w in s["layers"]), f"--layers must be widths >= 1, got {s['layers']}")
    require(s["seeds"] >= 1, f"--seeds must be >= 1, got {s['seeds']}")
    require(s["epochs"] >= 1, f"--epochs must be >= 1, got {s['epochs']}")
    require(s["lr"] > 0, f"--lr must be > 0, got {s['lr']}")


def swaps(model: torch.nn.Module, initial: dict[str, torch.Tensor], splits: dict[str, DeviceSplit],
          inputs: str) -> dict[str, float]:
    """Test loss/acc with one Linear layer swapped at a time, both ways; the model ends as it began."""
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    layers = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    out = {}
    for i, layer in enumerate(layers, start=1):
        for direction, base, donor in (("reset", trained, initial), ("graft", initial, trained)):
            mixed = {k: (donor[k] if k.startswith(layer + ".") else v) for k, v in base.items()}
            model.load_state_dict(mixed)
            result = evaluate(model, splits["test"], inputs)
            out[f"{direction}_{i}_loss"], out[f"{direction}_{i}_acc"] = result["loss"], result["acc"]
    model.load_state_dict(initial)
    untrained = evaluate(model, splits["test"], inputs)
    out["init_test_loss"], out["init_test_acc"] = untrained["loss"], untrained["acc"]
    model.load_state_dict(trained)
    return out


def trainable(config: dict[str, Any], data: Mnist) -> None:
    spec = {"family": "mlp", "widths": config["layers"], "activation": config["activation"]}
    driver.train_in_trial(config, data, spec,
                          finish=lambda model, initial, splits: swaps(model, initial, splits, config["inputs"]))


def long_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per (seed, layer, direction) from the wide per-trial metrics."""
    rows = []
    for r in per_seed[per_seed["error"].eq("")].to_dict("records"):
        i = 1
        while f"reset_{i}_acc" in r and pd.notna(r[f"reset_{i}_acc"]):
            for direction in DIRECTIONS:
                rows.append({"seed": r["seed"], "layer": i, "direction": direction,
                             "test_loss": r[f"{direction}_{i}_loss"], "test_acc": r[f"{direction}_{i}_acc"],
                             "trained_test_acc": r["test_acc"], "init_test_acc": r["init_test_acc"]})
            i += 1
    return pd.DataFrame(rows)


def summarise(long: pd.DataFrame) -> pd.DataFrame:
    return (long.groupby(["layer", "direction"])[["test_acc", "test_loss"]]
            .agg(["mean", "std"]).fillna(0.0).pipe(lambda t: t.set_axis([f"{a}_{b}" for a, b in t.columns], axis=1))
            .reset_index())


def report(run_dir: Path, out: Path | None = None) -> None:
    plots.grouped_bars(Path(out or run_dir) / "transplant.png", read_table(run_dir / "results_summary.csv"), "layer", "direction", "test_acc_mean", "test_acc_std",
                       title="Test accuracy with one layer swapped (reset: trained net, layer at init; "
                             "graft: initial net, layer trained)")


def run(s: dict[str, Any], run_dir: Path, data: Mnist, res: driver.Resources) -> dict[str, Any]:
    space = {k: s[k] for k in ("layers", "activation", "epochs", "batch_size", "optimizer", "lr", "inputs")}
    space["seed"] = tune.grid_search(list(range(s["seeds"])))
    grid = driver.run(trainable, run_dir, "seeds", res, data, param_space=space,
                      metric="test_acc", mode="max", shown=["seed"])
    per_seed = driver.rows(grid, COLUMNS)
    long = long_table(per_seed)
    summary = summarise(long)
    write_csv(run_dir / "results_per_seed.csv", per_seed)
    write_csv(run_dir / "results.csv", long)
    write_csv(run_dir / "results_summary.csv", summary)
    report(run_dir)
    return {"seeds": len(per_seed), "errors": int(per_seed["error"].ne("").sum()),
            "trained_test_acc": round(float(per_seed["test_acc"].mean()), 4)}
