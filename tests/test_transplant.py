"""transplant: its tests on synthetic seeds (fast), then end to end through real Ray Tune on MNIST subsets (slow)."""

import re

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_notebook, run_study
from tune_mnist.files import read_table
from tune_mnist.studies import transplant_report as answers

FAN = ["784→128", "128→64", "64→10"]


def synthetic(rng: np.random.Generator, seeds: int, effects: dict | None = None, layers: int = 3,
              sd: float = 0.01) -> pd.DataFrame:
    """results.csv of a net of 2 or 3 layers: each seed's trained and initial nets, and each swap equal to the net it
    starts from plus the planted effect ({(layer, direction): change in accuracy}; loss moves the other way) and
    noise."""
    rows = []
    for seed in range(seeds):
        trained_acc, init_acc = 0.96 + 0.005 * rng.standard_normal(), 0.10 + 0.01 * rng.standard_normal()
        trained_loss, init_loss = 0.15 + 0.01 * rng.standard_normal(), 2.30 + 0.01 * rng.standard_normal()
        for layer, fan in enumerate(FAN[:layers], start=1):
            starts = {"reset": (trained_acc, trained_loss), "graft": (init_acc, init_loss)}
            for direction, (acc, loss) in starts.items():
                effect = (effects or {}).get((layer, direction), 0.0)
                rows.append({"seed": seed, "layer": layer, "fan": fan, "direction": direction,
                             "test_acc": acc + effect + sd * rng.standard_normal(),
                             "test_loss": loss - 5 * effect + 5 * sd * rng.standard_normal(),
                             "trained_test_acc": trained_acc, "init_test_acc": init_acc,
                             "trained_test_loss": trained_loss, "init_test_loss": init_loss})
    return pd.DataFrame(rows)


def per_seed(long: pd.DataFrame) -> pd.DataFrame:
    first = long[(long["layer"] == 1) & (long["direction"] == "reset")]
    return pd.DataFrame({"seed": first["seed"], "test_acc": first["trained_test_acc"],
                         "init_test_acc": first["init_test_acc"], "error": ""})


def test_a_planted_reset_and_graft_are_found_after_holm():
    long = synthetic(np.random.default_rng(0), 6, {(1, "reset"): -0.09, (2, "graft"): 0.15})
    table = answers.tests(long)
    assert len(table) == 3 * 2 * 2 and (table["family"] == 12).all() and (table["n"] == 6).all()
    assert (table["p_adjusted"] >= table["p"]).all() and (table["mde"] > 0).all()
    assert answers.carriers(table) == {"carrying_layers": [1, 2], "reset_costs": [1], "graft_raises": [2]}
    reset = table[(table["layer"] == 1) & (table["direction"] == "reset") & (table["metric"] == "test_acc")].iloc[0]
    assert reset["difference"] == pytest.approx(-0.09, abs=0.02) and reset["swapped"] < reset["start"]
    text = answers.answer(table, per_seed(long))
    assert text.startswith("By test accuracy, layers 1 and 2 carry what the network learnt: resetting layer 1 of "
                           "the trained net costs accuracy; grafting trained layer 2 alone into the initial net")
    assert ("The trained net better than the trained net with layer 1 (784→128) reset to its initial weights in "
            "test accuracy by") in text and "Holm-adjusted p" in text and "over 12 tests, n = 6 seeds" in text
    assert "No change in test accuracy detected at n = 6 seeds for resetting layers 2 and 3 or grafting layers 1 " \
           "and 3 (Holm over 12 tests; the run could detect changes of about" in text
    assert "does not matter" not in text and "tied" not in text


def test_the_power_is_stated_at_holms_strictest_level():
    """The detectable difference is the paired t-test's at 0.05 / family, so larger than at 0.05 alone."""
    from tune_mnist import stats

    long = synthetic(np.random.default_rng(1), 6)
    row = answers.tests(long).iloc[0]
    part = long[(long["layer"] == row["layer"]) & (long["direction"] == row["direction"])]
    sd = (part[row["metric"]] - part[f"{answers.START[row['direction']]}_{row['metric']}"]).std()
    assert row["mde"] == pytest.approx(stats.detectable_difference(sd, 6, level=1 - 0.05 / 12))
    assert row["mde"] > 1.3 * stats.detectable_difference(sd, 6)


def test_holm_keeps_false_positives_at_the_level_over_200_nulls(frozen_gc):
    """No swap changes anything: some test of the family detects a change in at most 10% of 200 runs (8 tests each;
    uncorrected, about a third of them would)."""
    rng = np.random.default_rng(2)
    found = [answers.tests(synthetic(rng, 6, layers=2))["detected"].astype(bool).any() for _ in range(200)]
    assert np.mean(found) <= 0.10


def test_loss_and_accuracy_disagreeing_is_said():
    long = synthetic(np.random.default_rng(3), 8, {(2, "graft"): 0.15})
    graft = (long["layer"] == 2) & (long["direction"] == "graft")
    long.loc[graft, "test_loss"] = long.loc[graft, "init_test_loss"] + 3 + 0.05 * np.arange(graft.sum())
    table = answers.tests(long)
    [said] = answers.disagreements(table)
    assert said.startswith("Grafting layer 2 (128→64): the initial net with layer 2 (128→64) trained better than "
                           "the initial net in test accuracy") and "; the initial net better than the initial net " \
                           "with layer 2 (128→64) trained in test loss" in said
    assert "Where test loss and test accuracy disagree:" in answers.answer(table, per_seed(long))


