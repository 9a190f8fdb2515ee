"""The transplant study's answers, from its CSVs: which trained layers carry what the net learnt, as tests, a figure
and REPORT.md.

Every test compares a swapped net with the net it starts from, on the same seed: a reset (the trained net with one
layer back at its initial weights) with the trained net, a graft (the initial net with one layer trained) with the
initial net. A paired t-test over seeds, each seed an independently trained net; every layer, both directions, test
accuracy and test loss, all in one family under Holm's correction. Test accuracy decides which layers carry the
learning; test loss is stated beside it, and where the two disagree the report says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tune_mnist import plots, runs, stats
from tune_mnist.files import read_table, save_figure
from tune_mnist.report import for_run

QUESTION = "Which trained layers carry what the network learnt?"
START = {"reset": "trained", "graft": "init"}  # the net each direction's swap starts from (its columns' prefix)
METRICS = {"test_acc": ("test accuracy", False), "test_loss": ("test loss", True)}  # words, lower is better


def tests(long: pd.DataFrame) -> pd.DataFrame:
    """tests.csv: per layer, direction and metric, the swapped net against the net it starts from, paired by seed
    (`swapped` and `start` are their means), Holm over every test of the table, power at its strictest step."""
    keys, found = [], []
    order = long["direction"].map(list(START).index)  # reset, then graft, per layer
    for (layer, _), part in long.assign(order=order).groupby(["layer", "order"]):
        direction, part = part["direction"].iloc[0], part.set_index("seed")
        for metric in METRICS:
            start = part[f"{START[direction]}_{metric}"]
            found.append(stats.paired_test(part[metric], start))
            keys.append({"layer": layer, "fan": part["fan"].iloc[0], "direction": direction, "metric": metric,
                         "swapped": part[metric].mean(), "start": start.mean()})
    return pd.DataFrame([{**k, **stats.strictest_power(c).row()} for k, c in zip(keys, stats.holm_family(found))])


def summarise(long: pd.DataFrame) -> pd.DataFrame:
    """results_summary.csv: per layer and direction, the swapped nets' test accuracy and loss over seeds (mean and
    95% interval); at layer 0 (fan "none") the net each direction starts from."""
    seeds = long[(long["layer"] == 1) & (long["direction"] == "reset")]  # one row per seed
    starts = [pd.DataFrame({"layer": 0, "fan": "none", "direction": direction, "test_acc": seeds[f"{net}_test_acc"],
                            "test_loss": seeds[f"{net}_test_loss"]}) for direction, net in START.items()]
    rows = []
    for (layer, direction), part in pd.concat([*starts, long]).groupby(["layer", "direction"], sort=False):
        acc, loss = stats.mean_interval(part["test_acc"]), stats.mean_interval(part["test_loss"])
        rows.append({"layer": layer, "fan": part["fan"].iloc[0], "direction": direction, "seeds": acc.n,
                     **acc.columns("test_acc"), **loss.columns("test_loss")})
    return pd.DataFrame(rows)


def carriers(table: pd.DataFrame) -> dict[str, list[int]]:
    """By test accuracy: the layers whose reset costs accuracy beyond noise (after Holm), those whose graft alone
    raises it, and either: the layers that carry the learning."""
    acc = table[(table["metric"] == "test_acc") & table["detected"].astype(bool)]
    costs = sorted(acc[(acc["direction"] == "reset") & (acc["difference"] < 0)]["layer"].astype(int))
    raises = sorted(acc[(acc["direction"] == "graft") & (acc["difference"] > 0)]["layer"].astype(int))
    return {"carrying_layers": sorted(set(costs) | set(raises)), "reset_costs": costs, "graft_raises": raises}


def named(layers: list[int]) -> str:
    """"layer 2", "layers 1 and 3" or "layers 1, 2 and 4"."""
    words = [str(i) for i in layers]
    return f"layer {words[0]}" if len(words) == 1 else f"layers {', '.join(words[:-1])} and {words[-1]}"


def swap_words(row: pd.Series) -> tuple[str, str]:
    """The two nets a test compares, in words."""
    layer = f"layer {row['layer']} ({row['fan']})"
    if row["direction"] == "reset":
        return f"the trained net with {layer} reset to its initial weights", "the trained net"
    return f"the initial net with {layer} trained", "the initial net"


def sentence(row: pd.Series) -> str:
    """stats.in_words for one test of tests.csv."""
    words, lower = METRICS[row["metric"]]
    return stats.in_words(stats.Comparison.from_row(row), *swap_words(row), lower_is_better=lower, metric=words)


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def not_detected(table: pd.DataFrame, metric: str) -> str:
    """The swaps whose change in this metric no test detected, with what the run could have detected."""
    missed = table[(table["metric"] == metric) & ~table["detected"].astype(bool)]
    if missed.empty:
        return ""
    lists = [f"{'resetting' if d == 'reset' else 'grafting'} {named(sorted(part['layer'].astype(int)))}"
             for d in START if len(part := missed[missed["direction"] == d])]
    mde = missed["mde"].dropna()
    power = (f"; the run could detect changes of about {mde.min():.2g} to {mde.max():.2g} with 80% power"
             if len(mde) else "")
    return (f"No change in {METRICS[metric][0]} detected at n = {int(missed['n'].iloc[0])} seeds for "
            f"{' or '.join(lists)} (Holm over {int(missed['family'].iloc[0])} tests{power}).")


def verdict(row: pd.Series) -> str:
    """better, worse or none: a detected test's direction for the swapped net, by its own metric."""
    if not row["detected"]:
        return "none"
    return "worse" if (row["difference"] > 0) == METRICS[row["metric"]][1] else "better"


