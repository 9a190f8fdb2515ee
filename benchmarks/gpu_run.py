"""One GPU run of the performance table: every study's default command with --profile, then the benchmarks, in one go.

The main job first, then the others by what the table needs most; each command under its own time cap and all of
them under one deadline, so that a slow one cannot eat the rest (a command past its cap gets Ctrl-C, as a user
would give it: a study then prints its profile so far and its command to resume; 30 s later it is killed). Every
command's output goes to logs/<name>.log; the run folders' reports, CSVs, profile.csv and timing.json files and the
logs go into one archive under $OUT (or --out); at the end each study's profile table is printed for the main job
and scaling, then one summary line per command.

On a GPU machine with the project's dependencies (installed, or on PYTHONPATH; the commands find the checkout's
package themselves, installed or not):

    python benchmarks/gpu_run.py

    python benchmarks/gpu_run.py --smoke     # the same commands with --smoke and tiny benchmarks: a CPU check
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's package, installed or not
from tune_mnist.profile import FILE as profile_file  # noqa: E402
GRACE_S = 30  # after Ctrl-C, the time a command has to save and print before it is killed
# name: (the command, its arguments on the GPU, with --smoke instead, time cap in seconds, working folder). A
# study's command gets --profile and its run folder; with --smoke, --smoke too.
STUDY = [sys.executable, "-m", "tune_mnist"]
COMMANDS = {
    "budget": ([*STUDY, "budget"], ["--P", "100000"], ["--P", "100000"], 150, REPO),
    "scaling": ([*STUDY, "scaling"], [], [], 100, REPO),
    "optuna_trials": ([sys.executable, "benchmarks/optuna_trials.py"], ["--trials-single", "24"],
                      ["--trials-single", "2", "--trials", "8", "--population", "4", "--epochs", "2",
                       "--train-limit", "2000"], 110, REPO),
    "corruption": ([*STUDY, "corruption"], [], [], 70, REPO),
    "random": ([*STUDY, "random"], ["--time-limit", "60"], ["--time-limit", "60"], 85, REPO),
    "population": ([sys.executable, "population.py"], [], ["--members", "2", "--train-limit", "2000"], 45,
                   REPO / "benchmarks"),
    "transplant": ([*STUDY, "transplant"], [], [], 45, REPO),
    "linear": ([*STUDY, "linear"], [], [], 45, REPO),
}
RESULT_LINES = ("trials/s", "separate runs", "without the fused")  # what a benchmark's log says of its result
DETAILED = ("budget", "scaling")  # whose whole profile table is printed at the end
KEPT = ("*.md", "*.csv", "*.png", "*.json")  # of a run folder, outside tune/ (Ray's) and tensorboard/


def run(name: str, argv: list[str], cwd: Path, cap: float, log: Path) -> tuple[int, float]:
    """The command's exit code (124 past its cap) and wall seconds; its output in `log`."""
    started = time.time()
    with open(log, "w") as out:
        out.write(f"$ {' '.join(argv)}  (in {cwd}, cap {cap:.0f} s)\n")
        out.flush()
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # the checkout's package
        process = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONPATH": path})
        try:
            code = process.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)  # its own process group: the command and what it started
            try:
                process.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            code = 124
    return code, time.time() - started


def profile_rows(path: Path) -> dict[str, float]:
    """A profile.csv in a few sums: seconds by phase over the command's rows and its experiments'."""
    sums: dict[str, float] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            sums[row["phase"]] = sums.get(row["phase"], 0.0) + float(row["seconds"])
    return sums


SUMMARY = {  # summary column: profile phases it adds up
    "start-up": ("start-up: Python, imports",),
    "ray": ("Ray start or join", "Ray shutdown"),
    "prepare": ("the study's prepare",),
    "to epoch 1": ("worker start, actor reuse", "set-up to the first epoch"),
    "warm-up": ("warm-up (compiles)",),
    "training": ("training",),
    "eval": ("evaluation",),
    "reports": ("checkpoints, reports",),
    "rest": ("rest of the trials",),
    "driver": ("driver, no trial running", "study code before and between experiments"),
    "report": ("after the last experiment",),
}


def table_of(log: Path) -> str:
    """The profile table a study printed, without its notes."""
    lines = log.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("profile of ")), None)
    if start is None:
        return f"({log.name}: no profile printed)"
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("what each row measures")), len(lines))
    return "\n".join(lines[start:end])


