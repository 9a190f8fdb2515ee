"""corruption end to end through real Ray Tune, on MNIST subsets."""

import re
import time

import pandas as pd
import pytest

from conftest import run_notebook, run_study
from tune_mnist import cli
from tune_mnist.files import read_table


@pytest.fixture(scope="module")
def corruption_run(results, ray_session):
    return run_study(results, "corruption")


@pytest.mark.slow
def test_corruption_p1_is_chance_and_p0_learns(corruption_run):
    per_run = read_table(corruption_run / "results_per_run.csv")
    assert len(per_run) == 2 * 1 * 2 * 2 and per_run["error"].eq("").all()  # families x acts x p x repeats
    summary = read_table(corruption_run / "results_summary.csv")
    assert set(summary.columns) >= {"family", "activation", "p", "mean", "std", "stderr", "repeats"}
    assert (summary["repeats"] == 2).all()
    for family in ("mlp", "cnn"):
        cell = summary[summary["family"] == family].set_index("p")["mean"]
        assert cell[1.0] < 0.2, f"{family} at p=1 should be near chance"
        assert cell[0.0] > 0.6, f"{family} at p=0 should learn"
        assert (corruption_run / f"accuracy_vs_p_{family}.png").stat().st_size > 10_000
    runs = per_run[(per_run["family"] == "mlp") & (per_run["p"] == 0.0)]["test_acc"]
    row = summary[(summary["family"] == "mlp") & (summary["p"] == 0.0)].iloc[0]
    assert row["std"] == pytest.approx(runs.std(ddof=0)) and row["stderr"] == pytest.approx(runs.std(ddof=1) / 2 ** 0.5)


def test_corruption_estimate_times_populations_with_the_trials_settings():
    """The estimate times (and compiles) what the trials train: their optimizer, lr and weight decay decide which
    kernels run (a population's dense layers take Adam inside a kernel, SGD in torch)."""
    from tune_mnist import settings
    from tune_mnist.studies import corruption

    args = cli.build_parser().parse_args(["corruption", "--optimizer", "sgd", "--lr", "0.05", "--weight-decay",
                                          "0.01", "--batch-size", "64"])
    s = settings.Space(corruption.Settings, "corruption").settings(args)
    probe = corruption.probe_members(s, "mlp", "tanh", 3)
    assert [(m.lr, m.weight_decay, m.spec["activation"]) for m in probe] == [(0.05, 0.01, "tanh")] * 3
    assert len({m.seed for m in probe}) == 3
    assert corruption.training(s).optimizer == "sgd" and corruption.training(s).batch_size == 64


@pytest.mark.slow
def test_corruption_population_equals_separate_trials(corruption_run, results, capsys):
    """--population 4: each trial trains 4 (p, seed) runs stacked; every run matches its separate trial."""
    started = time.time()
    together = run_study(results, "corruption", "--population", "4", name="pop")
    out = capsys.readouterr().out
    assert re.search(r"^\[grid\] 2 trials in [\d.]+ s$", out, re.M)
    # the summary line carries the answer: each family's most robust activation and its area with its interval
    ranked = read_table(together / "ranking.csv").set_index("family")
    for family in ("mlp", "cnn"):
        best = ranked.loc[family]
        area = f"{best['area']:.4f}[{best['area_low']:.4f},{best['area_high']:.4f}]"
        assert re.search(rf"^STUDY=corruption .* {family}_most_robust=relu {family}_area={re.escape(area)} "
                         rf"{family}_tied=none", out, re.M), out
    # the estimate times the populations that the trials train, not single nets
    assert re.search(r"^\[corruption\] estimate: 8 runs \(mlp [\d.]+s/run, cnn [\d.]+s/run, populations of 4\), 2 at once",
                     out, re.M), out
    stacked = read_table(together / "results_per_run.csv").set_index(["family", "activation", "p", "seed"])
    separate = read_table(corruption_run / "results_per_run.csv").set_index(["family", "activation", "p", "seed"])
    assert len(stacked) == len(separate) == 8 and (stacked["population"] == 4).all()
    for key in ("final_train_loss", "test_loss"):
        diff = (stacked[key] / separate.loc[stacked.index, key] - 1).abs()
        assert diff.max() < 5e-4, key  # float tolerance: batched and single matmuls round differently
    assert (read_table(together / "results_summary.csv")["repeats"] == 2).all()
    # each trial's span, as benchmarks/campaign.py reads it, lies within the run
    trials = stacked.groupby("trial_id").agg(end=("reported_at", "max"), seconds=("seconds", "max"))
    assert len(trials) == 2 and (trials["seconds"] > 0).all()
    assert (trials["end"] - trials["seconds"] > started).all() and (trials["end"] < time.time()).all()
    # a trial's own TensorBoard log holds the members' means; each member's metrics are in a run of its own
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trial = next((together / "tune" / "grid").glob("trial_*"))
    tags = EventAccumulator(str(trial)).Reload().Tags()["scalars"]
    assert "ray/tune/test_acc" in tags and not [t for t in tags if t.startswith("ray/tune/m0/")]
    member = EventAccumulator(str(together / "tensorboard" / trial.name / "m0")).Reload()
    row = stacked[(stacked["trial_id"] == trial.name.removeprefix("trial_")) & (stacked["member"] == 0)]
    assert member.Scalars("test_acc")[-1].value == pytest.approx(row["test_acc"].item())


