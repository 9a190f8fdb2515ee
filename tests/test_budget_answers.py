"""The budget study's design and statistics on synthetic trials (no Ray): the roles the confirmation trains, the
comparisons at equal depth where the old comparison confounded depth with shape, and the false-positive rate of
the comparisons under no effect."""

import gc
import math

import numpy as np
import pandas as pd
import pytest

from tune_mnist import stats
from tune_mnist.studies import budget_answers as answers, budget_design as design

SHAPES = ["uniform", "decreasing", "increasing", "free"]
WIDTHS = {1: {f: "126" for f in SHAPES},
          2: {"uniform": "110-113", "decreasing": "150-40", "increasing": "40-150", "free": "120-90"},
          3: {"uniform": "100-100-103", "decreasing": "140-60-26", "increasing": "26-60-140", "free": "90-120-80"}}
P = 100_000


def synthetic(rng: np.random.Generator, base: dict[int, float], effects: dict[tuple[int, str], float],
              runs: int = 1, per_stratum: int = 2, seeds: int = 5, noise: float = 0.001,
              selection_noise: float = 0.004) -> pd.DataFrame:
    """`runs` runs' search and confirmation rows, run i at P = 100,000 + i. Every (depth, family, weight decay
    off/on) gets per_stratum finished search trials whose true test loss is base[k] + effects[(k, family)]; the
    search's validation loss is the truth plus selection noise (one seed each); the chosen configurations train on
    evaluation seeds with a seed effect that all of a run's configurations share (3 x noise) plus their own."""
    numbers = np.arange(len(SHAPES) * 2 * per_stratum)
    search = pd.DataFrame([(P + run, k, n) for run in range(runs) for k in base for n in numbers],
                          columns=["P", "k", "number"])
    search["shape"] = [SHAPES[n % 4] for n in search["number"]]
    search["weight_decay"] = 1e-4 * ((search["number"] // 4) % 2)
    truth = search["k"].map(base) + [effects.get(key, 0.0) for key in zip(search["k"], search["shape"])]
    search = search.assign(stage="search", widths=[WIDTHS[k][f] for k, f in zip(search["k"], search["shape"])],
                           activation="relu", lr=1e-3 * (1 + search["number"] / 100), seed=search["number"],
                           config=[design.config_id(*key) for key in zip(search["P"], search["k"], search["number"])],
                           error="", stopped_early=0, val_loss=truth + selection_noise * rng.normal(size=len(search)),
                           test_loss=truth, test_acc=0.97, checkpoint="", truth=truth)
    chosen = design.choose(search, top=1)
    seeding = pd.DataFrame({"seed": design.evaluation_seeds(seeds), "i": range(seeds)})
    confirm = chosen.drop(columns="seed").merge(seeding, how="cross")
    shared = rng.normal(0, 3 * noise, (runs, seeds))[confirm["P"] - P, confirm["i"]]
    loss = confirm["truth"] + shared + noise * rng.normal(size=len(confirm))
    confirm = confirm.assign(stage="confirm", selection_val_loss=confirm["val_loss"], ablation=0, val_loss=loss,
                             test_loss=loss, test_acc=1.05 - loss + noise / 2 * rng.normal(size=len(confirm)),
                             checkpoint="c", member=0)
    return pd.concat([search, confirm.drop(columns="i")], ignore_index=True)


def tables(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    covered = answers.coverage(trials, SHAPES)
    return answers.shapes(trials, covered), answers.any_depth(trials, covered), answers.weight_decay(trials)


def row(frame: pd.DataFrame, **where) -> pd.Series:
    return frame[np.logical_and.reduce([frame[k] == v for k, v in where.items()])].iloc[0]


def test_per_depth_comparison_finds_the_shape_effect_that_the_old_comparison_confounded_with_depth():
    # one layer is best; at two layers decreasing beats uniform: the best non-uniform net (k = 2) against the best
    # uniform one (k = 1), the old comparison, says "uniform wins", though at equal depth decreasing wins
    trials = synthetic(np.random.default_rng(0), base={1: 0.070, 2: 0.080}, effects={(2, "decreasing"): -0.006})
    shaped, anywhere, _ = tables(trials)
    decreasing = row(shaped, k=2, shape="decreasing")
    loss = answers.comparison(decreasing, "loss")
    assert loss.detected and loss.difference.mean == pytest.approx(-0.006, abs=0.003) and loss.family == 3
    assert decreasing["a"].startswith("decreasing 150-40") and decreasing["b"].startswith("uniform 110-113")
    assert decreasing["metrics"] == "agree" and answers.comparison(decreasing, "acc").detected
    for shape in ("increasing", "free"):
        assert not answers.comparison(row(shaped, k=2, shape=shape), "loss").detected

    # the old comparison: the best non-uniform net against the best uniform net, whatever their depths
    old = answers.compare(answers.by_role(trials), P, "k=2 decreasing", "any uniform")
    assert old["b"].startswith("one layer") and old["loss"].detected and old["loss"].difference.mean > 0
    # whatever the depth, the best decreasing net is the one-layer net: no non-uniform decreasing net did better
    assert "has one layer" in row(anywhere, shape="decreasing")["note"]


def test_tuned_weight_decay_effect_is_found():
    rng = np.random.default_rng(1)
    trials = synthetic(rng, base={1: 0.07, 2: 0.08}, effects={})
    search = trials["stage"] == "search"
    trials.loc[search & (trials["weight_decay"] > 0), "val_loss"] -= 0.01  # weight decay helps in the search ...
    confirm = trials["stage"] == "confirm"
    trials.loc[confirm & (trials["weight_decay"] > 0), "test_loss"] -= 0.01  # ... and on fresh seeds
    decay = answers.weight_decay(trials).iloc[0]
    loss = answers.comparison(decay, "loss")
    assert loss.detected and loss.difference.mean < 0 and decay["a_config"] != decay["b_config"]


def test_false_positives_under_no_effect_stay_near_the_level(monkeypatch):
    monkeypatch.setattr(gc, "collect", lambda *args: 0)  # statsmodels' Holm collects garbage on every call
    # 200 runs (one P each) of a search at depth 2 where no family and no weight decay makes a difference
    trials = synthetic(np.random.default_rng(2), base={2: 0.08}, effects={}, runs=200, per_stratum=1, seeds=4)
    found = {"shape": answers.shapes(trials, answers.coverage(trials, SHAPES)),
             "weight decay": answers.weight_decay(trials)}
    for question, table in found.items():
        assert table["P"].nunique() == 200 and table["loss_p"].notna().all()
        detected = table.groupby("P")["loss_detected"].any().sum()
        assert detected <= 20, f"{detected} of 200 null runs detected a {question} difference"


def test_roles_of_the_confirmation():
    search = pd.DataFrame([
        {"P": P, "k": k, "shape": shape, "weight_decay": wd, "number": n, "val_loss": v, "config": f"c{n}",
         "error": "", "stopped_early": stopped, "widths": "1", "activation": "relu", "lr": 1e-3}
        for n, (k, shape, wd, v, stopped) in enumerate([
            (1, "uniform", 0.0, 0.10, 0), (1, "decreasing", 1e-4, 0.09, 0), (2, "uniform", 0.0, 0.12, 0),
            (2, "decreasing", 0.0, 0.11, 0), (2, "decreasing", 1e-4, 0.11, 0), (2, "free", 0.0, 0.01, 1)])])
    chosen = design.choose(search, top=2).set_index("config")["roles"].str.split(";")
    # c3 and c4 tie: the lower number wins; c5 stopped early; the best decreasing net (c1) has one layer
    assert chosen.to_dict() == {"c3": ["k=2 decreasing"], "c2": ["k=2 uniform"], "c0": ["any uniform", "decay off",
                                "top 2"], "c1": ["decay on", "top 1"]}


def test_the_search_and_the_confirmation_share_no_seed():
    assert min(design.evaluation_seeds(3)) > 100_000 and design.evaluation_seeds(2) == [1_000_000, 1_000_001]


def test_a_depth_at_chance_did_not_train_and_each_depth_keeps_its_best_lr():
    rows = [{"P": P, "stage": "grid", "k": k, "lr": lr, "seed": s, "params": 1, "error": "", "stopped_early": 0,
             "val_loss": val, "final_train_loss": train, "test_loss": val, "test_acc": 0.5}
            for k, lr, val, train in [(2, 1e-3, 0.10, 0.05), (2, 3e-3, 0.08, 0.03), (24, 1e-3, 2.30, 2.30),
                                      (24, 3e-3, 2.31, 2.302)] for s in (0, 1)]
    depths = design.depth_table(pd.DataFrame(rows)).set_index("k")
    assert depths.loc[2, "lr"] == 3e-3 and depths.loc[2, "trained"] and depths.loc[2, "note"] == ""
    assert not depths.loc[24, "trained"] and depths.loc[24, "note"] == "did not train: loss at chance"
    assert design.best_depth(depths.reset_index(), P) == 2
    assert design.window(1, 1, 100_000) == [1, 2] and design.window(4, 1, 100_000) == [3, 4, 5]
    assert design.window(2, 1, 5_000) == [2, 3]  # no one-layer net holds 5,000 within 1%


def test_ablation_pools_over_configurations():
    rng = np.random.default_rng(3)
    rows = []
    for config in range(3):
        for seed in range(4):
            for ablation in (0, 1):
                loss = 0.08 + 0.01 * config + (0.0 if ablation else -0.004) + 0.001 * rng.normal()
                rows.append({"P": P, "stage": "confirm", "config": f"c{config}", "seed": seed, "ablation": ablation,
                             "weight_decay": 0.0 if ablation else 1e-4, "test_loss": loss, "k": 2, "shape": "uniform",
                             "widths": "110-113", "activation": "relu", "error": "", "stopped_early": 0})
    table = answers.ablation(pd.DataFrame(rows)).set_index("config")
    pooled = stats.Comparison.from_row(table.loc["all"])
    assert pooled.detected and pooled.difference.mean == pytest.approx(-0.004, abs=0.001)
    assert table.loc["all", "unit"] == "configurations x 4 evaluation seeds" and table.loc["all", "n"] == 3


def test_importance_over_all_trials_finds_what_the_loss_depends_on():
    rng = np.random.default_rng(4)
    runs = pd.DataFrame({"k": rng.integers(1, 4, 80), "activation": rng.choice(["relu", "tanh"], 80),
                         "shape": rng.choice(SHAPES, 80), "decay": rng.choice(["off", "on"], 80),
                         "lr": 10 ** rng.uniform(-4, -2, 80)})
    runs["early"] = (np.log10(runs["lr"]) + 3) ** 2 + 0.01 * rng.normal(size=80)
    found = answers.importances(runs, "early")
    assert max(found, key=found.get) == "lr" and found["lr"] > 0.5 and math.isclose(sum(found.values()), 1)


def test_loss_and_accuracy_that_disagree_are_told_apart():
    def c(mean: float, p: float) -> stats.Comparison:
        return stats.Comparison(stats.Interval(mean, mean - 1, mean + 1, 5, 0.1), p, p, 0.01, "paired t-test", (5,))

    assert answers.agreement({"loss": c(-0.01, 0.001), "acc": c(0.01, 0.001)}) == "agree"
    assert answers.agreement({"loss": c(-0.01, 0.001), "acc": c(-0.01, 0.001)}) == "opposite"
    assert answers.agreement({"loss": c(-0.01, 0.001), "acc": c(0.01, 0.5)}) == "loss only"
    assert answers.agreement({"loss": c(-0.01, 0.5), "acc": c(0.01, 0.01)}) == "accuracy only"
