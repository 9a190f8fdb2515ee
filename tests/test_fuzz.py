"""Fuzz: for every study and every flag, values across each type's edge cases (0, negatives, NaN, ±inf, huge, empty
and wrong-length lists, wrong types, path tricks) either are refused (exit 2, one line on stderr naming a setting,
nothing written) or pass validation. The same for a setting in a --space file and in a resumed run.json.

In this process and without Ray: `cli.main(argv, check_only=True)` makes every check the command makes before it
starts anything (a cluster's --address is taken as reachable, without GPUs). A few fresh processes check the same
promise for the real command. Hypothesis runs derandomized, so CI sees the same examples every time; for a longer
search, set TUNE_MNIST_FUZZ_EXAMPLES (examples per flag, and per study for the files; default 12) and, for new
examples, TUNE_MNIST_FUZZ_SEED:

    TUNE_MNIST_FUZZ_EXAMPLES=5000 TUNE_MNIST_FUZZ_SEED=$RANDOM pytest tests/test_fuzz.py
"""

import contextlib
import functools
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings, strategies as st

from tune_mnist import cli
from tune_mnist import settings as spaces

EXAMPLES = int(os.environ.get("TUNE_MNIST_FUZZ_EXAMPLES", "12"))
SEED = os.environ.get("TUNE_MNIST_FUZZ_SEED")
fuzz = settings(max_examples=EXAMPLES, derandomize=SEED is None, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
fuzz_seed = seed(int(SEED)) if SEED else (lambda test: test)
STUDIES = sorted(cli.STUDIES)

FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1.5, 2.0, 1e-300, 1e300, 1.7976931348623157e308, math.nan, math.inf, -math.inf]
INTS = [0, 1, -1, 2, 9, 10, 805, 60_000, 2**31, 2**53, 2**53 + 1, 2**63, -(2**63), 10**30]
TEXT = ["", " ", ".", "..", "/", "a/b", "../../escape", "x" * 300, "é" * 150, "\0", "a\nb", "-", "--x", "nan",
        "1.5", "1e30", "0x10", "True", "adam", "sgd", "relu", "mlp", "cnn", "uniform", "standard", "local", "auto",
        "ray://", "ray://head:10001", "head:0", "head:65536", "127.0.0.1:-1", "file:///", "nosuchfs://x", "/dev/null",
        "/etc/passwd", "/proc", "/nonexistent/dir"]

# a flag's value as typed: mostly its own type's edge cases, else anything
EDGES = {float: st.one_of(st.sampled_from(FLOATS).map(repr), st.floats().map(repr)),
         int: st.one_of(st.sampled_from(INTS).map(str), st.integers().map(str)),
         str: st.sampled_from(TEXT), bool: st.sampled_from(["true", "false", "1", "0", ""])}
anything = st.one_of(*EDGES.values(), st.text(max_size=8))
# a value in a TOML or JSON file: of any type, a list of them, or a table
scalar = st.one_of(st.sampled_from(FLOATS), st.sampled_from(INTS), st.sampled_from(TEXT), st.booleans(),
                   st.floats(), st.integers(), st.text(max_size=8))
value = st.one_of(scalar, st.lists(scalar, max_size=4), st.dictionaries(st.sampled_from(["a", "lr"]), scalar,
                                                                          max_size=2))


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No cluster is joined (an address is taken as reachable, without GPUs); the parser is built once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.cluster, "connect", lambda address: False)
        patch.setattr(cli, "build_parser", functools.cache(cli.build_parser))
        yield tmp_path_factory.mktemp("fuzz")


