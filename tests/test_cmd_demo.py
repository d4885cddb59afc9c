"""`piecewise-crf demo`: a report that opens from disk, written only into a folder the demo made."""

from pathlib import Path

import pytest
from cli_checks import fails

import piecewise_crf.data.synthetic as synthetic
from piecewise_crf.commands.cli import main
from piecewise_crf.commands.demo import MARKER, check_demo_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_demo_writes_a_report_that_opens_from_disk(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(synthetic.SPLITS, "train", (0, 16))
    monkeypatch.setitem(synthetic.SPLITS, "val", (1, 3))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--minutes", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "mean IoU on val: unary" in out and "report:" in out
    report = tmp_path / "demo" / "report" / "index.html"
    page = report.read_text()
    for stage in ("unary", "CRF (mean-field)", "CRF + dense CRF"):
        assert stage in page
    sources = [s.split("'")[0] for s in page.split("src='")[1:]]
    assert len(sources) >= 2 + 3 * 5  # curves, confusion, 3 examples x 5 columns
    for src in sources:
        assert not Path(src).is_absolute() and (report.parent / src).is_file(), src


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    fails(["demo", "--out", str(mine)], capsys, "files the demo did not make", mine)
    check_demo_folder(mine, overwrite=True)  # the explicit flag is honoured
    (tmp_path / "old_demo").mkdir()
    (tmp_path / "old_demo" / MARKER).touch()
    (tmp_path / "old_demo" / "report").mkdir()
    check_demo_folder(tmp_path / "old_demo", overwrite=False)  # a demo may replace a demo
    (tmp_path / "file").write_text("x")
    fails(["demo", "--out", str(tmp_path / "file")], capsys, "is a file", tmp_path)
