"""The budget study's answers as tables, from its trials.csv (and, for the importances, its Optuna journal).

Every comparison is between configurations the search chose on validation loss with its own seeds, trained again
on evaluation seeds (budget_design): test loss and test accuracy paired by evaluation seed, each metric with Holm's
correction over the comparisons of one question at one P (the shape question at equal depth: every depth and
family; at any depth: every family; weight decay: one test).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from tune_mnist import stats
from tune_mnist.studies import budget_design as design
from tune_mnist.studies.budget_design import finished

UNIT = "evaluation seeds"
METRICS = {"loss": ("test_loss", True), "acc": ("test_acc", False)}  # prefix: (column, lower is better)


def search_rows(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["stage"] == "search"]


def confirm_rows(trials: pd.DataFrame) -> pd.DataFrame:
    return finished(trials[trials["stage"] == "confirm"])


def by_role(trials: pd.DataFrame) -> dict[tuple[int, str], pd.DataFrame]:
    """Per (P, role), the finished confirmation runs of the configuration in that role, as found (with its own
    weight decay), indexed by seed."""
    confirm = confirm_rows(trials)
    confirm = confirm[confirm["ablation"].eq(0)]
    exploded = confirm.assign(role=confirm["roles"].str.split(";")).explode("role").set_index("seed")
    return dict(iter(exploded.groupby(["P", "role"])))


def label(row: Any) -> str:
    """A configuration in a few words: its family, widths and activation (the one-layer net by its width)."""
    shape = "one layer" if row["k"] == 1 else row["shape"]
    return f"{shape} {row['widths']} {row['activation']}"


def confirmed(trials: pd.DataFrame) -> pd.DataFrame:
    """The confirmation's runs of each configuration as found (with its own weight decay) where there is a
    confirmation, else every finished MLP of stage 1 (a run without a search); only runs with weights."""
    done = finished(trials)
    done = done[done["k"].gt(0) & done["checkpoint"].ne("")]
    confirm = done[done["stage"].eq("confirm")]
    return confirm[confirm["ablation"].eq(0)] if len(confirm) else done[done["stage"].eq("grid")]


def ranked(part: pd.DataFrame) -> list[pd.DataFrame]:
    """One P's configurations (each its runs), best first: by the search's validation loss where they were
    confirmed, else by mean validation loss over seeds."""
    if "config" in part and part["stage"].eq("confirm").all():
        return [runs for _, runs in sorted(part.groupby("config"), key=lambda g: g[1]["selection_val_loss"].iloc[0])]
    return sorted((runs for _, runs in part.groupby(design.CONFIG)), key=lambda runs: runs["val_loss"].mean())


# ----------------------------------------------------------------------------------------------------------------
# What the search covered

def coverage(trials: pd.DataFrame, shapes: list[str]) -> pd.DataFrame:
    """Per P, depth of the search and shape family (every family the settings name): trials started, finished,
    stopped early, diverged, and the best finished trial's validation loss."""
    search = search_rows(trials)
    if search.empty:
        return pd.DataFrame()
    keys = ["P", "k", "shape"]
    every = search[["P", "k"]].drop_duplicates().merge(pd.DataFrame({"shape": shapes}), how="cross")
    counts = search.assign(diverged=search["error"].ne("")).groupby(keys).agg(
        started=("val_loss", "size"), stopped_early=("stopped_early", "sum"), diverged=("diverged", "sum"))
    done = finished(search).groupby(keys).agg(finished=("val_loss", "size"), best_val_loss=("val_loss", "min"))
    out = every.merge(counts.join(done), on=keys, how="left")
    counted = ["started", "finished", "stopped_early", "diverged"]
    out[counted] = out[counted].fillna(0).astype(int)
    return out[[*keys, *counted, "best_val_loss"]]


def missing(covered: pd.DataFrame, P: int, k: int | None, shape: str) -> str:
    """Why a family has no confirmed net at depth k (None: at any depth)."""
    part = covered[(covered["P"] == P) & (covered["shape"] == shape) & (k is None or covered["k"] == k)]
    where = "" if k is None else f" at k = {k}"
    if part.empty or part["started"].sum() == 0:
        return f"no {shape} trial was searched{where}"
    if part["finished"].sum() == 0:
        return (f"no {shape} trial finished{where} ({part['started'].sum()} started: {part['stopped_early'].sum()} "
                f"stopped early, {part['diverged'].sum()} diverged)")
    return f"the {shape} net's confirmation runs did not finish{where}"


# ----------------------------------------------------------------------------------------------------------------
# Comparisons on evaluation seeds

