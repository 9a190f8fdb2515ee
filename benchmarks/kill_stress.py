"""Kill-stress: SIGKILL a study's whole process group (driver and Ray) at random moments, resume it, again and again,
then let it finish and check the run: every configured trial or member exactly once in the final CSV, none short of
its epochs, Optuna's journal consistent with the CSV, every result file whole.

Four scenarios: budget's stage 1 (a depth grid), budget's stage 2 and 3 (Optuna populations, confirmation),
corruption (populations of runs) and random (resumable searches). Kills land anywhere: during Ray's start, a
trial's epoch, its checkpoint, Optuna's journal, the final tables.

    python benchmarks/kill_stress.py --kills 13          # per scenario: 52 kills, about 30 min on 2 CPU cores
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd

from tune_mnist.files import read_table
from tune_mnist.tuning.search import journal

SMALL = ["--train-limit", "10000", "--eval-limit", "1000"]
SCENARIOS = {  # name: (arguments, seconds within which a kill lands)
    "budget-grid": (["budget", "--P", "20000", "--max-depth", "8", "--seeds", "2", "--epochs", "4", "--trials", "0",
                     *SMALL], 14),
    "budget-optuna": (["budget", "--P", "20000", "--max-depth", "1", "--seeds", "1", "--search-depths", "1",
                       "--trials", "24", "--search-population", "8", "--epochs", "3", "--confirm-top", "1",
                       "--confirm-seeds", "2", *SMALL], 20),
    "corruption": (["corruption", "--families", "mlp", "--activations", "relu", "tanh", "--p", "0", "0.5", "1",
                    "--repeats", "2", "--epochs", "2", "--population", "3", *SMALL], 20),
    "random": (["random", "--weight-scales", "1.0", "2.0", "--data-seeds", "0", "1", "--max-nets", "30720", "--nets-per-step", "1024",
                "--n-val", "1000", "--n-test", "1000"], 15),
}


def whole_files(run_dir: Path) -> list[str]:
    """Problems with the run's own files: every CSV and JSON must parse (they are written to a temp file, then
    renamed)."""
    problems = []
    for path in run_dir.rglob("*"):
        if "tune" in path.relative_to(run_dir).parts or not path.is_file():
            continue
        try:
            if path.suffix == ".csv":
                pd.read_csv(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as e:  # noqa: BLE001 - any failure to parse is a half-written file
            problems.append(f"{path.name} does not parse: {e}")
    return problems


def once(frame: pd.DataFrame, keys: list[str], expected: int, epochs: int | None) -> list[str]:
    problems = []
    if len(frame) != expected or frame.duplicated(keys).any():
        problems.append(f"{len(frame)} rows, {frame.duplicated(keys).sum()} repeated, {expected} configured")
    if epochs is not None and (short := frame[frame["epoch"] != epochs]).size:
        problems.append(f"{len(short)} rows short of {epochs} epochs")
    if frame["error"].ne("").any():
        problems.append(f"errors: {frame.loc[frame['error'].ne(''), 'error'].tolist()[:3]}")
    return problems


def check_grid(run_dir: Path) -> list[str]:
    trials = read_table(run_dir / "trials.csv")
    mismatched = int((trials["training_iteration"] != trials["epoch"]).sum())
    return once(trials, ["k", "seed"], 7 * 2, 4) + ([f"(note) {mismatched} rows where Ray's iteration count "
                                                     "differs from the epoch"] if mismatched else [])


def check_optuna(run_dir: Path) -> list[str]:
    trials = read_table(run_dir / "trials.csv")
    found = trials[trials["stage"] == "search"]
    problems = once(found, ["number"], 24, None)
    done = found[found["stopped_early"] == 0]
    if (done["epoch"] != 3).any():
        problems.append("a member that was not stopped early is short of its epochs")
    study = optuna.load_study(study_name="budget-P20000-k1", storage=journal(run_dir / "optuna.journal"))
    told = {t.number: t for t in study.trials}
    if sorted(told) != list(range(24)) or not all(t.state.is_finished() for t in told.values()):
        problems.append(f"journal: {len(told)} trials, states {sorted({t.state.name for t in told.values()})}")
    for row in found.itertuples():
        t = told.get(row.number)
        if t is None or (t.state.name == "PRUNED") != bool(row.stopped_early):
            problems.append(f"trial {row.number}: journal {t and t.state.name}, CSV stopped_early={row.stopped_early}")
        elif t.state.name == "COMPLETE" and abs(t.value - row.val_loss) > 1e-9:
            problems.append(f"trial {row.number}: journal value {t.value}, CSV val_loss {row.val_loss}")
    confirm = trials[trials["stage"] == "confirm"]
    problems += once(confirm, ["config", "seed", "weight_decay"], len(confirm.drop_duplicates(
        ["config", "seed", "weight_decay"])), 3)
    return problems


def check_corruption(run_dir: Path) -> list[str]:
    return once(read_table(run_dir / "results_per_run.csv"), ["activation", "p", "seed"], 2 * 3 * 2, 2)


def check_random(run_dir: Path) -> list[str]:
    searches = read_table(run_dir / "searches.csv")
    short = searches[searches["evaluated"] != 30720]
    return [f"{len(short)} searches stopped at {short['evaluated'].tolist()} nets, not 30720"] if len(short) else []


CHECKS = {"budget-grid": check_grid, "budget-optuna": check_optuna, "corruption": check_corruption,
          "random": check_random}


def stress(name: str, kills: int, results: Path, rng: random.Random, log) -> tuple[int, list[str]]:
    """Runs the scenario's command, killing it at random moments and resuming it, until it finishes; again, in a new
    run folder, until `kills` kills; each finished run is checked."""
    argv, window = SCENARIOS[name]
    killed, problems, runs = 0, [], 0
    while killed < kills:
        run_dir = results / argv[0] / f"{name}-{runs}"
        fresh = [sys.executable, "-m", "tune_mnist", *argv, "--results", str(results), "--name", run_dir.name]
        resume = [sys.executable, "-m", "tune_mnist", argv[0], "--resume", str(run_dir)]
        while True:
            command = resume if (run_dir / "run.json").is_file() else fresh
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=rng.uniform(0.5, window) if killed < kills else 900)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed += 1
                continue
            break
        runs += 1
        if proc.returncode:
            problems.append(f"{run_dir.name}: a resume exited {proc.returncode}")
        else:
            problems += [f"{run_dir.name}: {p}" for p in whole_files(run_dir) + CHECKS[name](run_dir)]
    return killed, problems


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kills", type=int, default=13, help="kills per scenario")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    results, rng, total, failures = Path(tempfile.mkdtemp(prefix="kill-stress-")), random.Random(args.seed), 0, 0
    print(f"results and logs in {results}", flush=True)
    for name in args.scenarios:
        start = time.time()
        with open(results / f"{name}.log", "w") as log:
            killed, problems = stress(name, args.kills, results, rng, log)
        real = [p for p in problems if not p.startswith("(note)")]
        total, failures = total + killed, failures + bool(real)
        print(f"{name}: {killed} kills, {'OK' if not real else 'FAILED'} in {time.time() - start:.0f} s"
              + "".join(f"\n  {p}" for p in problems), flush=True)
    print(f"kills={total} failures={failures}", flush=True)


if __name__ == "__main__":
    main()