def disagreements(table: pd.DataFrame) -> list[str]:
    """The swaps whose verdicts by test accuracy and by test loss differ: each metric's detected change in words,
    the other's interval."""
    out = []
    for (layer, direction), part in table.groupby(["layer", "direction"], sort=False):
        rows = [part[part["metric"] == m].iloc[0] for m in METRICS]
        if len({verdict(r) for r in rows}) == 1:
            continue
        said = [sentence(r) if r["detected"] else f"no change in {METRICS[r['metric']][0]} detected (95% CI "
                f"{r['difference_low']:.2g} to {r['difference_high']:.2g})" for r in rows]
        out.append(f"{'Resetting' if direction == 'reset' else 'Grafting'} layer {layer} ({part['fan'].iloc[0]}): "
                   + "; ".join(said))
    return out


def answer(table: pd.DataFrame, per_seed: pd.DataFrame) -> str:
    """Which layers carry the learning by test accuracy, each detected change in words, what was not detected at
    this n, where test loss disagrees, and the nets the swaps start from."""
    carry, costs, raises = carriers(table).values()
    opening = f"No single layer is shown to carry what the network learnt at n = {int(table['n'].iloc[0])} seeds."
    if carry:
        how = ([f"resetting {named(costs)} of the trained net costs accuracy"] if costs else []) + \
              ([f"grafting trained {named(raises)} alone into the initial net raises it"] if raises else [])
        opening = (f"By test accuracy, {named(carry)} carr{'ies' if len(carry) == 1 else 'y'} what the network "
                   f"learnt: {'; '.join(how)}.")
    detected = table[(table["metric"] == "test_acc") & table["detected"].astype(bool)]
    lines = [opening, "", *(f"- {capital(sentence(r))}." for _, r in detected.iterrows())]
    lines += ["", not_detected(table, "test_acc")]
    differ = disagreements(table)
    lines += ["", "Test loss agrees with test accuracy on every swap." if not differ else
              "Where test loss and test accuracy disagree:", *(f"- {d}." for d in differ)]
    ok = per_seed[per_seed["error"].eq("")]
    trained, init = (stats.mean_interval(ok[c], unit="seeds") for c in ("test_acc", "init_test_acc"))
    lines += ["", f"Trained, the nets reach test accuracy {trained}; at their initial weights, {init}."]
    return "\n".join(lines)


