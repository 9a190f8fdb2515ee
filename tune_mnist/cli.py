"""Command line: `python -m tune_mnist <study> [flags]`, `export RUN_DIR`, `report RUN_DIR`.

Everything the studies share happens here, in this order, so that bad input never leaves a trace:
parse -> settings (the study's TOML, its [smoke] table, the flags) -> check -> load data -> the study's prepare,
if it has one (work started while Ray starts) -> reach Ray (with GPUs, the TOML's [gpu] table applies) -> create
the run folder -> run the study -> print one summary line. A UserError anywhere before the run folder exists
prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from tune_mnist import data as mnist
from tune_mnist import report, runs, settings, storage
from tune_mnist.errors import UserError, require
from tune_mnist.files import read_table
from tune_mnist.studies import budget, registry
from tune_mnist.tuning import cluster, runner, search

STUDIES = registry()
RESOURCES = ("address", "cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> Parser:
    parser = Parser(prog="tune_mnist", description="Ray Tune + Optuna studies of MNIST-scale networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, module in STUDIES.items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        settings.Space(module.Settings, name).add_flags(p)
        p.add_argument("--smoke", action="store_true", help="tiny data and epochs: checks the pipeline in a minute")
        p.add_argument("--space", metavar="FILE", help="a TOML whose keys replace the study's defaults")
        p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run of this study")
    p = sub.add_parser("export", help="export the best models of a finished budget run")
    p.add_argument("run_dir")
    p.add_argument("--top", type=int, default=1, help="models per P (default 1)")
    p = sub.add_parser("report", help="draw a finished run's figures and REPORT.md again")
    p.add_argument("run_dir")
    return parser


def check(s: settings.Common) -> None:
    require(s.cpus_per_trial > 0, f"--cpus-per-trial must be > 0, got {s.cpus_per_trial}")
    require(s.gpus_per_trial >= 0, f"--gpus-per-trial must be >= 0, got {s.gpus_per_trial}")
    require(s.max_failures >= 0, f"--max-failures must be >= 0, got {s.max_failures}")
    require(s.train_limit >= 0 and s.eval_limit >= 0, "--train-limit/--eval-limit must be >= 0")
    if s.storage:
        storage.resolve(s.storage)  # an unknown scheme or bucket fails here, before anything is written


def run_study(args: argparse.Namespace) -> int:
    study = STUDIES[args.command]
    space = settings.Space(study.Settings, study.NAME, args.space)
    if args.resume:
        run_dir = Path(args.resume)
        saved = runs.read(run_dir, study.NAME)["settings"]
        runs.lock(run_dir)
        given = {k: getattr(args, k) for k in RESOURCES if getattr(args, k) is not None}  # the cluster may differ
        # a setting added to the study since the run began takes its default
        s = settings.build(study.Settings, {**space.values, **saved, **given})
    else:
        s = space.settings(args, args.smoke)
        run_dir = runs.new_run_dir(Path(s.results), study.NAME, s.name or None)

    def on_gpus() -> Any:  # the TOML's [gpu] table, where no flag overrides it
        with_gpu = space.settings(args, args.smoke, gpu=True)
        study.check(with_gpu)
        return with_gpu

    check(s)
    study.check(s)
    shared = storage.for_run(s.storage, study.NAME, run_dir) if s.storage else ""
    if args.resume:
        runner.check_checkpoints(shared or str(run_dir))
        search.check_state(shared or str(run_dir))
    data = mnist.subset(mnist.load(s.data or None), s.train_limit or None, s.eval_limit or None)
    local_gpu = s.address == "local" and not args.resume and cluster.local_gpu()
    s = on_gpus() if local_gpu else s
    if hasattr(study, "prepare"):  # work that needs no cluster (compiling kernels) goes on while Ray starts
        study.prepare(s, data)
    if cluster.connect(s.address) and not args.resume and not local_gpu:
        s = on_gpus()
    res = cluster.Resources(s.address, s.cpus_per_trial, s.gpus_per_trial, s.max_concurrent, s.max_failures,
                            shared)
    cluster.check(res)
    if shared:
        storage.check(shared)
    if not args.resume:
        runs.start(run_dir, study.NAME, dataclasses.asdict(s), ["python", "-m", "tune_mnist", *args.argv])
        runs.lock(run_dir)
    print(f"tune_mnist {study.NAME}: run folder {run_dir}" + (f", shared copy {res.storage}" if res.storage else ""),
          flush=True)
    start = time.time()
    try:
        summary = study.run(s, run_dir, data, res)
    except runner.Interrupted as e:
        print(f"tune_mnist: interrupted ({e}); what finished is saved: continue with "
              f"python -m tune_mnist {study.NAME} --resume {run_dir}", file=sys.stderr, flush=True)
        return 130
    (run_dir / "interrupted.csv").unlink(missing_ok=True)
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
    if meta["settings"].get("storage"):
        storage.upload(run_dir, storage.for_run(meta["settings"]["storage"], budget.NAME, run_dir))
    for P, entries in best.items():
        for e in entries:
            print(f"P={P} rank={e['rank']} widths={e['widths']} test_acc={e['test_acc']:.4f} -> {run_dir / e['file']}")
    return 0


def redraw(args: argparse.Namespace) -> int:
    for path in report.redraw(args.run_dir):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # run.json records the exact command
    commands = {"export": export, "report": redraw}
    try:
        return commands.get(args.command, run_study)(args)
    except UserError as e:
        print(f"tune_mnist: error: {e}", file=sys.stderr)
        return 2
