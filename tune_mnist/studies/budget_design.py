"""The budget study's design as rules on its trials table, shared by the run (budget.py) and its report
(budget_report.py): the seeds of each stage, the learning rate each depth of stage 1 keeps and whether the depth
trained, the depths the search covers, and the configurations the confirmation trains, each with its roles.

Every choice is made on validation loss with selection seeds (stage 1: 0, 1, ...; the search: its trial numbers);
the confirmation trains the chosen configurations again on evaluation seeds, which no choice ever saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from tune_mnist import closed_form

CONFIG = ["k", "widths", "shape", "activation", "lr", "weight_decay"]  # what makes a configuration
CHANCE_LOSS = math.log(10)  # cross-entropy of a net that guesses uniformly among MNIST's 10 classes
DID_NOT_TRAIN = 0.9  # a depth whose final training loss stays above this share of chance did not train
EVALUATION_SEED = 1_000_000  # evaluation seeds are EVALUATION_SEED + i: above every selection seed
DECAY = ("off", "on")  # weight decay 0, or a tuned weight decay: a stratum of the search like the shape family


def evaluation_seeds(n: int) -> list[int]:
    return [EVALUATION_SEED + i for i in range(n)]


def study_name(P: int, k: int) -> str:
    """The Optuna study of the search at depth k (each depth has its own)."""
    return f"budget-P{P}-k{k}"


def config_id(P: int, k: int, number: int) -> str:
    """A search trial's name, which its confirmation rows carry in `config`."""
    return f"P{P}-k{k}-{number}"



def strata(shapes: Sequence[str]) -> int:
    """The search's strata: each shape family with weight decay off and on."""
    return len(shapes) * len(DECAY)

def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Members that trained to the end."""
    return trials[trials["error"].eq("") & trials["stopped_early"].eq(0)]


def depth_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Stage 1 per P and depth k: the lr with the lowest mean validation loss over seeds (among the lrs whose
    seeds all trained to the end), and at that lr the means over seeds of final training loss, validation and
    test loss and test accuracy, with the spread (std) of training and test loss; `trained` is False where the
    final training loss stays at chance (`note` says so), and where no lr trained to the end."""
    grid = trials[trials["stage"] == "grid"]
    rows = []
    for (P, k), part in grid.groupby(["P", "k"]):
        done = finished(part)
        whole = [lr for lr, runs in part.groupby("lr") if len(finished(runs)) == len(runs)]
        per_lr = done[done["lr"].isin(whole)].groupby("lr")["val_loss"].mean()
        row = {"P": P, "k": k, "params": int(part["params"].iloc[0]), "lrs": len(part["lr"].unique()),
               "seeds": part["seed"].nunique()}
        if per_lr.empty:
            rows.append({**row, "trained": False, "note": "did not train: every learning rate diverged"})
            continue
        runs = done[done["lr"] == per_lr.idxmin()]
        loss = runs["final_train_loss"].mean()
        trained = bool(loss < DID_NOT_TRAIN * CHANCE_LOSS)
        rows.append({**row, "lr": per_lr.idxmin(), "val_loss": per_lr.min(), "final_train_loss": loss,
                     "train_spread": runs["final_train_loss"].std(ddof=1), "test_loss": runs["test_loss"].mean(),
                     "test_spread": runs["test_loss"].std(ddof=1), "test_acc": runs["test_acc"].mean(),
                     "trained": trained, "note": "" if trained else "did not train: loss at chance"})
    return pd.DataFrame(rows)


def best_depth(depths: pd.DataFrame, P: int) -> int | None:
    """The depth (k >= 1) that trained with the lowest validation loss at its lr; None where none trained."""
    part = depths[(depths["P"] == P) & depths["trained"] & (depths["k"] > 0)]
    return None if part.empty else int(part.loc[part["val_loss"].idxmin(), "k"])


def window(best: int, width: int, P: int) -> list[int]:
    """The best depth and `width` neighbours on each side, those of them that can be held to P."""
    return [k for k in range(best - width, best + width + 1) if closed_form.holds(k, P)]


def choose(search: pd.DataFrame, top: int) -> pd.DataFrame:
    """The search's configurations to confirm, per P one row per configuration with its `roles` (";"-joined),
    each chosen by the lowest validation loss among finished trials (ties: the lower trial number):
    "k=K F": the best of family F at depth K >= 2 (the shape comparison at equal depth);
    "any F": the best of family F at any depth of the search (for non-uniform families only where K >= 2: at
    K = 1 every family is the one-layer net, so a family whose best has one layer has no non-uniform net to show);
    "decay off" / "decay on": the best without / with weight decay; "top N": the N best overall (for export)."""
    done = finished(search).sort_values(["P", "val_loss", "number"], kind="stable")
    deep = done[done["k"] >= 2].groupby(["P", "k", "shape"]).head(1)
    families = done.groupby(["P", "shape"]).head(1)
    families = families[families["shape"].eq("uniform") | families["k"].ge(2)]
    decays = done.groupby(["P", done["weight_decay"].gt(0)]).head(1)
    tops = done.groupby("P").head(top)
    picks = pd.concat([
        deep.assign(role=[f"k={k} {f}" for k, f in zip(deep["k"], deep["shape"])]),
        families.assign(role="any " + families["shape"]),
        decays.assign(role=decays["weight_decay"].gt(0).map({False: "decay off", True: "decay on"})),
        tops.assign(role=[f"top {r + 1}" for r in tops.groupby("P").cumcount()])])
    roles = picks.groupby("config", sort=False)["role"].agg(";".join)
    return done.drop_duplicates("config").set_index("config").loc[roles.index].assign(roles=roles).reset_index()
