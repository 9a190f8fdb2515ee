"""scaling, corruption, transplant and linear end to end through real Ray Tune, on MNIST subsets."""

import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tune_mnist import cli
from tune_mnist.files import read_table

REPO = Path(__file__).resolve().parents[1]


def run_study(results: Path, study: str, *flags: str, name: str = "t") -> Path:
    assert cli.main([study, "--smoke", "--results", str(results), "--name", name, *flags]) == 0
    return results / study / name


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def corruption_run(results, ray_session):
    return run_study(results, "corruption")


@pytest.fixture(scope="module")
def scaling_run(results, ray_session):
    return run_study(results, "scaling")


@pytest.fixture(scope="module")
def transplant_run(results, ray_session):
    return run_study(results, "transplant")


@pytest.fixture(scope="module")
def linear_run(results, ray_session):
    return run_study(results, "linear", "--epoch-counts", "10", "100")


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


def test_corruption_population_equals_separate_trials(corruption_run, results, capsys):
    """--population 4: each trial trains 4 (p, seed) runs stacked; every run matches its separate trial."""
    started = time.time()
    together = run_study(results, "corruption", "--population", "4", name="pop")
    out = capsys.readouterr().out
    assert re.search(r"^\[grid\] 2 trials in [\d.]+ s$", out, re.M)
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


def test_scaling_population_of_seeds_equals_separate_trials(results, ray_session):
    """--population 2: the two seeds of each cell train stacked, each equal to its own trial."""
    together = run_study(results, "scaling", "--seeds", "2", "--population", "2", name="pop2")
    apart = run_study(results, "scaling", "--seeds", "2", "--population", "1", name="sep2")
    key = ["width", "fraction", "seed"]
    stacked, separate = (read_table(run / "results.csv").set_index(key) for run in (together, apart))
    assert len(stacked) == len(separate) == 2 * 2 * 2 and (stacked["population"] == 2).all()
    assert stacked["error"].eq("").all() and stacked.index.is_unique
    for metric in ("final_train_loss", "test_loss"):
        assert (stacked[metric] / separate.loc[stacked.index, metric] - 1).abs().max() < 5e-4, metric
    member_runs = list((together / "tensorboard").glob("trial_*/m*/events.out.tfevents*"))
    assert len(member_runs) == 8, "one TensorBoard run per member"
    assert cli.main(["scaling", "--resume", str(together)]) == 0  # a finished run: nothing trains again
    assert len(list((together / "tensorboard").glob("trial_*/m*/events.out.tfevents*"))) == 8, "no run twice"


def test_scaling_more_data_lowers_test_loss(scaling_run):
    frame = read_table(scaling_run / "results.csv")
    assert len(frame) == 4 and frame["error"].eq("").all()
    by_fraction = frame.groupby("fraction")["test_loss"].mean()
    assert by_fraction[0.5] < by_fraction[0.0625]
    assert (frame["n_train"] == (frame["fraction"] * 4000).round()).all()
    for name in ("heatmaps", "test_loss_vs_compute", "test_loss_vs_fraction", "test_loss_vs_width"):
        assert (scaling_run / f"{name}.png").stat().st_size > 10_000


def test_transplanted_layers_change_accuracy(transplant_run):
    long = read_table(transplant_run / "results.csv")
    assert len(long) == 2 * 3 * 2  # seeds x layers (128, 64, output) x directions
    trained = long["trained_test_acc"].iloc[0]
    init = long["init_test_acc"].iloc[0]
    assert trained > 0.8 and init < 0.3
    first_reset = long[(long["layer"] == 1) & (long["direction"] == "reset")]["test_acc"]
    assert (first_reset < trained - 0.05).all(), "resetting the first layer must hurt the trained net"
    summary = read_table(transplant_run / "results_summary.csv")
    assert set(summary["direction"]) == {"reset", "graft"} and "test_acc_std" in summary
    assert (transplant_run / "transplant.png").stat().st_size > 10_000


