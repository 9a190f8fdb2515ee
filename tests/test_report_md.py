"""REPORT.md: answer on top, evidence in order, how it was made at the end."""

import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from tune_mnist.report import Report


def budget_report() -> Report:
    report = Report(title="budget: which MLP shape trains best at P = 100,000?",
                    question="At a fixed parameter count, does depth beat width?")
    report.answer("Two hidden layers: 0.9812 ± 0.0011 test accuracy, ahead of one layer beyond noise.")
    report.section("Depth grid", "Mean test accuracy over 5 seeds per depth k.")
    report.table(pd.DataFrame({"k": [1, 2, 3], "shape": ["a|b", "b", "c"], "acc": [0.97512345, 0.9812, float("nan")],
                               "tied": [False, True, True]}))
    report.figure("figures/depth.png", "accuracy against depth")
    report.command(["python", "-m", "tune_mnist", "budget", "--P", "100000", "--name", "my run"])
    report.versions()
    return report


def test_report_holds_answer_table_figure_and_command(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "depth.png").write_bytes(b"png")
    path = budget_report().write(tmp_path)
    assert path == tmp_path / "REPORT.md"
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "# budget: which MLP shape trains best at P = 100,000?"
    order = [text.index(s) for s in ("**Question.**", "## Answer", "Two hidden layers", "## Depth grid", "| k |",
                                     "![accuracy", "## How this was made", "```bash", "- python:")]
    assert order == sorted(order)
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| k | shape | acc | tied |"
    assert table[1] == "|---:|---|---:|---|"  # numbers right-aligned
    assert table[2:] == ["| 1 | a\\|b | 0.9751 | False |", "| 2 | b | 0.9812 | True |", "| 3 | c | nan | True |"]
    assert all(line.count("|") - line.count("\\|") == 5 for line in table)
    assert "![accuracy against depth](figures/depth.png)" in text
    assert "python -m tune_mnist budget --P 100000 --name 'my run'" in text
    assert f"- python: {sys.version_info.major}.{sys.version_info.minor}" in text
    assert re.search(r"- torch: \S+", text) and re.search(r"- date: \d{4}-\d\d-\d\d", text)
    assert not list(tmp_path.glob(".REPORT.md.*"))  # written through a temp file that is gone


def test_absolute_figure_path_links_relative_to_the_run(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    report = Report("t", "q")
    report.answer("yes")
    report.figure(tmp_path / "a.png", "a")
    assert "![a](a.png)" in report.write(tmp_path).read_text()


def test_long_table_is_cut_with_a_note(tmp_path):
    report = Report("t", "q")
    report.answer("yes")
    report.table(pd.DataFrame({"x": range(50), "y": range(50)}), columns=["y"], max_rows=10)
    text = report.write(tmp_path).read_text()
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == 11
    assert "| x" not in text and "(40 more rows not shown)" in text


def test_missing_figure_or_answer_raises(tmp_path):
    with pytest.raises(ValueError, match="depth.png"):
        budget_report().write(tmp_path)
    assert not (tmp_path / "REPORT.md").exists()
    with pytest.raises(ValueError, match="no answer"):
        Report("t", "q").write(tmp_path)


def test_a_figure_given_from_the_working_directory_links_from_the_report(tmp_path, monkeypatch):
    """A study draws into results/<study>/<run>/ from wherever the command ran, and passes that path."""
    (tmp_path / "results" / "run").mkdir(parents=True)
    (tmp_path / "results" / "run" / "a.png").write_bytes(b"png")
    monkeypatch.chdir(tmp_path)
    report = Report("t", "q")
    report.answer("a")
    report.figure(Path("results/run/a.png"), "cap")
    assert "![cap](a.png)" in report.write(Path("results/run")).read_text()
