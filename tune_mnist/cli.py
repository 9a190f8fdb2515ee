"""Command line: `python -m tune_mnist <study> [flags]`, `export RUN_DIR`, `report RUN_DIR`.

Everything the studies share happens here, in this order, so that bad input never leaves a trace:
parse -> `validate` (the Settings, built once: the study's TOML, its [smoke] table, its [gpu] table where trials
will have a GPU, a --space file, the flags, or a resumed run's run.json; every field's declared type checked, then
the paths and the study's check, once) -> load data -> the study's prepare, if it has one (work started while Ray
starts) -> reach Ray, check that a trial fits it -> create and lock the run folder, write run.json -> run the
study -> print one summary line. A UserError anywhere before the run folder exists prints one line and exits 2.

Whether trials will have a GPU, and so whether the [gpu] table applies, is settled before the settings are built:
with `--address local` by this machine (torch.cuda.is_available(): a local Ray gives its trials this machine's
GPUs); with a cluster's address by joining the cluster first (cluster.connect, which gives up within seconds) and
asking it, so the address is the one setting checked, and acted on, before the others. `report` and `export` read
only a finished run whose run.json, settings and tables check out (studies.finished_run), and create no folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from tune_mnist import data as mnist
from tune_mnist import models, runs, settings, storage, studies
from tune_mnist.errors import UserError, require
from tune_mnist.files import check_folder, read_table
from tune_mnist.studies import Study, budget, registry
from tune_mnist.tuning import cluster, runner, search

STUDIES = registry()
# What a resumed run may change: where the data lies and the cluster it runs on; never what it trains.
RESUMABLE = ("data", "address", "cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures")


def one_line(message: str) -> str:
    return message.replace("\r", "\\r").replace("\n", "\\n")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        print(f"{self.prog}: error: {one_line(message)}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> Parser:
    parser = Parser(prog="tune_mnist", description="Ray Tune + Optuna studies of MNIST-scale networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, study in STUDIES.items():
        p = sub.add_parser(name, help=study.help, description=study.doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        settings.Space(study.settings, name).add_flags(p)
        p.add_argument("--smoke", action="store_true", help="tiny data and epochs: checks the pipeline in a minute")
        p.add_argument("--space", metavar="FILE", help="a TOML whose keys replace the study's defaults")
        p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run of this study")
    p = sub.add_parser("export", help="export the best models of a finished budget run")
    p.add_argument("run_dir")
    p.add_argument("--top", type=int, default=1, help="models per P (default 1)")
    p.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                   help="safetensors weights (default), or those and an ONNX graph (needs the [export] extra)")
    p = sub.add_parser("report", help="draw a finished run's figures and REPORT.md again")
    p.add_argument("run_dir")
    return parser


def has_gpus(address: str) -> bool:
    """Whether trials will have a GPU: this machine's for a local Ray, else the cluster's, joined to ask it."""
    return cluster.local_gpu() if address == "local" else cluster.connect(address)


def check_paths(s: settings.Common, run_dir: Path | None) -> None:
    """The folders the run reads and writes (run_dir: a resumed run's), and the storage's scheme."""
    if s.data:
        check_folder(s.data, "--data", write=False)
    check_folder(run_dir or s.results, "--resume" if run_dir else "--results", write=True)
    if storage.is_uri(s.storage):
        storage.resolve(s.storage)  # an unknown scheme or bucket fails here, before anything is written
    elif s.storage:
        check_folder(s.storage, "--storage", write=True)


def validate(study: Study, args: argparse.Namespace) -> tuple[Any, Path]:
    """The run's Settings and folder, every check made: what run_study starts from. Writes nothing, but locks a
    resumed run's folder once all is checked, and joins a cluster's --address."""
    space = settings.Space(study.settings, study.name, args.space)
    if not args.resume:
        s = space.settings(args, args.smoke, gpu=has_gpus(space.value("address", args, args.smoke)))
        check_paths(s, None)
        run_dir = runs.new_run_dir(Path(s.results), study.name, s.name)
    else:
        run_dir, given = Path(args.resume), space.given(args)
        fixed = [f"--{k.replace('_', '-')}" for k in given if k not in RESUMABLE]
        fixed += [flag for flag, on in (("--space", args.space), ("--smoke", args.smoke)) if on]
        if fixed:
            raise UserError(f"{fixed[0]} cannot be given with --resume: a resumed run keeps its settings (only "
                            f"--{', --'.join(RESUMABLE).replace('_', '-')} may change)")
        s = space.saved(runs.read(run_dir, study.name)["settings"], str(run_dir / runs.RUN_FILE), given)
        check_paths(s, run_dir)
    study.check(s)
    if args.resume:  # run.json is written once, whole, so it was sound to read before the lock
        runs.lock(run_dir)
    return s, run_dir


def run_study(study: Study, s: Any, run_dir: Path, args: argparse.Namespace) -> int:
    shared = storage.for_run(s.storage, study.name, run_dir) if s.storage else ""
    if args.resume:
        runner.check_checkpoints(shared or str(run_dir))
        search.check_state(shared or str(run_dir))
    data = mnist.subset(mnist.load(s.data or None), s.train_limit or None, s.eval_limit or None)
    if study.prepare:  # work that needs no cluster (compiling kernels) goes on while Ray starts
        study.prepare(s, data)
    cluster.connect(s.address)
    res = cluster.Resources(s.address, s.cpus_per_trial, s.gpus_per_trial, s.max_concurrent, s.max_failures,
                            shared)
    cluster.check(res)
    if shared:
        storage.check(shared)
    if not args.resume:
        runs.start(run_dir, study.name, dataclasses.asdict(s), ["python", "-m", "tune_mnist", *args.argv])
    print(f"tune_mnist {study.name}: run folder {run_dir}" + (f", shared copy {res.storage}" if res.storage else ""),
          flush=True)
    start = time.time()
    try:
        summary = study.run(s, run_dir, data, res)
    except runner.Interrupted as e:
        print(f"tune_mnist: interrupted ({e}); what finished is saved: continue with "
              f"python -m tune_mnist {study.name} --resume {run_dir}", file=sys.stderr, flush=True)
        return 130
    (run_dir / "interrupted.csv").unlink(missing_ok=True)
    if res.storage:
        storage.upload(run_dir, res.storage)
    fields = " ".join(f"{k}={v}" for k, v in summary.items())
    print(f"STUDY={study.name} run={run_dir} {fields} wall={time.time() - start:.1f}s", flush=True)
    return 0


def export(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    meta = runs.read(run_dir)
    require(meta["study"] == budget.NAME, f"{run_dir} is a {meta['study']!r} run; only budget runs export models")
    require((run_dir / "trials.csv").is_file(), f"{run_dir} has no trials.csv: the run has not finished")
    require(args.top >= 1, f"--top must be >= 1, got {args.top}")
    best = budget.export(run_dir, read_table(run_dir / "trials.csv"), args.top, onnx=args.format == "onnx")
    if meta["settings"].get("storage"):
        storage.upload(run_dir, storage.for_run(meta["settings"]["storage"], budget.NAME, run_dir))
    for P, entries in best.items():
        for e in entries:
            written = ", ".join(str(run_dir / e[k]) for k in ("file", "onnx") if k in e)
            print(f"P={P} rank={e['rank']} widths={e['widths']} test_acc={e['test_acc']:.4f} -> {written}")
    return 0


def redraw(args: argparse.Namespace) -> int:
    for path in studies.redraw(args.run_dir):
        print(path)
    return 0


def main(argv: list[str] | None = None, check_only: bool = False) -> int:
    """The command; with check_only, every check it makes before it starts anything (a test's way to try input)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # run.json records the exact command
    try:
        if args.command in ("export", "report"):
            if args.command == "export" and args.format == "onnx":
                models.check_onnx()  # a missing package is said before the run is read
            studies.finished_run(args.run_dir)  # a damaged run is refused before anything is read or written
            return 0 if check_only else {"export": export, "report": redraw}[args.command](args)
        study = STUDIES[args.command]
        s, run_dir = validate(study, args)
        return 0 if check_only else run_study(study, s, run_dir, args)
    except runner.Failed as e:  # the input was sound, the training was not: its failures stay in the run folder
        print(f"tune_mnist: failed: {one_line(str(e))}", file=sys.stderr)
        return 1
    except UserError as e:
        print(f"tune_mnist: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a study runs (joining a cluster, loading data): nothing to save
        print("tune_mnist: interrupted", file=sys.stderr)
        return 130
