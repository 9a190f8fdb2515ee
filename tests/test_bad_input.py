"""Bad input: one line naming the problem, exit code 2, no traceback, nothing written under results/ (nor in a run
folder that `report` or `export` was asked to read)."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import cli as run_cli
from tune_mnist import cli, data, settings
from tune_mnist.studies import load


def mnist_copy(tmp_path, name, replace=None):
    """A data folder of links to the real MNIST files, one of them replaced by `replace(path) -> bytes`."""
    folder = tmp_path / name
    folder.mkdir()
    for path in data.locate().values():
        if replace and path.name.startswith(replace[0]):
            (folder / path.name).write_bytes(replace[1](path))
        else:
            (folder / path.name).symlink_to(path)
    return folder


def idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def labels_of(value):
    return lambda path: idx(np.full(10_000, value))


def corrupt_deflate(path):
    """The gzip file with its first deflate block of a type that does not exist (zlib: invalid block type)."""
    raw = bytearray(path.read_bytes())
    start = raw.index(0, 10) + 1 if raw[3] & 8 else 10  # past the header and its file name, if it has one
    raw[start] = 0xFF
    return bytes(raw)


DATA = {  # a file replaced, and the message
    "truncated": ("t10k-labels", lambda path: path.read_bytes()[:2000], "cannot read MNIST file"),
    "corrupt deflate": ("t10k-images", corrupt_deflate, "invalid block type"),
    "label 255": ("t10k-labels", labels_of(255), "holds the label 255: MNIST's labels are 0 to 9"),
    "1-D images": ("t10k-images", lambda path: idx(np.zeros(10_000 * 784)), "not images N x 28 x 28"),
}


def space(tmp_path, text, name="space.toml", raw=None):
    path = tmp_path / name
    path.write_bytes(raw if raw is not None else text.encode())
    return str(path)


def run_folder(tmp_path, study, run_json=None, tables=None):
    """A run folder as a finished run leaves it: run.json (the study's default settings, or `run_json`), and the
    given tables (name: text)."""
    folder = tmp_path / "runs" / study / "r"
    folder.mkdir(parents=True)
    if run_json is None:
        found = load(study)
        s = settings.Space(found.settings, study).settings(cli.build_parser().parse_args([study]))
        run_json = json.dumps({"study": study, "settings": vars(s)})
    (folder / "run.json").write_bytes(run_json if isinstance(run_json, bytes) else run_json.encode())
    for name, text in (tables or {}).items():
        (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(folder)


# argv (with {tmp} the test's folder), and the message the one line must hold
CASES = {
    # values, from flags
    "P below 805": (["budget", "--P", "804"], "P=804 is too small"),
    "P not a number": (["budget", "--P", "lots"], "invalid int value"),
    "P as a float": (["budget", "--P", "1e30"], "invalid int value"),
    "P past what any GPU holds": (["budget", "--P", "1" + "0" * 30], "--P 1" + "0" * 30 + ": must be <= 1000000000"),
    "one of several P too small": (["budget", "--P", "100000", "12"], "P=12 is too small"),
    "unknown activation": (["budget", "--activation", "swish"], "--activation swish: must be 'tanh', 'relu'"),
    "negative trials": (["budget", "--trials", "-1"], "--trials -1: must be >= 0"),
    "zero epochs": (["budget", "--epochs", "0"], "--epochs 0: must be > 0"),
    "zero seeds": (["budget", "--seeds", "0"], "--seeds 0: must be > 0"),
    "zero depth": (["budget", "--max-depth", "0"], "--max-depth 0: must be > 0"),
    "lr 0": (["budget", "--lrs", "0.001", "0"], "--lrs 0.0: must be > 0"),
    "lr -1": (["budget", "--lrs", "-1"], "--lrs -1.0: must be > 0"),
    "lr nan": (["budget", "--lrs", "nan"], "--lrs nan: must be a finite number"),
    "lr inf": (["budget", "--lrs", "inf"], "--lrs inf: must be a finite number"),
    "batch size 0": (["budget", "--batch-size", "0"], "--batch-size 0: must be > 0"),
    "batch size -1": (["budget", "--batch-size", "-1"], "--batch-size -1: must be > 0"),
    "one value where a range needs two": (["budget", "--ratio", "0.3"], "--ratio 0.3: needs at least 2 values"),
    "lr range of one value": (["budget", "--lr-range", "1e-2"], "--lr-range 0.01: needs at least 2 values"),
    "range low above high": (["budget", "--lr-range", "1e-2", "1e-4"], "the low end must not exceed the high end"),
    "unknown optimizer (budget)": (["budget", "--optimizer", "sgd"], "--optimizer sgd: must be 'adam' or 'adamw'"),
    "negative max concurrent": (["budget", "--max-concurrent", "-5"], "--max-concurrent -5: must be >= 0"),
    "zero cpus per trial": (["budget", "--cpus-per-trial", "0"], "--cpus-per-trial 0.0: must be > 0"),
    "negative train limit": (["budget", "--train-limit", "-5"], "--train-limit -5: must be >= 0"),
    "linear run not finished": (["budget", "--linear-run", "/nonexistent"],
                                "--linear-run /nonexistent: not a finished linear run"),
    "scaling negative weight decay": (["scaling", "--weight-decay", "-1"], "--weight-decay -1.0: must be >= 0"),
    "scaling zero epochs": (["scaling", "--epochs", "0"], "--epochs 0: must be > 0"),
    "scaling check width off the grid": (["scaling", "--check-widths", "5"], "--check-widths [5] must be among"),
    "scaling batch size 0": (["scaling", "--batch-size", "0"], "--batch-size 0: must be > 0"),
    "scaling unknown optimizer": (["scaling", "--optimizer", "bogus"], "--optimizer bogus: must be 'adam'"),
    "scaling fraction 0": (["scaling", "--fractions", "0"], "--fractions 0.0: must be > 0"),
    "scaling fraction above 1": (["scaling", "--fractions", "1", "1.5"], "--fractions 1.5: must be <= 1"),
    "scaling width 0": (["scaling", "--widths", "0"], "--widths 0: must be > 0"),
    "corruption p above 1": (["corruption", "--p", "0", "1.5"], "--p 1.5: must be <= 1"),
    "corruption p below 0": (["corruption", "--p", "-0.1", "1"], "--p -0.1: must be >= 0"),
    "corruption one p": (["corruption", "--p", "0.5"], "--p needs at least two values"),
    "corruption unknown family": (["corruption", "--families", "rnn"], "--families rnn: must be 'mlp' or 'cnn'"),
    "corruption unknown activation": (["corruption", "--activations", "swish"], "--activations swish: must be"),
    "corruption zero repeats": (["corruption", "--repeats", "0"], "--repeats 0: must be > 0"),
    "corruption lr -1": (["corruption", "--lrs", "0.001", "-1"], "--lrs -1.0: must be > 0"),
    "corruption p without 0": (["corruption", "--p", "0.2", "0.5"], "--p must include 0"),
    "corruption zero sweep seeds": (["corruption", "--sweep-seeds", "0"], "--sweep-seeds 0: must be > 0"),
    "corruption unknown optimizer": (["corruption", "--optimizer", "bogus"], "--optimizer bogus: must be"),
    "corruption negative cnn hidden": (["corruption", "--cnn-hidden", "-1"], "--cnn-hidden -1: must be >= 0"),
    "corruption mlp width 0": (["corruption", "--mlp-widths", "0"], "--mlp-widths 0: must be > 0"),
    "corruption five conv blocks": (["corruption", "--cnn-channels", "1", "2", "3", "4", "5"], "takes at most 4"),
    "random infinite weight scale": (["random", "--weight-scales", "inf"], "--weight-scales inf: must be a finite"),
    "random repeated draw": (["random", "--data-seeds", "0", "0"], "--data-seeds repeats a draw"),
    "random splits past 60,000": (["random", "--n-train", "60000"], "take 70,000 images of the 60,000"),
    "transplant batch size 0": (["transplant", "--batch-size", "0"], "--batch-size 0: must be > 0"),
    "transplant unknown optimizer": (["transplant", "--optimizer", "bogus"], "--optimizer bogus: must be"),
    "transplant lr 0": (["transplant", "--lr", "0"], "--lr 0.0: must be > 0"),
    "transplant fewer outputs than labels": (["transplant", "--outputs", "9"], "--outputs 9: must be >= 10"),
    "transplant unknown input scaling": (["transplant", "--inputs", "zscore"], "--inputs zscore: must be 'unit'"),
    "linear eval every -1": (["linear", "--eval-every", "-1"], "--eval-every -1: must be > 0"),
    "linear eval every 0": (["linear", "--eval-every", "0"], "--eval-every 0: must be > 0"),
    "linear negative step size": (["linear", "--step-sizes", "-1"], "--step-sizes -1.0: must be > 0"),
    "a value with a newline": (["budget", "--activation", "re\nlu"], "--activation 're\\nlu': must be"),
    "unknown study": (["bogus"], "invalid choice"),
    "unknown flag": (["budget", "--lrr", "1"], "unrecognized arguments: --lrr 1"),
    # names and paths
    "name that climbs out": (["budget", "--name", "../../escape"], "--name ../../escape: must be one folder name"),
    "name ..": (["budget", "--name", ".."], "--name ..: must be one folder name"),
    "name .": (["budget", "--name", "."], "--name .: must be one folder name"),
    "name with a slash": (["budget", "--name", "a/b"], "--name a/b: must be one folder name"),
    "name of 300 characters": (["budget", "--name", "n" * 300], "must be at most 200 bytes"),
    "results that is a file": (["budget", "--results", "{tmp}/file"], "--results {tmp}/file: not a folder"),
    "results under a file": (["budget", "--results", "{tmp}/file/r"], "{tmp}/file is not a folder"),
    "data folder that does not exist": (["budget", "--data", "{tmp}/nope"], "--data {tmp}/nope: no such folder"),
    "data folder without MNIST": (["budget", "--data", "{tmp}/empty"], "no MNIST idx files"),
    "data folder of a name too long": (["budget", "--data", "d" * 300], "--data " + "d" * 300 + ": File name too long"),
    "report a folder of a name too long": (["report", "r" * 300], "r" * 300 + " does not exist"),
    "storage URI of unknown scheme": (["budget", "--storage", "nosuchfs://bucket/x"], "cannot use --storage"),
    "storage that is a file": (["budget", "--storage", "{tmp}/file"], "--storage {tmp}/file: not a folder"),
    "address with a bad port": (["budget", "--address", "127.0.0.1:-1"], "--address 127.0.0.1:-1: must be"),
    "address without a host": (["budget", "--address", "ray://"], "--address ray://: must be"),
    "address with port 0": (["budget", "--address", "head:0"], "--address head:0: must be"),
    # MNIST files
    **{f"MNIST file: {k}": (["budget", "--data", f"{{{k}}}"], v[2]) for k, v in DATA.items()},
    # --space files
    "missing space file": (["budget", "--space", "{tmp}/nope.toml"], "does not exist"),
    "space file that is a folder": (["budget", "--space", "{tmp}/empty"], "is a folder, not a file"),
    "space file not UTF-8": (["budget", "--space", "{space:latin}"], "is not UTF-8 text"),
    "space file not TOML": (["budget", "--space", "{space:notoml}"], "is not valid TOML"),
    "space file with smoke = 1": (["budget", "--space", "{space:smoke}"], "smoke must be a table ([smoke]), got 1"),
    "space file with P = []": (["budget", "--space", "{space:P}"], "P = [] in {tmp}/P.toml: needs at least 1 value"),
    "space file with activations = []": (["budget", "--space", "{space:acts}"], "activations = [] in"),
    "space file with a name that climbs out": (["budget", "--space", "{space:name}"], "name = '../../x' in"),
    "space file with a wrong type": (["budget", "--space", "{space:type}"], "epochs = 2.5 in"),
    "space file with nan in [smoke]": (["budget", "--smoke", "--space", "{space:nan}"], "lrs[0] = nan in"),
    "space file with an unknown key": (["budget", "--space", "{space:unknown}"], "sets epoch, which budget"),
    # --resume
    "resume a folder that is no run": (["budget", "--resume", "{tmp}/empty"], "not a tune_mnist run folder"),
    "resume a run.json that is []": (["budget", "--resume", "{run:list}"], "run.json is damaged"),
    "resume a run.json without settings": (["budget", "--resume", "{run:nosettings}"], "run.json is damaged"),
    "resume a run.json not UTF-8": (["budget", "--resume", "{run:latin}"], "run.json is damaged: not UTF-8"),
    "resume a run.json not JSON": (["budget", "--resume", "{run:garbage}"], "run.json is damaged"),
    "resume settings that fail validation": (["linear", "--resume", "{run:badlr}"], "step_sizes[0] = -1 in"),
    "resume a run of another study": (["budget", "--resume", "{run:linear}"], "is a 'linear' run, not 'budget'"),
    "resume with a setting changed": (["linear", "--resume", "{run:linear}", "--seeds", "5"],
                                      "--seeds cannot be given with --resume"),
    "resume with --smoke": (["linear", "--resume", "{run:linear}", "--smoke"], "--smoke cannot be given"),
    # report and export of a run that is not whole
    "report a folder that does not exist": (["report", "{tmp}/results/budget/nope"], "does not exist"),
    "report a file": (["report", "{tmp}/file"], "is not a folder"),
    "report a run without trials.csv": (["report", "{run:linear}"], "has no trials.csv: the run has not finished"),
    "report an empty trials.csv": (["report", "{run:empty}"], "trials.csv is damaged"),
    "report a garbage trials.csv": (["report", "{run:binary}"], "trials.csv is damaged"),
    "report a trials.csv without a column": (["report", "{run:nocolumn}"], "lacks the column test_acc"),
    "report a trials.csv cut short": (["report", "{run:short}"], "1 row where the run's settings give 23"),
    "report a trials.csv with inf": (["report", "{run:inf}"], "column test_loss has a value that is not a finite"),
    "report a run of an unknown study": (["report", "{run:unknown}"], "unknown study 'nope'"),
    "export a folder that is no run": (["export", "{tmp}/empty"], "not a tune_mnist run folder"),
    "export a trials.csv cut short": (["export", "{run:budget_short}"], "trials.csv is damaged: 2 rows"),
}

LINEAR_COLUMNS = "grid,lr,seed,init_scale,final_train_loss,final_train_acc,val_loss,test_loss,test_acc,error"
LINEAR_ROW = "step_size,0.1,0,1.0,0.3,0.9,0.3,0.3,0.9,"


def fill(tmp_path, argv):
    """Makes what the case's argv names and returns the argv with paths filled in."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a folder\n")
    linear = lambda **tables: lambda: run_folder(tmp_path, "linear", tables=tables)  # noqa: E731
    spaces = {
        "latin": lambda: space(tmp_path, "", "latin.toml", raw="epochs = 2 # caf\xe9\n".encode("latin-1")),
        "notoml": lambda: space(tmp_path, "epochs = = 2\n", "notoml.toml"),
        "smoke": lambda: space(tmp_path, "smoke = 1\n", "smoke.toml"),
        "P": lambda: space(tmp_path, "P = []\n", "P.toml"),
        "acts": lambda: space(tmp_path, "activations = []\n", "acts.toml"),
        "name": lambda: space(tmp_path, 'name = "../../x"\n', "name.toml"),
        "type": lambda: space(tmp_path, "epochs = 2.5\n", "type.toml"),
        "nan": lambda: space(tmp_path, "[smoke]\nlrs = [nan]\n", "nan.toml"),
        "unknown": lambda: space(tmp_path, "epoch = 7\n", "unknown.toml"),
    }
    linear_settings = json.loads(json.dumps(vars(settings.Space(load("linear").settings, "linear").settings(
        cli.build_parser().parse_args(["linear"])))))
    short_budget = "P,stage,k,widths,shape,activation,lr,weight_decay,seed,params,val_loss,test_loss,test_acc," \
                   "final_train_loss,error,stopped_early,member,checkpoint\n" + \
                   "100000,grid,0,,uniform,tanh,0.001,0,0,7850,0.3,0.3,0.9,0.3,,0,0,\n" * 2
    runs_ = {
        "list": lambda: run_folder(tmp_path, "budget", "[]"),
        "nosettings": lambda: run_folder(tmp_path, "budget", '{"study": "budget"}'),
        "latin": lambda: run_folder(tmp_path, "budget", '{"study": "caf\xe9"}'.encode("latin-1")),
        "garbage": lambda: run_folder(tmp_path, "budget", "{not json"),
        "badlr": lambda: run_folder(tmp_path, "linear", json.dumps(
            {"study": "linear", "settings": {**linear_settings, "step_sizes": [-1]}})),
        "linear": linear(),
        "empty": linear(**{"trials.csv": ""}),
        "binary": linear(**{"trials.csv": bytes(range(256)) * 8}),
        "nocolumn": linear(**{"trials.csv": LINEAR_COLUMNS.replace(",test_acc", "") + "\n"}),
        "short": linear(**{"trials.csv": f"{LINEAR_COLUMNS}\n{LINEAR_ROW}\n"}),
        "inf": linear(**{"trials.csv": f"{LINEAR_COLUMNS}\n" + f"{LINEAR_ROW}\n" * 22 +
                         LINEAR_ROW.replace("0.3,0.9,0.3,0.3", "0.3,0.9,0.3,inf") + "\n"}),
        "unknown": lambda: run_folder(tmp_path, "linear", '{"study": "nope", "settings": {}}'),
        "budget_short": lambda: run_folder(tmp_path, "budget", tables={"trials.csv": short_budget,
                                                                     "best.json": '{"100000": ["good"]}'}),
    }
    filled = []
    for a in argv:
        if a.startswith("{space:"):
            a = spaces[a[7:-1]]()
        elif a.startswith("{run:"):
            a = runs_[a[5:-1]]()
        elif a.strip("{}") in DATA:
            a = str(mnist_copy(tmp_path, "data", DATA[a.strip("{}")]))
        filled.append(a.replace("{tmp}", str(tmp_path)))
    return filled


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, capsys, monkeypatch):
    argv, message = CASES[name]
    results = tmp_path / "results"
    argv = fill(tmp_path, argv)
    if argv[0] not in ("export", "report") and not {"--resume", "--results"} & set(argv):
        argv += ["--results", str(results)]
    monkeypatch.setattr(cli.cluster, "connect", lambda address: pytest.fail("the input was taken as good"))
    before = snapshot(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message.replace("{tmp}", str(tmp_path)) in err and "\n" not in err and "Traceback" not in err, err
    assert not results.exists()
    assert snapshot(tmp_path) == before  # the run folder it read, the best.json it would write: untouched


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_results_folder(tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o555)
    assert cli.main(["budget", "--results", str(tmp_path / "ro" / "results")]) == 2
    assert f"{tmp_path / 'ro'} is not writable" in capsys.readouterr().err
    assert not (tmp_path / "ro" / "results").exists()


@pytest.mark.slow
def test_more_gpu_than_the_cluster_has(tmp_path, ray_session, capsys):
    results = tmp_path / "results"
    code = cli.main(["budget", "--smoke", "--gpus-per-trial", "1", "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "asks for 1 GPU but the Ray cluster has 0" in err and "\n" not in err
    assert not results.exists()


@pytest.mark.slow
def test_real_process_exit_code_and_single_line(tmp_path):
    done = run_cli("budget", "--P", "100", "--results", str(tmp_path / "results"))
    assert done.returncode == 2
    assert done.stderr.strip() == "tune_mnist: error: P=100 is too small: the smallest MLP (k=1, m=1) has 805 parameters"
    assert not (tmp_path / "results").exists()


HOLD = """
import sys, time
from tune_mnist import runs
runs.lock(sys.argv[1])
print("held", flush=True)
time.sleep(300)
"""


def test_a_run_folder_is_locked_before_anything_is_written_in_it(tmp_path):
    """Two commands with one --name: the one that finds the folder held writes no run.json of its own."""
    from tune_mnist import runs
    from tune_mnist.errors import UserError

    run_dir = tmp_path / "results" / "linear" / "same"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError, match="is in use by another command"):
            runs.start(run_dir, "linear", {"seeds": 2}, ["refused"])
        assert not (run_dir / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    runs.start(run_dir, "linear", {"seeds": 3}, ["first"])
    with pytest.raises(UserError, match="already holds a run"):  # this process holds it, yet the run is taken
        runs.start(run_dir, "linear", {"seeds": 2}, ["second"])
    assert json.loads((run_dir / "run.json").read_text())["command"] == ["first"]