def test_linear_baseline_beats_85_percent(linear_run):
    trials = read_table(linear_run / "trials.csv")
    assert (trials["params"] == 7850).all()
    assert trials["test_acc"].max() > 0.85
    table = read_table(linear_run / "step_size_x_epochs.csv")
    assert set(table["epochs"]) == {10, 100} and len(table) == 4
    init = trials[trials["grid"] == "init"]
    assert len(init) == 2 * 2 and set(init["init_scale"]) == {0.0, 1.0}
    assert (linear_run / "loss_curves.png").is_file() and (linear_run / "init_curves.png").is_file()


@pytest.fixture(scope="module")
def budget_run(results, linear_run):
    return run_study(results, "budget", "--P", "20000", "--trials", "0", "--max-depth", "2",
                     "--linear-run", str(linear_run))


def test_budget_draws_the_linear_run_as_reference(budget_run, linear_run):
    meta = json.loads((budget_run / "run.json").read_text())
    assert meta["settings"]["linear_run"] == str(linear_run)
    assert (budget_run / "loss_vs_k.png").stat().st_size > 10_000


@pytest.mark.parametrize("study", ["budget", "scaling", "corruption", "transplant", "linear"])
def test_notebook_executes_against_a_run(study, request, tmp_path, monkeypatch):
    run_dir = request.getfixturevalue(f"{study}_run")
    monkeypatch.setenv("TUNE_MNIST_RUN", str(run_dir))
    monkeypatch.setenv("TUNE_MNIST_FIGURES", str(tmp_path / "figures"))
    notebook = nbformat.read(REPO / "notebooks" / f"{study}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 1 and len(images) == len(list((tmp_path / "figures").glob("*.png")))


@pytest.mark.parametrize("argv, message", [
    (["corruption", "--p", "1.5"], "p=1.5 is outside [0, 1]"),
    (["corruption", "--p", "-0.1"], "outside [0, 1]"),
    (["corruption", "--families", "rnn"], "unknown model family 'rnn'"),
    (["corruption", "--activations", "swish"], "unknown activation 'swish'"),
    (["corruption", "--repeats", "0"], "--repeats must be >= 1"),
    (["scaling", "--fractions", "0"], "fraction 0.0 is outside (0, 1]"),
    (["scaling", "--fractions", "1.5"], "outside (0, 1]"),
    (["scaling", "--widths", "0"], "widths must be >= 1"),
    (["transplant", "--lr", "0"], "--lr must be > 0"),
    (["linear", "--step-sizes", "-1"], "--step-sizes must be > 0"),
    (["budget", "--linear-run", "/nonexistent"], "is not a finished linear run"),
])
def test_study_bad_input(argv, message, tmp_path, capsys):
    code = cli.main([*argv, "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "results").exists()


def test_member_tensorboard_writes_each_run_once_and_skips_metrics_missing_at_an_epoch(tmp_path):
    """final_train_* is reported at the last epoch only; a population that starts again (a retried trial)
    reports from epoch 1 again, and its runs hold its last report of each epoch only."""
    import pickle
    from types import SimpleNamespace

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tune_mnist.tuning.tensorboard import MemberTensorboard

    callback = pickle.loads(pickle.dumps(MemberTensorboard(tmp_path / "tb")))  # the Tuner pickles it
    trial = SimpleNamespace(trial_id="0", path=str(tmp_path / "trial_0"), local_path=str(tmp_path / "trial_0"),
                            config={"members": [{"seed": 0}, {"seed": 1}]})
    lines = []
    for epoch, loss in [(1, 0.9), (2, 0.8), (1, 0.7), (2, 0.5)]:  # failed after epoch 2, then retried
        result = {"population": 2, "epoch": float(epoch), "m0/epoch": epoch, "m0/val_loss": loss}
        lines.append({**result, "m0/final_train_loss": 0.4} if loss == 0.5 else result)
    (tmp_path / "trial_0").mkdir()
    (tmp_path / "trial_0" / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    callback.on_trial_complete(0, [], trial)
    callback.on_experiment_end([])
    acc = EventAccumulator(str(tmp_path / "tb" / "trial_0" / "m0")).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("final_train_loss")] == [(2, pytest.approx(0.4))]
    assert [(e.step, e.value) for e in acc.Scalars("val_loss")] == [(1, pytest.approx(0.7)), (2, pytest.approx(0.5))]
