"""The committed reports under docs/reports/<study>/ are real runs' folders (without Ray's tune/ and TensorBoard's
files): each study's report, drawn again from their CSVs and run.json, must reproduce the committed REPORT.md word
for word. A change to a study's statistics or wording that moves an answer shows here, in seconds, without Ray;
after an intended change, `python -m tune_mnist report docs/reports/<study>` writes the new report to commit."""

import shutil

import pytest

from conftest import REPO
from tune_mnist import studies

REPORTS = REPO / "docs" / "reports"


def answer(text: str) -> str:
    """The report's answer: from "## Answer" to the next section."""
    start = text.index("## Answer")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_every_study_has_a_committed_report():
    assert sorted(p.name for p in REPORTS.iterdir() if p.is_dir()) == sorted(studies.MODULES)


@pytest.mark.parametrize("study", sorted(studies.MODULES))
def test_the_committed_report_is_what_the_study_writes_from_its_csvs(study, tmp_path, frozen_gc):
    committed = (REPORTS / study / "REPORT.md").read_text()
    run = shutil.copytree(REPORTS / study, tmp_path / study)  # drawn in place, as `report RUN` does
    (run / "REPORT.md").unlink()
    studies.redraw(run)
    drawn = (run / "REPORT.md").read_text()
    assert answer(drawn) == answer(committed)
    assert drawn == committed
