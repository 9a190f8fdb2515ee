"""corruption: its statistics on synthetic runs (no Ray), then end to end through real Ray Tune on MNIST subsets."""

import dataclasses
import re
import time

import numpy as np
import pandas as pd
import pytest

from conftest import run_notebook, run_study
from tune_mnist import cli, runs, settings, stats
from tune_mnist.files import read_table, write_csv
from tune_mnist.studies import corruption, corruption_report as answers, redraw

P = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)


def synthetic(clean: dict, drop: dict, seeds: int = 10, seed_sd: float = 0.01, noise: float = 0.002,
              rng: int = 0, family: str = "mlp") -> pd.DataFrame:
    """Stage 2's rows: accuracy clean * (1 - drop * p^2), plus a seed effect every activation shares at each p (the
    same seed's initialisation, data order and noise) and noise of each run's own."""
    rng = np.random.default_rng(rng)
    shared = rng.normal(0, seed_sd, size=(seeds, len(P)))
    rows = []
    for a in clean:
        for s in range(seeds):
            for j, p in enumerate(P):
                acc = clean[a] * (1 - drop[a] * p**2) + shared[s, j] * p + rng.normal(0, noise)
                rows.append({"family": family, "activation": a, "seed": s, "p": p, "lr": 1e-3, "error": "",
                             "test_acc": acc, "test_loss": -np.log(acc) + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def verdicts(per_run: pd.DataFrame, measure: str = "retention") -> pd.DataFrame:
    repeats = answers.per_repeat(per_run)
    compared = answers.comparisons(repeats)
    return compared[compared["measure"] == measure].set_index(["a", "b"])


def test_retention_is_the_seed_s_accuracy_over_its_clean_accuracy_averaged_over_p():
    per_run = synthetic({"relu": 0.97}, {"relu": 0.3}, seeds=3)
    per_run.loc[(per_run["seed"] == 2) & (per_run["p"] == 0.4), "error"] = "diverged"
    repeats = answers.per_repeat(per_run).set_index("seed")
    assert list(repeats.index) == [0, 1]  # a seed without a run at every p has no curve to compare
    curve = per_run[per_run["seed"] == 1].sort_values("p")
    clean = curve["test_acc"].iloc[0]
    assert repeats.loc[1, "clean_acc"] == clean
    ratio = (curve["test_acc"] / clean).to_numpy()
    expected = sum((ratio[i] + ratio[i + 1]) / 2 * (P[i + 1] - P[i]) for i in range(len(P) - 1)) / 0.9
    assert repeats.loc[1, "retention"] == pytest.approx(expected)
    assert repeats.loc[1, "accuracy"] == pytest.approx(expected * clean)
    summary = answers.summarise(per_run, answers.per_repeat(per_run)).set_index("p")
    assert (summary["repeats"] == 2).all() and summary.loc[0.0, "retention"] == pytest.approx(1.0)


def test_retention_does_not_reward_a_higher_clean_accuracy_that_absolute_accuracy_does():
    """The old ranking's defect: gelu and tanh keep the same share of their clean accuracy, but gelu starts higher.
    By absolute accuracy gelu wins beyond noise; by retention no difference is detected; sigmoid keeps less."""
    per_run = synthetic({"gelu": 0.975, "tanh": 0.955, "sigmoid": 0.96}, {"gelu": 0.3, "tanh": 0.3, "sigmoid": 0.36})
    retention, accuracy = verdicts(per_run), verdicts(per_run, "accuracy")
    pair = retention.loc[("tanh", "gelu")] if ("tanh", "gelu") in retention.index else retention.loc[("gelu", "tanh")]
    assert not pair["detected"] and pair["tests"] == 3
    assert accuracy.loc[("gelu", "tanh"), "detected"]
    assert retention.xs("sigmoid", level="b")["detected"].all()  # last by retention, below both beyond noise


def test_paired_tests_find_a_difference_the_shared_seeds_hide_from_welch():
    """A seed effect every activation shares at each p is ten times the activations' difference: pairing by seed
    cancels it, a Welch test over the same numbers does not."""
    per_run = synthetic({"relu": 0.97, "sigmoid": 0.97}, {"relu": 0.30, "sigmoid": 0.305}, seeds=8, seed_sd=0.05,
                        noise=0.0005, rng=3)
    pair = verdicts(per_run).iloc[0]
    assert pair.name == ("relu", "sigmoid") and pair["detected"] and pair["test"] == "paired t-test"
    repeats = answers.per_repeat(per_run)
    welch = stats.welch_test(*(repeats[repeats["activation"] == a]["retention"] for a in ("relu", "sigmoid")))
    assert not welch.detected


def test_no_activation_is_separated_when_none_differs(frozen_gc):
    """200 runs of three activations that do not differ, each seed's values shared in part by every activation: the
    family of pairwise tests of each measure finds a difference in at most 10% of them (Holm holds 5%)."""
    rng = np.random.default_rng(7)
    found = dict.fromkeys(answers.MEASURES, 0)
    for _ in range(200):
        shared = rng.normal(0, 0.01, size=(6, 3))
        repeats = pd.DataFrame([{"family": "mlp", "activation": a, "seed": s,
                                 **dict(zip(answers.MEASURES, shared[s] + rng.normal(0, 0.003, 3)))}
                                for a in ("relu", "tanh", "gelu") for s in range(6)])
        compared = answers.comparisons(repeats)
        for measure in found:
            found[measure] += bool(compared[compared["measure"] == measure]["detected"].any())
    assert max(found.values()) / 200 <= 0.10, found


def test_the_ranking_names_the_best_and_who_is_below_it():
    per_run = synthetic({"relu": 0.97, "gelu": 0.972, "sigmoid": 0.95}, {"relu": 0.3, "gelu": 0.3, "sigmoid": 0.36})
    repeats = answers.per_repeat(per_run)
    compared = answers.comparisons(repeats)
    ranked = answers.ranking(repeats, compared)
    retention = ranked[ranked["measure"] == "retention"]
    assert retention["activation"].iloc[-1] == "sigmoid" and list(retention["beaten"]) == [False, False, True]
    loss = ranked[ranked["measure"] == "loss"]
    assert (loss["mean"].diff().dropna() > 0).all()  # lower loss is better: ascending
    text = answers.answer("mlp", ranked, compared)
    best, second = retention["activation"].iloc[:2]
    assert text.startswith(f"**MLP.** {best} has the highest retention")
    assert f"no difference between {best} and {second} in retention detected at n = 10 seeds" in text
    assert f"{best} better than sigmoid in retention by" in text and "over 3 tests" in text
    assert "By mean test accuracy over p" in text and "By mean test loss over p" in text


def test_the_lr_is_chosen_on_validation_among_lrs_where_no_seed_diverged():
    rows = [{"family": "mlp", "activation": act, "lr": lr, "seed": 8 + s, "p": 0.0, "val_acc": acc + 0.001 * s,
             "val_loss": 1 - acc, "error": ""}
            for act, accs in {"relu": {1e-3: 0.97, 3e-3: 0.96, 1e-2: 0.90}, "sigmoid": {1e-3: 0.93, 3e-3: 0.95,
                                                                                      1e-2: 0.96}}.items()
            for lr, acc in accs.items() for s in range(2)]
    sweep = pd.DataFrame(rows)
    lrs = answers.choose_lr(sweep).set_index(["activation", "lr"])
    assert lrs["chosen"].sum() == 2 and lrs.loc[("relu", 1e-3), "chosen"] and lrs.loc[("relu", 1e-3), "at_edge"]
    assert lrs.loc[("sigmoid", 1e-2), "chosen"] and lrs.loc[("relu", 1e-3), "val_acc"] == pytest.approx(0.9705)
    sweep.loc[(sweep["activation"] == "sigmoid") & (sweep["lr"] == 1e-2) & (sweep["seed"] == 9), "error"] = "diverged"
    lrs = answers.choose_lr(sweep).set_index(["activation", "lr"])
    assert lrs.loc[("sigmoid", 3e-3), "chosen"] and not lrs.loc[("sigmoid", 3e-3), "at_edge"]
    assert lrs.loc[("sigmoid", 1e-2), "diverged"] == 1


def defaults(*flags: str, gpu: bool = False) -> corruption.Settings:
    args = cli.build_parser().parse_args(["corruption", *flags])
    return settings.Space(corruption.Settings, "corruption").settings(args, gpu=gpu)


def test_the_sweep_s_seeds_are_never_the_estimates_and_every_activation_shares_the_estimates():
    s = defaults()
    sweep = [r for a in s.activations for r in corruption.sweep_runs(s, "mlp", a)]
    grid = [r for a in s.activations for r in corruption.grid_runs(s, "mlp", a, 3e-3)]
    assert {r["seed"] for r in sweep}.isdisjoint({r["seed"] for r in grid})
    assert {r["p"] for r in sweep} == {0.0} and {r["lr"] for r in sweep} == set(s.lrs)
    assert len(sweep) == len(s.activations) * len(s.lrs) * s.sweep_seeds
    for a in s.activations:
        assert {(r["p"], r["seed"]) for r in grid if r["activation"] == a} == {(p, r) for p in s.p
                                                                               for r in range(s.repeats)}
    member = corruption.members({"members": grid[:2], "weight_decay": 0.0, "mlp_widths": [8]})
    assert [(m.lr, m.seed, m.corruption, m.spec["activation"]) for m in member] == [
        (3e-3, 0, 0.0, s.activations[0]), (3e-3, 1, 0.0, s.activations[0])]


def test_gpu_defaults_train_both_families_with_more_seeds_in_one_population_per_activation():
    cpu, gpu = defaults(), defaults(gpu=True)
    assert gpu.families == ["mlp", "cnn"] and gpu.repeats > cpu.repeats
    assert [size for *_, size in corruption.stages(gpu)] == [len(gpu.lrs) * gpu.sweep_seeds,
                                                             len(gpu.p) * gpu.repeats]
    assert corruption.stages(defaults("--lrs", "0.001"))[0][0] == "grid"  # one lr: nothing to sweep


def test_corruption_estimate_times_populations_with_the_trials_settings():
    """The estimate times (and compiles) what the trials train: their optimizer and weight decay decide which
    kernels run (a population's dense layers take Adam inside a kernel, SGD in torch)."""
    s = defaults("--optimizer", "sgd", "--lrs", "0.05", "--weight-decay", "0.01", "--batch-size", "64")
    probe = corruption.probe_members(s, "mlp", "tanh", 3)
    assert [(m.lr, m.weight_decay, m.spec["activation"]) for m in probe] == [(0.05, 0.01, "tanh")] * 3
    assert len({m.seed for m in probe}) == 3
    assert corruption.training(s).optimizer == "sgd" and corruption.training(s).batch_size == 64


def test_report_from_the_csvs_holds_the_method_and_the_answers(tmp_path):
    """Without Ray: stage 2's rows and the sweep's lr choice in a run folder; write_answers writes the tables and a
    REPORT.md whose answer is retention first, with a Method section stating seeds, test, correction and power;
    `report` draws it again from the tables, which hold what the study's `tables` says a finished run has."""
    s = defaults("--repeats", "10", "--families", "mlp", "cnn", "--activations", "relu", "gelu", "sigmoid",
                 "--lrs", "0.001", "0.01")
    runs.start(tmp_path, "corruption", dataclasses.asdict(s), ["python", "-m", "tune_mnist", "corruption"])
    levels = {"relu": 0.97, "gelu": 0.972, "sigmoid": 0.95}, {"relu": 0.3, "gelu": 0.3, "sigmoid": 0.36}
    per_run = pd.concat([synthetic(*levels, family="mlp"), synthetic(*levels, family="cnn", rng=1)])
    sweep = per_run[per_run["p"] == 0].assign(seed=lambda f: f["seed"] + 100, val_acc=lambda f: f["test_acc"],
                                               val_loss=lambda f: f["test_loss"])
    write_csv(tmp_path / "lr.csv", answers.choose_lr(pd.concat([sweep, sweep.assign(lr=1e-2, val_acc=0.5)])))
    found = answers.write_answers(tmp_path, per_run)
    assert found["mlp_most_robust"] in ("relu", "gelu") and found["runs"] == len(per_run)
    assert re.fullmatch(r"0\.\d{4}\[0\.\d{4},0\.\d{4}\]", found["cnn_retention"])
    text = (tmp_path / "REPORT.md").read_text()
    answer = text.split("## Answer", 1)[1].split("\n## ", 1)[0]
    assert answer.index("**MLP.**") < answer.index("**CNN.**") and "has the highest retention" in answer
    method = text.split("## Method", 1)[1].split("\n## ", 1)[0]
    for phrase in ("seeds 10", "paired t-test", "Holm", "Power:", "80% power at the 5% level", "Seeds 0–9",
                   "highest mean validation accuracy", "At the edge of the sweep"):
        assert phrase in method, phrase
    figures = re.findall(r"!\[[^]]+\]\(([^)]+)\)", text)
    assert sorted(figures) == ["lr_sweep.png", "ranking.png", "retention_vs_p.png"]
    before = text
    redraw(tmp_path, tmp_path / "again")  # from the CSVs alone, once they check out: the same report
    assert (tmp_path / "again" / "REPORT.md").read_text() == before


@pytest.fixture(scope="module")
def corruption_run(results, ray_session):
    return run_study(results, "corruption")


@pytest.mark.slow
def test_corruption_smoke_learns_at_p0_is_chance_at_p1_and_reports_retention(corruption_run):
    s = runs.read(corruption_run)["settings"]
    per_run = read_table(corruption_run / "results_per_run.csv")
    assert len(per_run) == 2 * 2 * 2 * 2 and per_run["error"].eq("").all()  # families x acts x p x repeats
    assert set(per_run["seed"]) == {0, 1}
    sweep = read_table(corruption_run / "sweep.csv")
    assert len(sweep) == 2 * 2 * 2 and set(sweep["seed"]) == {2} and (sweep["p"] == 0).all()
    lrs = read_table(corruption_run / "lr.csv")
    chosen = lrs[lrs["chosen"]].set_index(["family", "activation"])["lr"]
    for key, part in per_run.groupby(["family", "activation"]):
        assert (part["lr"] == chosen[key]).all()  # stage 2 trains at the lr stage 1 chose
    summary = read_table(corruption_run / "results_summary.csv").set_index(["family", "p"])
    for family in s["families"]:
        assert (summary.loc[(family, 1.0), "test_acc"] < 0.2).all(), f"{family} at p=1 should be near chance"
        assert (summary.loc[(family, 0.0), "test_acc"] > 0.5).all(), f"{family} at p=0 should learn"
        assert (summary.loc[(family, 0.0), "retention"] == 1).all()
    text = (corruption_run / "REPORT.md").read_text()
    assert "**Question.** Which activation keeps its accuracy best as training pixels are corrupted" in text
    assert "## Method" in text and "has the highest retention" in text and "paired t-test" in text
    assert {"retention_vs_p.png", "ranking.png", "lr_sweep.png"} <= {p.name for p in corruption_run.glob("*.png")}


@pytest.mark.slow
def test_corruption_population_equals_separate_trials(corruption_run, results, capsys):
    """--population 4: each trial trains 4 runs stacked; every run matches its separate trial."""
    started = time.time()
    together = run_study(results, "corruption", "--population", "4", name="pop")
    out = capsys.readouterr().out
    assert re.search(r"^\[grid\] 4 trials in [\d.]+ s$", out, re.M) and re.search(r"^\[sweep\] 4 trials in", out, re.M)
    ranked = read_table(together / "ranking.csv")
    for family in ("mlp", "cnn"):
        best = ranked[(ranked["family"] == family) & (ranked["measure"] == "retention")].iloc[0]
        retention = f"{best['mean']:.4f}[{best['mean_low']:.4f},{best['mean_high']:.4f}]"
        assert re.search(rf"^STUDY=corruption .* {family}_most_robust={best['activation']} "
                         rf"{family}_retention={re.escape(retention)} ", out, re.M), out
    # the estimate counts both stages and times the populations the trials train
    assert re.search(r"^\[corruption\] estimate: 8 lr-sweep runs in populations of 2, then 16 runs \(mlp [\d.]+s/run, "
                     r"cnn [\d.]+s/run, populations of 4\), 2 at once", out, re.M), out
    keys = ["family", "activation", "p", "seed"]
    stacked = read_table(together / "results_per_run.csv").set_index(keys)
    separate = read_table(corruption_run / "results_per_run.csv").set_index(keys)
    assert len(stacked) == len(separate) == 16 and (stacked["population"] == 4).all()
    for key in ("final_train_loss", "test_loss"):
        diff = (stacked[key] / separate.loc[stacked.index, key] - 1).abs()
        assert diff.max() < 5e-4, key  # float tolerance: batched and single matmuls round differently
    # each trial's span, as benchmarks/campaign.py reads it, lies within the run
    trials = stacked.groupby("trial_id").agg(end=("reported_at", "max"), seconds=("seconds", "max"))
    assert len(trials) == 4 and (trials["seconds"] > 0).all()
    assert (trials["end"] - trials["seconds"] > started).all() and (trials["end"] < time.time()).all()
    # a trial's own TensorBoard log holds the members' means; each member's metrics are in a run of its own
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trial = next((together / "tune" / "grid").glob("trial_*"))
    tags = EventAccumulator(str(trial)).Reload().Tags()["scalars"]
    assert "ray/tune/test_acc" in tags and not [t for t in tags if t.startswith("ray/tune/m0/")]
    member = EventAccumulator(str(together / "tensorboard" / "grid" / trial.name / "m0")).Reload()
    row = stacked[(stacked["trial_id"] == trial.name.removeprefix("trial_")) & (stacked["member"] == 0)]
    assert member.Scalars("test_acc")[-1].value == pytest.approx(row["test_acc"].item())


@pytest.mark.slow
def test_notebook_shows_the_run(tmp_path, corruption_run, monkeypatch):
    run_notebook("corruption", corruption_run, tmp_path / "figures", monkeypatch)