def test_nothing_detected_is_worded_as_not_detected():
    long = synthetic(np.random.default_rng(4), 3)
    table = answers.tests(long)
    table["detected"] = False
    text = answers.answer(table, per_seed(long))
    assert text.startswith("No single layer is shown to carry what the network learnt at n = 3 seeds.")
    assert "No change in test accuracy detected at n = 3 seeds for resetting layers 1, 2 and 3 or grafting" in text


# ----------------------------------------------------------------------------------------------------------------
# End to end (slow): a --smoke run through Ray


@pytest.fixture(scope="module")
def transplant_run(results, ray_session):
    return run_study(results, "transplant")


@pytest.mark.slow
def test_transplanted_layers_change_accuracy(transplant_run):
    long = read_table(transplant_run / "results.csv")
    assert len(long) == 3 * 3 * 2  # seeds x layers (128, 64, output) x directions
    assert (long["trained_test_acc"] > 0.8).all() and (long["init_test_acc"] < 0.3).all()
    first_reset = long[(long["layer"] == 1) & (long["direction"] == "reset")]
    assert (first_reset["test_acc"] < first_reset["trained_test_acc"] - 0.05).all(), "resetting layer 1 must hurt"
    summary = read_table(transplant_run / "results_summary.csv")
    assert set(summary["direction"]) == {"reset", "graft"} and len(summary) == 2 * (3 + 1)
    assert (transplant_run / "transplant.png").stat().st_size > 10_000


@pytest.mark.slow
def test_transplant_tests_every_swap_against_its_start_paired_by_seed(transplant_run):
    from tune_mnist import stats

    long = read_table(transplant_run / "results.csv")
    table = read_table(transplant_run / "tests.csv")
    assert len(table) == 3 * 2 * 2 and (table["family"] == 12).all() and (table["n"] == 3).all()
    assert list(table[(table["direction"] == "reset") & (table["metric"] == "test_acc")]["fan"]) == FAN
    for row in table.itertuples():
        part = long[(long["layer"] == row.layer) & (long["direction"] == row.direction)].set_index("seed")
        start = part[f"{answers.START[row.direction]}_{row.metric}"]
        c = stats.paired_test(part[row.metric], start)
        assert (row.difference, row.difference_low, row.difference_high, row.p) == pytest.approx(
            (c.difference.mean, c.difference.low, c.difference.high, c.p))
    adjusted, _ = stats.holm(table["p"])
    assert table["p_adjusted"].to_numpy() == pytest.approx(adjusted)


@pytest.mark.slow
def test_transplant_report_states_the_corrected_tests_and_the_method(transplant_run):
    table = read_table(transplant_run / "tests.csv")
    carry = answers.carriers(table)["carrying_layers"]
    text = (transplant_run / "REPORT.md").read_text()
    assert "**Question.** Which trained layers carry what the network learnt?" in text
    answer = text.split("## Answer", 1)[1].split("\n## ", 1)[0].strip()
    if carry:
        assert answer.startswith(f"By test accuracy, {answers.named(carry)} carr"), answer
    else:
        assert answer.startswith("No single layer is shown to carry"), answer
    assert re.search(r"Trained, the nets reach test accuracy [\d.]+ ± [\d.]+ \(95% CI", answer)
    method = text.split("## Method", 1)[1].split("\n## ", 1)[0]
    assert "paired t-test over the 3 seeds" in method and "All 12 tests" in method and "Holm" in method
    assert "with 80% power at the Bonferroni level 0.05/12" in method
    assert "![" in text and "](transplant.png)" in text
    assert "| layer | fan | direction | metric | swapped | start | difference |" in text


@pytest.mark.slow
def test_transplant_outputs_widen_the_last_layer(results, ray_session, tmp_path, capsys):
    """--outputs 16: the last layer has 16 units (cross-entropy over 16 logits, labels 0..9), the net still learns,
    and a model saved from it says so; the summary line names the layers that carry the learning."""
    from tune_mnist import cli, models, settings, storage
    from tune_mnist.errors import UserError
    from tune_mnist.studies import transplant
    from tune_mnist.tuning import trial

    run = run_study(results, "transplant", "--outputs", "16", "--seeds", "2", name="outputs16")
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

    found = answers.carriers(read_table(run / "tests.csv"))
    listed = " ".join(f"{k}={','.join(map(str, v)) or 'none'}" for k, v in found.items())
    assert re.search(rf"^STUDY=transplant .* {listed} ", out, re.M), out
    for flags, message in ((["--outputs", "9"], "--outputs 9: must be >= 10"), (["--seeds", "1"], "--seeds 1: must be >= 2")):
        args = cli.build_parser().parse_args(["transplant", *flags])
        with pytest.raises(UserError, match=message):
            transplant.check(settings.Space(transplant.Settings, "transplant").settings(args))


@pytest.mark.slow
def test_notebook_shows_the_run(tmp_path, transplant_run, monkeypatch):
    run_notebook("transplant", transplant_run, tmp_path / "figures", monkeypatch)