def attempt(argv: list[str], folder: Path, names: str) -> tuple[int, str]:
    """The command's checks on argv; its exit code and stderr, after asserting what holds either way (a refusal
    matches `names`: it names what to fix)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv, check_only=True)
        except SystemExit as e:  # argparse's refusals
            code = e.code
    text = err.getvalue()
    if code == 0:
        assert text == "", (argv, text)
    else:
        assert code == 2, (argv, text)
        assert text.endswith("\n") and text.count("\n") == 1 and text.startswith("tune_mnist"), (argv, text)
        assert re.search(names, text), (argv, text)
    assert not (folder / "results").exists(), argv  # the checks write nothing, legal input or not
    return code, text


def names(study: str) -> list[str]:
    return list(spaces.types(cli.STUDIES[study].settings))


FLAGS = [(study, name) for study in STUDIES for name in spaces.types(cli.STUDIES[study].settings)]


@pytest.mark.parametrize("study, name", FLAGS)
@fuzz_seed
@fuzz
@given(data=st.data())
def test_every_flag_refuses_with_one_line_or_passes(offline, study, name, data):
    base = spaces.scalar(spaces.types(cli.STUDIES[study].settings)[name])[0]
    tokens = data.draw(st.lists(st.one_of(EDGES[base], EDGES[base], anything), min_size=1, max_size=4),
                       label="values")
    flag = "--" + name.replace("_", "-")
    argv = [study, flag, *tokens]
    if name != "results":
        argv += ["--results", str(offline / "results")]
    # the flag (argparse: "argument --lr"), or the flag another setting is checked against ("P=" for budget's P),
    # or the values argparse found no flag for
    code, text = attempt(argv, offline, r"--[A-Za-z]|P=|unrecognized arguments")
    if base is float and any(re.fullmatch(r"\s*[-+]?(nan|inf|infinity)\s*", t, re.I) for t in tokens):
        assert code == 2, (argv, "a number that is not finite passed")


@pytest.mark.parametrize("study", STUDIES)
def test_no_flag_takes_no_value_or_a_number_that_is_not_finite(offline, study):
    for name, kind in spaces.types(cli.STUDIES[study].settings).items():
        flag = "--" + name.replace("_", "-")
        if spaces.scalar(kind)[0] is bool:  # a switch: --profile, --no-profile
            assert attempt([study, flag, "true"], offline, "unrecognized arguments")[0] == 2, flag
            continue
        assert attempt([study, flag], offline, rf"argument {flag}: expected")[0] == 2, flag
        if spaces.scalar(kind)[0] is float:
            for value in ("nan", "inf", "-inf", "1e999"):
                argv = [study, f"{flag}={value}", "--results", str(offline / "results")]  # "-inf" is no flag
                assert attempt(argv, offline, "must be a finite number")[0] == 2, argv


@pytest.mark.parametrize("study", STUDIES)
@fuzz_seed
@fuzz
@given(data=st.data())
def test_every_key_of_a_space_file_refuses_with_one_line_or_passes(offline, study, data):
    name = data.draw(st.sampled_from([*names(study), "smoke", "gpu", "unknown_key"]), label="key")
    table = data.draw(st.sampled_from(["", "[smoke]\n", "[gpu]\n"]), label="table")
    text = f"{table}{name} = {toml(data.draw(value, label='value'))}\n"
    path = offline / f"{study}.toml"
    path.write_text(text)
    attempt([study, "--space", str(path), "--results", str(offline / "results")], offline,
            rf"{re.escape(str(path))}|--[A-Za-z]|P=")  # the file, or a flag checked against another


@pytest.mark.parametrize("study", STUDIES)
@fuzz_seed
@fuzz
@given(data=st.data())
def test_a_resumed_run_json_refuses_with_one_line_or_passes(offline, study, data):
    run_dir = offline / "runs" / study
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = json.loads(json.dumps(vars(spaces.Space(cli.STUDIES[study].settings, study).settings(
        cli.build_parser().parse_args([study])))))
    change = data.draw(st.sampled_from(["set", "drop", "replace"]), label="change")
    name = data.draw(st.sampled_from(names(study)), label="setting")
    if change == "set":
        saved[name] = data.draw(value, label="value")
    elif change == "drop":
        del saved[name]  # a setting added since the run began: its default
    else:
        saved = data.draw(value, label="settings")
    (run_dir / "run.json").write_text(json.dumps({"study": study, "settings": saved}))
    before = sorted(p.name for p in run_dir.iterdir())
    code, _ = attempt([study, "--resume", str(run_dir)], offline, rf"{re.escape(str(run_dir))}|--[A-Za-z]|P=")
    after = sorted(p.name for p in run_dir.iterdir())
    assert after == before or code == 0 and set(after) - set(before) == {".lock"}  # a lock only on success


def toml(v) -> str:
    """v as a TOML value (a table inline)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(map(toml, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml(x)}" for k, x in v.items()) + "}"
    return str(v)


# A few inputs as the real command gets them, in fresh processes started together
REAL = [["budget", "--lrs", "nan"], ["corruption", "--p", "1", "inf"], ["transplant", "--name", "../../escape"],
        ["budget", "--space", "{folder}"], ["report", "{folder}/results/nope"]]


@pytest.mark.slow
def test_the_real_command_refuses_with_one_line_and_writes_nothing(tmp_path):
    results = tmp_path / "results"
    commands = [[a.format(folder=tmp_path) for a in argv] + (["--results", str(results)] if argv[0] != "report"
                                                               else []) for argv in REAL]
    started = [subprocess.Popen([sys.executable, "-m", "tune_mnist", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for argv in commands]
    for argv, process in zip(commands, started):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 2 and err.count("\n") == 1 and err.startswith("tune_mnist"), (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