@pytest.mark.slow
def test_corruption_robustness_per_repeat_with_intervals(corruption_run):
    """With p in {0, 1}, each repeat's threshold p is where its line from (0, a0) to (1, a1) falls to 90% of a0,
    inside (0, 1), and its area is the line's mean, (a0 + a1) / 2; robustness.csv averages them over repeats."""
    from tune_mnist import stats

    per_run = read_table(corruption_run / "results_per_run.csv")
    curves = per_run.pivot_table(index=["family", "activation", "seed"], columns="p", values="test_acc")
    a0, a1 = curves[0.0], curves[1.0]
    expected = pd.DataFrame({"threshold": 0.1 * a0 / (a0 - a1), "area": (a0 + a1) / 2})
    robust = read_table(corruption_run / "robustness.csv").set_index(["family", "activation"])
    assert len(robust) == 2 and (robust["repeats"] == 2).all()
    for key, part in expected.groupby(["family", "activation"]):
        row = robust.loc[key]
        for name in ("threshold", "area"):
            interval = stats.mean_interval(part[name])
            assert row[name] == pytest.approx(interval.mean)
            assert (row[f"{name}_low"], row[f"{name}_high"]) == pytest.approx((interval.low, interval.high))
            assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"]
        assert 0 < row["threshold"] < 1
        assert a1.loc[key].mean() < row["area"] < a0.loc[key].mean()
    assert (corruption_run / "robustness.png").stat().st_size > 10_000


@pytest.mark.slow
def test_corruption_ranking_and_report_answer_per_family(corruption_run):
    ranked = read_table(corruption_run / "ranking.csv")
    robust = read_table(corruption_run / "robustness.csv").set_index(["family", "activation"])
    assert list(ranked["family"]) == ["mlp", "cnn"] and (ranked["rank"] == 1).all()
    assert (ranked["activation"] == "relu").all() and ranked["tied_with_best"].all() and not ranked["beaten"].any()
    for row in ranked.itertuples():
        assert row.area == pytest.approx(robust.loc[(row.family, row.activation), "area"]) and row.n == 2
    text = (corruption_run / "REPORT.md").read_text()
    assert "**Question.** Which activation keeps its accuracy best as training pixels are corrupted, for MLPs and " \
           "for CNNs?" in text
    answer = text.split("## Answer", 1)[1].split("\n## ", 1)[0]
    for family in ("MLP", "CNN"):
        assert re.search(rf"\*\*{family}:\*\* relu keeps its accuracy best: .* is [\d.]+ ± [\d.]+ \(95% CI "
                         rf"[\d.]+–[\d.]+, n=2\), .* up to p = [\d.]+ ± [\d.]+ \(95% CI", answer), answer
    figures = re.findall(r"!\[[^]]+\]\(([^)]+)\)", text)
    assert sorted(figures) == sorted(p.name for p in corruption_run.glob("*.png"))
    assert {"robustness.png", "accuracy_vs_p.png"} <= set(figures)
    assert "| family | rank | activation | area |" in text and "Welch t-tests" in text


def test_corruption_answer_names_the_ties_and_the_beaten():
    """Three activations, three repeats: one clearly worse is beaten, one within noise of the best is tied."""
    from tune_mnist.studies import corruption

    level = {"gelu": 0.70, "tanh": 0.69, "sigmoid": 0.50}
    noise = [-0.01, 0.0, 0.012]
    per_run = pd.DataFrame([{"family": "mlp", "activation": a, "seed": s, "p": p, "error": "",
                             "test_acc": (0.95 if p == 0 else 2 * level[a] - 0.95) + noise[s]}
                            for a in level for s in range(3) for p in (0.0, 1.0)])
    repeats = corruption.per_repeat(per_run)
    ranked = corruption.ranking(repeats)
    assert list(ranked["activation"]) == ["gelu", "tanh", "sigmoid"]
    assert list(ranked["tied_with_best"]) == [True, True, False] and list(ranked["beaten"]) == [False, False, True]
    assert ranked["area"].tolist() == pytest.approx([0.70, 0.69, 0.50], abs=0.005)
    text = corruption.answer("mlp", ranked, corruption.robustness(repeats))
    assert text.startswith("**MLP:** gelu keeps its accuracy best")
    assert "Tied with it: tanh; below it beyond noise: sigmoid (Welch t-tests" in text


@pytest.mark.slow
def test_notebook_shows_the_run(tmp_path, corruption_run, monkeypatch):
    run_notebook("corruption", corruption_run, tmp_path / "figures", monkeypatch)