def compare(roles: dict[tuple[int, str], pd.DataFrame], P: int, a_role: str, b_role: str) -> dict[str, Any] | None:
    """At P, the configurations in roles a and b (by_role), each metric a − b paired by evaluation seed; None where
    either is missing or they share fewer than 2 seeds."""
    if (P, a_role) not in roles or (P, b_role) not in roles:
        return None
    a, b = roles[P, a_role], roles[P, b_role]
    seeds = a.index.intersection(b.index)
    if len(seeds) < 2:
        return None
    row = {"a": label(a.iloc[0]), "b": label(b.iloc[0]), "a_config": a["config"].iat[0], "b_config": b["config"].iat[0]}
    for prefix, (column, _) in METRICS.items():
        row[prefix] = stats.paired_test(a.loc[seeds, column], b.loc[seeds, column], unit=UNIT)
    return row


def family_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Comparison rows as flat columns, each metric Holm-corrected over the rows of one P that were tested (the
    comparisons of one question at one budget)."""
    tested = [r for r in rows if "loss" in r]
    for P in {r["P"] for r in tested}:
        family = [r for r in tested if r["P"] == P]
        for prefix in METRICS:
            for r, c in zip(family, stats.holm_family([r[prefix] for r in family])):
                r[prefix] = c
    out = []
    for r in rows:
        flat = {k: v for k, v in r.items() if k not in METRICS}
        for prefix in METRICS:
            if prefix in r:
                flat.update({f"{prefix}_{k}": v for k, v in r[prefix].row().items()})
        flat["metrics"] = agreement(r) if "loss" in r else ""
        out.append(flat)
    return pd.DataFrame(out)


def winner(c: stats.Comparison, lower_is_better: bool) -> str:
    """"a", "b", or "" where the test detects no difference."""
    if not c.detected:
        return ""
    return "a" if (c.difference.mean < 0) == lower_is_better else "b"


def agreement(row: dict[str, Any]) -> str:
    """Whether loss and accuracy say the same: "agree", "opposite", "loss only" or "accuracy only" detects."""
    by_loss, by_acc = (winner(row[p], METRICS[p][1]) for p in ("loss", "acc"))
    if by_loss == by_acc:
        return "agree"
    if by_loss and by_acc:
        return "opposite"
    return "loss only" if by_loss else "accuracy only"


def comparison(row: pd.Series, prefix: str) -> stats.Comparison:
    """A table row's comparison of one metric ("loss", "acc"), as family_table wrote it."""
    return stats.Comparison.from_row({k.removeprefix(f"{prefix}_"): v for k, v in row.items()
                                      if k.startswith(f"{prefix}_")})


def shapes(trials: pd.DataFrame, covered: pd.DataFrame) -> pd.DataFrame:
    """The shape question at equal depth: per P and depth k >= 2 of the search, each non-uniform family's best
    net of that depth against the uniform one (a − b: family minus uniform)."""
    roles, rows = by_role(trials), []
    for (P, k), part in covered[covered["k"] >= 2].groupby(["P", "k"]):
        for shape in part["shape"]:
            if shape == "uniform":
                continue
            found = compare(roles, P, f"k={k} {shape}", f"k={k} uniform")
            note = "; ".join(missing(covered, P, k, f) for f in (shape, "uniform") if (P, f"k={k} {f}") not in roles)
            rows.append({"P": P, "k": k, "shape": shape, **(found or {}),
                         "note": "" if found else note or "fewer than 2 evaluation seeds finished"})
    return family_table(rows)


def any_depth(trials: pd.DataFrame, covered: pd.DataFrame) -> pd.DataFrame:
    """The other reading: per P, each non-uniform family's best net at any depth of the search against the best
    uniform net at any depth (each family with the same trials at every depth)."""
    roles, search, rows = by_role(trials), finished(search_rows(trials)), []
    for P, part in covered.groupby("P"):
        for shape in part["shape"].unique():
            if shape == "uniform":
                continue
            found = compare(roles, P, f"any {shape}", "any uniform")
            note = ""
            if not found:
                best = search[(search["P"] == P) & (search["shape"] == shape)].nsmallest(1, "val_loss")
                note = (f"the best {shape} net found has one layer (at k = 1 every family is the one-layer net): no "
                        f"non-uniform {shape} net did better" if len(best) and best["k"].iloc[0] == 1
                        else missing(covered, P, None, shape))
            rows.append({"P": P, "shape": shape, **(found or {}), "note": note})
    return family_table(rows)


def weight_decay(trials: pd.DataFrame) -> pd.DataFrame:
    """Tuned against tuned: per P, the best configuration with weight decay against the best without (each with
    its own lr; a − b: with minus without)."""
    roles = by_role(trials)
    rows = [{"P": P, **(found or {}), "note": "" if found else "no finished trial on one side"}
            for P in sorted(search_rows(trials)["P"].unique())
            for found in [compare(roles, P, "decay on", "decay off")]]
    return family_table(rows)