def method(table: pd.DataFrame, per_seed: pd.DataFrame, s: dict) -> str:
    """The Method section: what each test compares, on which seeds, the correction, the intervals and the power."""
    n, m = int(table["n"].iloc[0]), int(table["family"].iloc[0])
    layers = table["layer"].nunique()
    acc = table[table["metric"] == "test_acc"]["mde"].dropna()
    power = (f"from {acc.min():.2g} to {acc.max():.2g} in test accuracy" if len(acc) else "not computable")
    images = f"{s['eval_limit']:,}" if s["eval_limit"] else "10,000"
    return (f"Each of {len(per_seed)} seeds trains one net for {s['epochs']} epochs (its seed sets its initial "
            "weights and its data order) and keeps its initial weights. For each of its "
            f"{layers} dense layers (the output layer too), two swapped nets are evaluated on {images} test images: "
            "**reset**, the trained net with that layer back at its initial weights, and **graft**, the initial net "
            "with that layer trained. Each test compares a swapped net with the net it starts from (reset: the "
            "trained net; graft: the initial net) on the same seed: a paired t-test over the "
            f"{n} seeds that trained without error, of test accuracy and of test loss. All {m} tests (layers x reset "
            "and graft x accuracy and loss) are one family under Holm's correction at 5%. Which layers carry the "
            "learning is decided by test accuracy, fixed before the run; test loss is stated where it disagrees. "
            "Nothing is selected, so no seeds are set aside.\n\n"
            "Intervals are 95% t-intervals over seeds: they hold the variation between training runs "
            f"(initialisation and data order), not the test set's sampling (every net sees the same {images} images), "
            "nor other widths, learning rates or epochs. A change not detected is not shown to be absent: at this n "
            "the tests detect, with 80% power at the Bonferroni level 0.05/"
            f"{m} (Holm's strictest step) and the observed spread, changes {power}.")


def draw(path: Path, summary: pd.DataFrame, table: pd.DataFrame) -> None:
    """Per metric a panel: bars of the swapped nets' mean over seeds with 95% intervals, reset and graft side by
    side per layer, at "none" the nets they start from; a star over each change detected after Holm."""
    labels = {"reset": "reset: trained net, this layer at init", "graft": "graft: initial net, this layer trained"}
    fig, axes = plots.pyplot().subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for ax, (metric, (words, _)) in zip(axes, METRICS.items()):
        for i, direction in enumerate(START):
            part = summary[summary["direction"] == direction].sort_values("layer")
            means = part[metric].to_numpy()
            err = np.vstack([means - part[f"{metric}_low"], part[f"{metric}_high"] - means]).clip(min=0)
            at = np.arange(len(part)) + (i - 0.5) * 0.4
            ax.bar(at, means, 0.4, yerr=err, capsize=3, label=labels[direction])
            found = table[(table["direction"] == direction) & (table["metric"] == metric)].sort_values("layer")
            for x, top, hit in zip(at[1:], means[1:] + err[1][1:], found["detected"].astype(bool)):
                if hit:
                    ax.annotate("*", (x, top), ha="center", va="bottom", fontsize=14)
        ax.set_xticks(np.arange(len(part)), [f"{r.layer}\n{r.fan}" if r.layer else "none"
                                             for r in part.itertuples()])
        ax.set(xlabel="layer swapped", ylabel=f"{words} (mean, 95% CI over seeds)")
        if metric == "test_loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle("One layer swapped: * marks a change from the net the swap starts from, detected after Holm")
    save_figure(path, fig)


def write(run_dir: Path, out: Path) -> None:
    """The figure and REPORT.md into `out`, from the run's CSVs."""
    per_seed, table = read_table(run_dir / "results_per_seed.csv"), read_table(run_dir / "tests.csv")
    summary = read_table(run_dir / "results_summary.csv")
    fan = list(dict.fromkeys(table["fan"]))
    net = "→".join([fan[0].split("→")[0], *(f.split("→")[1] for f in fan)])
    draw(out / "transplant.png", summary, table)
    md = for_run(run_dir, "transplant: which trained layers carry what the network learnt?", QUESTION)
    md.answer(answer(table, per_seed))
    md.section("Method", method(table, per_seed, runs.read(run_dir)["settings"]))
    md.section("Tests", f"`tests.csv`: each swap of the {net} net against the net it starts from, paired by seed: "
                        "`swapped` and `start` means, their `difference` (swapped − start) with its 95% interval, "
                        "`p`, Holm's `p_adjusted` over the `family`, `detected`, and `mde`, the change the test "
                        "detects with 80% power at the Bonferroni level.")
    md.table(table, ["layer", "fan", "direction", "metric", "swapped", "start", "difference", "difference_low",
                     "difference_high", "p", "p_adjusted", "detected", "mde"], max_rows=len(table))
    md.section("The nets", "`results_per_seed.csv`: each seed's parameters and test accuracy and loss, trained and "
                           "initial.")
    md.table(per_seed, ["seed", "params", "test_acc", "test_loss", "init_test_acc", "init_test_loss",
                        "final_train_acc", "error"])
    md.section("Figures")
    md.figure(out / "transplant.png", "Test accuracy and loss with one layer swapped, 95% intervals over seeds; "
                                      "at 'none' the trained net (reset) and the initial net (graft)")
    md.write(out)