def keep(work: Path, archive: Path) -> None:
    """The logs and the run folders' small files into one archive."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work / "logs", arcname="logs")
        for path in sorted((work / "results").rglob("*")):
            inside = path.relative_to(work / "results").parts
            ray_files = "tune" in inside
            if path.is_file() and any(path.match(p) for p in KEPT) and not ray_files and "tensorboard" not in inside:
                tar.add(path, arcname=str(Path("results", *inside)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="every study with --smoke, tiny benchmarks (a CPU check)")
    p.add_argument("--only", nargs="+", choices=COMMANDS, help="these commands only, in this script's order")
    p.add_argument("--deadline", type=float, help="seconds for all the commands (default 510; with --smoke 2550)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_run_out", help="the archive's folder ($OUT)")
    args = p.parse_args()
    slower = 5 if args.smoke else 1  # a CPU's smoke runs take longer than a GPU's full ones
    deadline = args.deadline or 510 * slower
    begun = time.time()
    work = Path(tempfile.mkdtemp(prefix="gpu_run-"))
    (work / "logs").mkdir()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    header = (f"gpu_run {time.strftime('%Y-%m-%d %H:%M:%S')} commit={commit.stdout.strip() or 'unknown'} "
              f"python={platform.python_version()} host cores={os.cpu_count()} "
              f"gpu={gpu.stdout.strip() if gpu and gpu.returncode == 0 else 'none'} smoke={args.smoke}")
    print(header, flush=True)
    # bytecode for packages installed without it (pip --no-compile) or on PYTHONPATH, as a pip install writes it:
    # else every process compiles Ray's sources as it imports them, and start-up measures that
    paths = [REPO / "tune_mnist", *map(Path, filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)))]
    started = time.time()
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *map(str, set(paths))],
                   capture_output=True)
    print(f"bytecode compiled in {time.time() - started:.1f} s: {', '.join(map(str, paths))}", flush=True)
    done = {}
    for name, (command, gpu_args, smoke_args, cap, cwd) in COMMANDS.items():
        if args.only and name not in args.only:
            continue
        left = deadline - (time.time() - begun) - GRACE_S  # a command cut at its cap gets GRACE_S more
        if left < 20:
            print(f"{name}: skipped, {left:.0f} s left of the deadline", flush=True)
            done[name] = ("skipped", 0.0)
            continue
        argv = command + (smoke_args if args.smoke else gpu_args)
        if command[:3] == STUDY:
            argv += ["--profile", "--results", str(work / "results"), "--name", "gpu", *["--smoke"] * args.smoke]
        code, wall = run(name, argv, cwd, min(cap * slower, left), work / "logs" / f"{name}.log")
        done[name] = ("ok" if code == 0 else "cut at cap" if code == 124 else f"exit {code}", wall)
        print(f"{name}: {done[name][0]} in {wall:.1f} s", flush=True)
    (work / "logs" / "header.txt").write_text(header + "\n")
    keep(work, out / "gpu_run.tar.gz")

    for name in DETAILED:
        if name in done and done[name][0] != "skipped":
            print("\n" + table_of(work / "logs" / f"{name}.log"))
    print(f"\nsummary (wall s; the rest from each study's profile.csv, seconds of wall time; {header})")
    print(f"{'command':<14}{'status':>11}{'wall':>7}" + "".join(f"{c:>11}" for c in SUMMARY))
    for name, (status, wall) in done.items():
        line = f"{name:<14}{status:>11}{wall:7.1f}"
        profiled = work / "results" / name / "gpu" / profile_file
        if profiled.is_file():
            sums = profile_rows(profiled)
            line += "".join(f"{sum(sums.get(phase, 0.0) for phase in parts):11.1f}" for parts in SUMMARY.values())
        elif COMMANDS[name][0][:3] == STUDY:
            line += "  (no profile.csv: see its log)"
        elif status != "skipped":  # a benchmark: its result lines
            text = (work / "logs" / f"{name}.log").read_text(errors="replace")
            line += "\n    " + "\n    ".join(l for l in text.splitlines() if any(k in l for k in RESULT_LINES))
        print(line, flush=True)
    print(f"archive: {out / 'gpu_run.tar.gz'} (logs/, results/<study>/gpu/); total {time.time() - begun:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