def ablation(trials: pd.DataFrame) -> pd.DataFrame:
    """The secondary table: each confirmed configuration with weight decay against itself without it (test loss,
    paired by seed), and per P over all of them ("all"), whose unit is the configuration (stats.nested_test)."""
    confirm = confirm_rows(trials)
    confirm = confirm[confirm["weight_decay"].gt(0) | confirm["ablation"].eq(1)]
    rows, pooled = [], []
    for (P, config), part in confirm.groupby(["P", "config"]):
        on, off = (part[part["ablation"] == a].set_index("seed")["test_loss"] for a in (0, 1))
        seeds = on.index.intersection(off.index)
        if len(seeds) < 2:
            continue
        c = stats.paired_test(on.loc[seeds], off.loc[seeds], unit=UNIT)
        pooled.append(pd.DataFrame({"P": P, "config": config, "d": on.loc[seeds] - off.loc[seeds]}))
        rows.append({"P": P, "config": config, "net": label(part.iloc[0]),
                     "weight_decay": part["weight_decay"].max(), **c.row()})
    for P, part in pd.concat(pooled).groupby("P") if pooled else []:
        c = stats.nested_test(part["d"], part["config"], unit="configurations", within=UNIT)
        rows.append({"P": P, "config": "all", "net": "", "weight_decay": math.nan, **c.row()})
    return pd.DataFrame(rows)


def confirmed_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Every confirmed configuration as found: its roles, the search's validation loss that chose it, and its test
    loss and accuracy over evaluation seeds with 95% intervals."""
    rows = []
    for P, part in confirmed(trials).groupby("P"):
        for runs in ranked(part):
            first = runs.iloc[0]
            rows.append({"P": P, "net": label(first), **{c: first[c] for c in design.CONFIG},
                         "roles": first.get("roles", ""), "selection_val_loss": first.get("selection_val_loss"),
                         "seeds": len(runs), **stats.interval_columns("test_loss", runs["test_loss"]),
                         **stats.interval_columns("test_acc", runs["test_acc"])})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# Importances

def importance(run_dir: Path, trials: pd.DataFrame, grace: int) -> pd.DataFrame:
    """Optuna's importances per P of what every search trial sampled (depth, activation, family, weight
    decay off or on, lr): over all trials, by their validation loss at epoch `grace` (the first rung, which every
    trial reached), and over the finished trials, by their final validation loss."""
    import optuna

    from tune_mnist.tuning.search import journal

    search = search_rows(trials)
    if search.empty or not (run_dir / "optuna.journal").is_file():
        return pd.DataFrame()
    storage, rows = journal(run_dir / "optuna.journal"), []
    for P, part in search.groupby("P"):
        early = {}
        for k in part["k"].unique():
            study = optuna.load_study(study_name=design.study_name(P, k), storage=storage)
            early.update({(k, t.number): t.intermediate_values.get(grace) for t in study.get_trials(deepcopy=False)})
        part = part.assign(decay=part["weight_decay"].gt(0).map({False: "off", True: "on"}),
                           early=[early.get((k, n)) for k, n in zip(part["k"], part["number"])])
        for over, value, runs in ((f"all trials, validation loss at epoch {grace}", "early", part),
                                  ("finished trials, final validation loss", "val_loss", finished(part))):
            runs = runs.dropna(subset=[value])
            found = importances(runs, value)
            rows += [{"P": P, "over": over, "trials": len(runs), "param": k, "importance": v} for k, v in found.items()]
    return pd.DataFrame(rows)


def importances(runs: pd.DataFrame, value: str) -> dict[str, float]:
    """Optuna's importances (its default, PED-ANOVA) of the parameters that vary among these trials ({} for fewer
    than 2 trials)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    spaces = {"k": IntDistribution(int(runs["k"].min()), int(runs["k"].max())),
              "activation": CategoricalDistribution(sorted(runs["activation"].unique())),
              "shape": CategoricalDistribution(sorted(runs["shape"].unique())),
              "decay": CategoricalDistribution(sorted(runs["decay"].unique())),
              "lr": FloatDistribution(float(runs["lr"].min()), float(runs["lr"].max()), log=True)}
    spaces = {name: d for name, d in spaces.items() if runs[name].nunique() > 1}
    if len(runs) < 2 or not spaces:
        return {}
    study = optuna.create_study()
    study.add_trials([optuna.trial.create_trial(params={n: to_python(row[n]) for n in spaces}, distributions=spaces,
                                                value=float(row[value])) for _, row in runs.iterrows()])
    with warnings.catch_warnings():  # Optuna's caveat on thinly sampled values
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(study)


def to_python(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
