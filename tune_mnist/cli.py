"""Command line: `python -m tune_mnist <study> [flags]`, plus `export RUN_DIR`.

Everything the studies share happens here, in this order, so bad input never leaves a trace:
parse -> merge the study's space file with flags -> check -> load data -> the study's prepare, if it has one
(work started in the background while Ray starts) -> reach Ray -> create the run folder -> run the study ->
print one summary line. A UserError anywhere before the run folder exists prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from tune_mnist import data as mnist
from tune_mnist import driver, runs, spaces, storage
from tune_mnist.errors import UserError, require
from tune_mnist.files import read_table
from tune_mnist.studies import budget, registry

STUDIES = registry()
RESOURCE_FLAGS = ("address", "cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="folder with the MNIST idx files (default: $TUNE_MNIST_DATA, then ./data)")
    p.add_argument("--results", default="results", help="results root (default ./results)")
    p.add_argument("--name", help="run name (default: a timestamp)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run of this study")
    p.add_argument("--space", help="search space TOML (default: the study's file in tune_mnist/search_spaces)")
    p.add_argument("--smoke", action="store_true", help="tiny data and epochs: checks the pipeline in a minute")
    p.add_argument("--train-limit", type=int, help="use only this many training images (0: all)")
    p.add_argument("--eval-limit", type=int, help="use only this many val and test images (0: all)")
    p.add_argument("--storage", help="a folder every node mounts, or a URI (s3://bucket/path): trials, "
                                     "TensorBoard files and a copy of the run folder go there")
    p.add_argument("--address", default="local", help="'local' (start Ray here), 'auto' or ray://host:10001")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, help="GPU share of a trial (default: 0.5 if the cluster has "
                                                         "GPUs, else 0); 0.25 packs four trials on a GPU")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as resources allow)")
    p.add_argument("--max-failures", type=int, default=0, help="retries of a trial that raised")


def build_parser() -> Parser:
    parser = Parser(prog="tune_mnist", description="Ray Tune + Optuna studies of MNIST-scale networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, module in STUDIES.items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        add_common(p)
    p = sub.add_parser("export", help="export the best models of a finished run")
    p.add_argument("run_dir")
    p.add_argument("--top", type=int, default=1, help="models per P (default 1)")
    return parser


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The study's space file, its [smoke] table with --smoke, then every flag that was given."""
    s = spaces.load(args.command, args.space)
    smoke = s.pop("smoke", {})
    if args.smoke:
        s.update(smoke)
    s.update({k: v for k, v in vars(args).items() if v is not None and k not in ("smoke",)})
    return s


def resources(s: dict[str, Any]) -> driver.Resources:
    require(s["cpus_per_trial"] > 0, f"--cpus-per-trial must be > 0, got {s['cpus_per_trial']}")
    require(s.get("gpus_per_trial") is None or s["gpus_per_trial"] >= 0,
            f"--gpus-per-trial must be >= 0, got {s.get('gpus_per_trial')}")
    require(s["max_failures"] >= 0, f"--max-failures must be >= 0, got {s['max_failures']}")
    return driver.Resources(**{k: s.get(k) for k in RESOURCE_FLAGS})


def run_study(args: argparse.Namespace) -> int:
    study = STUDIES[args.command]
    if args.resume:
        run_dir = Path(args.resume)
        s = runs.read(run_dir, study.NAME)["args"]
        runs.lock(run_dir)
        s.update({k: getattr(args, k) for k in RESOURCE_FLAGS})  # the cluster may differ on resume
    else:
        s = settings(args)
        run_dir = runs.new_run_dir(Path(s["results"]), study.NAME, s.get("name"))
    study.check(s)
    if s.get("storage"):
        storage.resolve(s["storage"])  # an unknown scheme or bucket fails here, before anything is written
    require(s.get("train_limit", 0) >= 0 and s.get("eval_limit", 0) >= 0, "--train-limit/--eval-limit must be >= 0")
    data = mnist.subset(mnist.load(s.get("data")), s.get("train_limit") or None, s.get("eval_limit") or None)
    res = resources(s)
    if hasattr(study, "prepare"):  # work that needs no cluster (compiling kernels) goes on while Ray starts
        study.prepare(s, data)
    res = driver.connect(res)
    if s.get("storage"):
        res = dataclasses.replace(res, storage=storage.for_run(s["storage"], study.NAME, run_dir))
        storage.check(res.storage)
    if not args.resume:
        runs.start(run_dir, study.NAME, s)
        runs.lock(run_dir)
    print(f"tune_mnist {study.NAME}: run folder {run_dir}" + (f", shared copy {res.storage}" if res.storage else ""),
          flush=True)
    start = time.time()
    summary = study.run(s, run_dir, data, res)
    if res.storage:
        storage.upload(run_dir, res.storage)
    fields = " ".join(f"{k}={v}" for k, v in summary.items())
    print(f"STUDY={study.NAME} run={run_dir} {fields} wall={time.time() - start:.1f}s", flush=True)
    return 0


def export(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    meta = runs.read(run_dir)
    require(meta["study"] == budget.NAME, f"{run_dir} is a {meta['study']!r} run; only budget runs export models")
    require((run_dir / "trials.csv").is_file(), f"{run_dir} has no trials.csv: the run has not finished")
    require(args.top >= 1, f"--top must be >= 1, got {args.top}")
    best = budget.export(run_dir, read_table(run_dir / "trials.csv"), args.top)
    if meta["args"].get("storage"):
        storage.upload(run_dir, storage.for_run(meta["args"]["storage"], budget.NAME, run_dir))
    for P, entries in best.items():
        for e in entries:
            print(f"P={P} rank={e['rank']} widths={e['widths']} test_acc={e['test_acc']:.4f} -> {run_dir / e['file']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return export(args) if args.command == "export" else run_study(args)
    except UserError as e:
        print(f"tune_mnist: error: {e}", file=sys.stderr)
        return 2
