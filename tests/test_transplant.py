"""transplant end to end through real Ray Tune, on MNIST subsets."""

import re

import pytest
import torch

from conftest import run_notebook, run_study
from tune_mnist.files import read_table

pytestmark = pytest.mark.slow  # real Ray runs of a whole study: the full suite only


@pytest.fixture(scope="module")
def transplant_run(results, ray_session):
    return run_study(results, "transplant")


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


def test_transplant_per_layer_intervals_over_seeds(transplant_run):
    """Each layer and direction: mean test accuracy with its 95% interval over the seeds, and its change from the
    net the swap starts from (reset: trained, graft: initial) paired by seed, beyond noise when that excludes 0."""
    from tune_mnist import stats

    long = read_table(transplant_run / "results.csv")
    summary = read_table(transplant_run / "results_summary.csv").set_index(["layer", "direction"])
    assert len(summary) == 3 * 2 and (summary["seeds"] == 2).all()
    assert list(summary.xs("reset", level="direction")["fan"]) == ["784→128", "128→64", "64→10"]
    for (layer, direction), part in long.groupby(["layer", "direction"]):
        row = summary.loc[(layer, direction)]
        acc = stats.mean_interval(part["test_acc"])
        assert (row["test_acc_mean"], row["test_acc_low"], row["test_acc_high"]) == pytest.approx(
            (acc.mean, acc.low, acc.high))
        assert row["test_acc_low"] <= row["test_acc_mean"] <= row["test_acc_high"]
        start = part["trained_test_acc" if direction == "reset" else "init_test_acc"]
        change = stats.mean_interval(part["test_acc"] - start)
        assert (row["change"], row["change_low"], row["change_high"]) == pytest.approx(
            (change.mean, change.low, change.high))
        assert row["beyond_noise"] == (row["change_high"] < 0 or row["change_low"] > 0)


def test_transplant_report_says_which_layers_carry_the_learning(transplant_run):
    from tune_mnist.studies import transplant

    summary = read_table(transplant_run / "results_summary.csv")
    carry, costs, raises = transplant.carriers(summary).values()
    moved = summary[summary["beyond_noise"]]
    assert costs == sorted(moved[(moved["direction"] == "reset") & (moved["change"] < 0)]["layer"])
    assert raises == sorted(moved[(moved["direction"] == "graft") & (moved["change"] > 0)]["layer"])
    assert carry == sorted(set(costs) | set(raises))
    text = (transplant_run / "REPORT.md").read_text()
    assert "**Question.** Which trained layers carry what the network learnt?" in text
    answer = text.split("## Answer", 1)[1].split("\n## ", 1)[0].strip()
    if carry:
        assert answer.startswith(f"{transplant.named(carry).capitalize()} carr"), answer
    else:
        assert answer.startswith("No single layer is shown to carry"), answer
    for layer in costs:
        assert re.search(rf"layer {layer} \(\d+→\d+\) [\d.]+ ± [\d.]+ \(95% CI [\d.-]+–[\d.-]+, n=2\)", answer)
    assert re.search(r"Trained, the nets reach test accuracy [\d.]+ ± [\d.]+ \(95% CI", answer)
    assert "![" in text and "](transplant.png)" in text
    assert "| layer | fan | direction | seeds | test_acc_mean | test_acc_low | test_acc_high |" in text


def test_transplant_outputs_widen_the_last_layer(results, ray_session, tmp_path, capsys):
    """--outputs 16: the last layer has 16 units (cross-entropy over 16 logits, labels 0..9), the net still learns,
    and a model saved from it says so; the summary line names the layers that carry the learning."""
    from tune_mnist import cli, models, settings, storage
    from tune_mnist.errors import UserError
    from tune_mnist.studies import transplant
    from tune_mnist.tuning import trial

    run = run_study(results, "transplant", "--outputs", "16", name="outputs16")
    out = capsys.readouterr().out
    per_seed = read_table(run / "results_per_seed.csv")
    assert (per_seed["params"] == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 16 + 16).all()
    assert (per_seed["test_acc"] > 0.8).all()
    assert read_table(run / "results.csv").query("layer == 3")["fan"].eq("64→16").all()
    spec = {"family": "mlp", "widths": [128, 64], "activation": "relu", "outputs": 16}
    row = per_seed.iloc[0]
    state = storage.read_checkpoint(f"{row.checkpoint}/{trial.STATE}")
    models.save(tmp_path / "m.safetensors", trial.member_state(state, int(row.member), spec), spec)
    net = models.load(tmp_path / "m.safetensors")
    assert net.card["outputs"] == 16 and net(torch.rand(3, 1, 28, 28)).shape == (3, 16)
    assert models.describe({"family": "mlp", "widths": [8]})["outputs"] == 10

    found = transplant.carriers(read_table(run / "results_summary.csv"))
    listed = " ".join(f"{k}={','.join(map(str, v)) or 'none'}" for k, v in found.items())
    assert re.search(rf"^STUDY=transplant .* {listed} ", out, re.M), out
    args = cli.build_parser().parse_args(["transplant", "--outputs", "9"])
    with pytest.raises(UserError, match="--outputs 9: must be >= 10"):
        transplant.check(settings.Space(transplant.Settings, "transplant").settings(args))


def test_notebook_shows_the_run(tmp_path, transplant_run, monkeypatch):
    run_notebook("transplant", transplant_run, tmp_path / "figures", monkeypatch)
