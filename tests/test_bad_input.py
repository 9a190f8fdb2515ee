"""Bad input: one line naming the problem, exit code 2, no traceback, nothing under results/."""

import pytest

from tune_mnist import cli

from conftest import cli as run_cli


def truncated_data(tmp_path):
    from tune_mnist import data

    folder = tmp_path / "broken"
    folder.mkdir()
    for path in data.locate().values():
        (folder / path.name).write_bytes(path.read_bytes())
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:2000])
    return str(folder)


CASES = {
    "P below 805": (["budget", "--P", "804"], "too small"),
    "P not a number": (["budget", "--P", "lots"], "invalid int value"),
    "one of several P too small": (["budget", "--P", "100000", "12"], "P=12 is too small"),
    "unknown activation": (["budget", "--activation", "swish"], "unknown activation 'swish'"),
    "negative trials": (["budget", "--trials", "-1"], "--trials must be >= 0"),
    "zero epochs": (["budget", "--epochs", "0"], "--epochs must be >= 1"),
    "zero seeds": (["budget", "--seeds", "0"], "--seeds must be >= 1"),
    "zero depth": (["budget", "--max-depth", "0"], "--max-depth must be >= 1"),
    "data folder without MNIST": (["budget", "--data", "{tmp}"], "no MNIST idx files"),
    "truncated data file": (["budget", "--data", "{broken}"], "t10k-labels"),
    "resume a folder that is no run": (["budget", "--resume", "{tmp}"], "not a tune_mnist run folder"),
    "export a folder that is no run": (["export", "{tmp}"], "not a tune_mnist run folder"),
    "missing space file": (["budget", "--space", "{tmp}/nope.toml"], "does not exist"),
    "zero cpus per trial": (["budget", "--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
    "negative train limit": (["budget", "--train-limit", "-5"], "--train-limit"),
    "unknown study": (["bogus"], "invalid choice"),
    "storage URI of unknown scheme": (["budget", "--storage", "nosuchfs://bucket/x"], "cannot use --storage"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, capsys):
    argv, message = CASES[name]
    fill = {"tmp": str(tmp_path / "empty"), "broken": truncated_data(tmp_path) if "{broken}" in argv else ""}
    (tmp_path / "empty").mkdir()
    results = tmp_path / "results"
    argv = [a.format(**fill) for a in argv] + (["--results", str(results)] if argv[0] != "export" else [])
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not results.exists()


def test_more_gpu_than_the_cluster_has(tmp_path, ray_session, capsys):
    results = tmp_path / "results"
    code = cli.main(["budget", "--smoke", "--gpus-per-trial", "1", "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "asks for 1 GPU but the Ray cluster has 0" in err and "\n" not in err
    assert not results.exists()


def test_real_process_exit_code_and_single_line(tmp_path):
    done = run_cli("budget", "--P", "100", "--results", str(tmp_path / "results"))
    assert done.returncode == 2
    assert done.stderr.strip() == "tune_mnist: error: P=100 is too small: the smallest MLP (k=1, m=1) has 805 parameters"
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv, message", [
    (["corruption", "--p", "1.5"], "p=1.5 is outside [0, 1]"),
    (["corruption", "--p", "-0.1"], "outside [0, 1]"),
    (["corruption", "--families", "rnn"], "unknown model family 'rnn'"),
    (["corruption", "--activations", "swish"], "unknown activation 'swish'"),
    (["corruption", "--repeats", "0"], "--repeats must be >= 1"),
    (["corruption", "--p", "0.2", "0.5"], "--p must include 0"),
    (["corruption", "--lrs", "0.001", "0"], "--lrs must be > 0"),
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
