"""The budget study end to end through real Ray Tune and Optuna, on MNIST subsets."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_notebook
from tune_mnist import cli, closed_form, data, models
from tune_mnist.files import read_table
from tune_mnist.studies import budget, budget_design as design
from tune_mnist.tuning.search import journal

pytestmark = pytest.mark.slow  # real Ray runs of a whole study: the full suite only
SHAPES = ("uniform", "decreasing", "increasing", "free")


PS = (20000, 30000)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ray_session):
    results = tmp_path_factory.mktemp("results")
    argv = ["budget", "--smoke", "--P", *map(str, PS), "--results", str(results), "--name", "e2e"]
    assert cli.main(argv) == 0
    return results / "budget" / "e2e"


def read_trials(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "trials.csv", keep_default_na=False, na_values=[""])


def study(run_dir: Path, P: int, k: int) -> optuna.Study:
    return optuna.load_study(study_name=f"budget-P{P}-k{k}", storage=journal(run_dir / "optuna.journal"))


def test_every_member_is_a_row_with_exact_parameter_counts(run_dir):
    trials = read_trials(run_dir)
    for P in PS:
        part = trials[trials.P == P]
        # smoke: grid k in {0 (linear), 1.., 4} x 2 lrs x 1 seed, 16 Optuna trials at each depth of the window
        depths = [0, *closed_form.depth_grid(P, 4)]
        grid = part[part.stage == "grid"]
        assert sorted(grid.k) == sorted(depths * 2) and sorted(grid.lr.unique()) == [0.001, 0.003]
        searched = sorted(part[part.stage == "search"].k.unique())
        best = design.best_depth(design.depth_table(read_table(run_dir / "trials.csv")), P)
        assert best in searched and searched == [k for k in (best - 1, best, best + 1) if k >= 1]
        assert (part[part.stage == "search"].groupby("k").size() == 16).all()
    assert trials["error"].isna().all()
    for row in trials.itertuples():
        widths = closed_form.parse_widths(row.widths) if isinstance(row.widths, str) else []
        assert row.params == closed_form.count(widths)
        if row.stage == "grid" and row.k > 0:
            assert widths == [closed_form.width_for(row.k, row.P)] * row.k
        if row.stage != "grid":  # stage 1 takes m_P(k) as it is: k = 1 moves in steps of 795
            assert abs(row.params - row.P) <= 0.01 * row.P
            steps = list(zip(widths, widths[1:]))
            assert row.shape != "decreasing" or all(a >= b for a, b in steps), row.widths
            assert row.shape != "increasing" or all(a <= b for a, b in steps), row.widths
    assert (trials.loc[trials.k == 0, "params"] == 7850).all()
    done = trials[trials.stopped_early == 0]
    assert (done["epoch"] == 2).all() and done["final_train_loss"].notna().all()
    assert (trials["test_acc"] > 0.5).any()  # 2 epochs on 4,000 images already learn


def test_search_members_are_optuna_trials_balanced_over_families_and_weight_decay(run_dir):
    trials = read_trials(run_dir)
    search = trials[trials.stage == "search"]
    for (P, k), rows in search.groupby(["P", "k"]):
        told = {t.number: t for t in study(run_dir, P, k).trials}
        rows = rows.set_index("number")
        assert sorted(told) == sorted(rows.index) == list(range(16))
        for number, t in told.items():
            row = rows.loc[number]
            assert t.params["k"] == row.k == k and t.params["activation"] == row.activation
            assert t.params["shape"] == row["shape"] and (t.params["decay"] == "on") == (row.weight_decay > 0)
            if row.stopped_early:
                assert t.state == optuna.trial.TrialState.PRUNED and max(t.intermediate_values) == row.epoch
            else:
                assert t.state == optuna.trial.TrialState.COMPLETE and t.value == pytest.approx(row.val_loss)
        # one population of 16: 2 members of each family x weight decay, and halving at epoch 1 keeps 1 of each
        strata = rows.assign(on=rows.weight_decay > 0).groupby(["shape", "on"])
        assert (strata.size() == 2).all() and len(strata) == 8
        assert (strata["stopped_early"].sum() == 1).all()


def test_confirmation_trains_the_chosen_nets_on_fresh_seeds(run_dir):
    trials = read_trials(run_dir)
    confirm = trials[trials.stage == "confirm"]
    chosen = set(trials.loc[trials.stage != "confirm", "seed"])
    assert set(confirm.seed) == set(design.evaluation_seeds(2)) and not set(confirm.seed) & chosen
    for P in PS:
        part = confirm[confirm.P == P]
        roles = {r for rs in part.roles for r in rs.split(";")}
        searched = trials[(trials.P == P) & (trials.stage == "search")].k.unique()
        assert {f"k={k} {f}" for k in searched if k >= 2 for f in SHAPES} <= roles
        assert {"any uniform", "decay off", "decay on", "top 1"} <= roles
        found = part[part.ablation == 0].drop_duplicates("config")
        best_decayed = found[found.weight_decay > 0].nsmallest(8, "selection_val_loss").config  # smoke: ablations 8
        assert set(part.loc[part.ablation == 1, "config"]) == set(best_decayed)
        for config, runs in part.groupby("config"):
            ablated = config in set(best_decayed)
            assert len(runs) == (4 if ablated else 2) and runs.ablation.sum() == (2 if ablated else 0)
            assert (runs.loc[runs.ablation == 1, "weight_decay"] == 0).all()
    best = json.loads((run_dir / "best.json").read_text())
    assert set(best) == set(map(str, PS)) and all(e[0]["seeds"] == 2 for e in best.values())


def test_report_states_the_method_and_the_new_answers_and_redraws_from_the_csvs(run_dir, tmp_path):
    text = (run_dir / "REPORT.md").read_text()
    answer = text.split("## Answer")[1].split("\n## ")[0]
    for P in PS:
        assert f"**P = {P:,}.** The best net found is" in answer
    assert "*Shape at equal depth*" in answer and "*Whatever the depth*" in answer
    assert "*Weight decay, tuned against tuned*" in answer and "in test accuracy" in answer
    assert "## Method" in text and "evaluation seeds" in text and "configurations x 2 evaluation seeds" in text
    shapes = pd.read_csv(run_dir / "shapes.csv")
    assert set(shapes["shape"]) == {"decreasing", "increasing", "free"} and (shapes.k >= 2).all()
    assert all(f"k = {r.k}, " in answer for r in shapes.itertuples())
    budget.report(run_dir, tmp_path)  # from the CSVs and run.json alone
    assert (tmp_path / "REPORT.md").read_text() == text


def test_plot_and_run_record(run_dir):
    png = (run_dir / "loss_vs_k.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["study"] == "budget" and meta["settings"]["P"] == list(PS) and meta["command"][:4] == [
        "python", "-m", "tune_mnist", "budget"]


def test_tensorboard_scalars_for_every_trial_and_member(run_dir):
    trials = read_trials(run_dir)
    events = sorted(run_dir.glob("tune/*/trial_*/events.out.tfevents.*"))
    assert len(events) == trials.trial_id.nunique()
    acc = EventAccumulator(str(events[0].parent)).Reload()
    assert all(s.value > 0 for s in acc.Scalars("ray/tune/val_loss"))
    pruned = trials[trials.stopped_early == 1].iloc[0]
    member = (run_dir / "tensorboard" / f"P{pruned.P}-search-k{pruned.k}" / f"trial_{pruned.trial_id}"
              / f"m{pruned.member}")
    steps = EventAccumulator(str(member)).Reload().Scalars("val_loss")
    assert [s.step for s in steps] == [1] and steps[0].value == pytest.approx(pruned.val_loss)


def test_exported_models_reload_with_the_same_test_accuracy(run_dir, mnist):
    best = json.loads((run_dir / "best.json").read_text())
    test = data.to_device(data.subset(mnist, 4000, 1000), "cpu")["test"]
    for P, entries in best.items():
        model = models.load(run_dir / entries[0]["file"])
        assert models.n_params(model) == entries[0]["params"]
        with __import__("torch").no_grad():
            acc = (model(test.x).argmax(1) == test.y).float().mean().item()
        assert acc == pytest.approx(entries[0]["test_acc"], abs=1e-6)


def test_stage1_population_of_seeds_equals_separate_trials_and_exports(tmp_path, ray_session):
    flags = ["budget", "--smoke", "--P", "20000", "--trials", "0", "--seeds", "2", "--lrs", "0.001",
             "--results", str(tmp_path)]
    assert cli.main([*flags, "--population", "2", "--name", "pop"]) == 0
    assert cli.main([*flags, "--population", "1", "--name", "sep"]) == 0
    stacked, separate = (read_trials(tmp_path / "budget" / name).set_index(["k", "seed"]) for name in ("pop", "sep"))
    assert len(stacked) == len(separate) == 5 * 2 and (stacked["population"] == 2).all()
    assert (stacked["val_loss"] / separate.loc[stacked.index, "val_loss"] - 1).abs().max() < 5e-4
    best = json.loads((tmp_path / "budget" / "pop" / "best.json").read_text())["20000"][0]
    model = models.load(tmp_path / "budget" / "pop" / best["file"])  # a member's own weights
    assert models.n_params(model) == best["params"]
    assert "There was no search" in (tmp_path / "budget" / "pop" / "REPORT.md").read_text()


def test_export_command_writes_the_top_n_and_the_report_lists_them(run_dir, capsys):
    assert cli.main(["export", str(run_dir), "--top", "2", "--format", "onnx"]) == 0
    assert (run_dir / "best" / "P20000" / "rank2.safetensors").is_file()
    assert json.loads((run_dir / "best.json").read_text())["20000"][1]["onnx"] == "best/P20000/rank2.onnx"
    assert (run_dir / "best" / "P20000" / "rank2.onnx").is_file()
    assert "rank=2" in capsys.readouterr().out
    assert "best/P20000/rank2.safetensors" in (run_dir / "REPORT.md").read_text()


def test_killed_run_resumes_and_finishes_every_trial_once(tmp_path):
    """SIGKILL the whole process group (driver and Ray) mid-study, then --resume the run folder.

    The killed run keeps its trials in --storage (a URI), so resume restores Tune from there; the
    local resume is covered by test_faults' Optuna test.
    """
    results = tmp_path / "results"
    args = ["budget", "--P", "20000", "--max-depth", "8", "--seeds", "2", "--lrs", "0.001", "--epochs", "4",
            "--trials", "0", "--population", "1",
            "--train-limit", "20000", "--eval-limit", "1000", "--results", str(results), "--name", "r"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    storage = ["--storage", f"file://{tmp_path}/shared"]
    proc = subprocess.Popen([sys.executable, "-m", "tune_mnist", *args, *storage], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    finished, seen = [], []
    deadline = time.time() + 240
    for line in proc.stdout:
        seen.append(line)
        if " done " in line:
            finished.append(line.split("done", 1)[1].split()[:3:2])  # ['k=..', 'seed=..']
        if len(finished) >= 3 or time.time() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = results / "budget" / "r"
    assert len(finished) >= 3 and not (run_dir / "trials.csv").exists(), "".join(seen[-40:])

    done = subprocess.run([sys.executable, "-m", "tune_mnist", "budget", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trials already done" in done.stdout
    trials = read_trials(run_dir)
    configured = {(k, s) for k in [0, 1, 2, 3, 4, 6, 8] for s in (0, 1)}
    assert len(trials) == len(configured) == len(set(zip(trials.k, trials.seed)))
    assert set(zip(trials.k, trials.seed)) == configured
    odd = trials[(trials["epoch"] != 4) | trials["error"].notna()]
    assert odd.empty, odd[["k", "seed", "epoch", "training_iteration", "error", "trial_id"]].to_string()
    straight = subprocess.run([sys.executable, "-m", "tune_mnist", *args[:-1], "straight"],
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0
    same = read_trials(results / "budget" / "straight").set_index(["k", "seed"])["val_loss"]
    resumed = trials.set_index(["k", "seed"])["val_loss"]
    assert (resumed - same.loc[resumed.index]).abs().max() < 1e-6, "resumed run equals the uninterrupted run"
    for k, seed in finished:  # trials finished before the kill were not trained again
        row = trials[(trials.k == int(k[2:])) & (trials.seed == int(seed[5:]))].iloc[0]
        # one checkpoint per reported epoch: a rerun from scratch would have reached checkpoint_000007
        assert Path(row.checkpoint).name == "checkpoint_000003"
        assert row.checkpoint.startswith(f"{tmp_path}/shared/budget/r/tune/")


def test_optuna_dashboard_opens_the_study_journal(run_dir):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["optuna-dashboard", str(run_dir / "optuna.journal"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                studies = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2))
                break
            except OSError:
                time.sleep(0.2)
        names = {s["study_name"]: s["study_id"] for s in studies["study_summaries"]}
        depths = read_trials(run_dir).query("stage == 'search'").groupby("P").k.unique()
        assert set(names) == {f"budget-P{P}-k{k}{kind}" for P in PS for k in depths[P] for kind in ("", "-populations")}
        first = names[f"budget-P20000-k{depths[20000][0]}"]
        shown = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{first}"))
        assert sorted(t["state"] for t in shown["trials"]) == ["Complete"] * 8 + ["Pruned"] * 8
    finally:
        server.kill()


def test_notebook_shows_the_run(tmp_path, run_dir, monkeypatch):
    run_notebook("budget", run_dir, tmp_path / "figures", monkeypatch)
