"""The README's Python examples run as written, from a folder holding the run they name."""

import os
import re
import shutil
from pathlib import Path

import pytest
from tiny_run import one_thread  # noqa: F401  (autouse fixture)

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    """The Python blocks of the README's "Using it" section, up to its first subsection."""
    section = re.split(r"\n##+ ", README.read_text().split("\n## Using it\n", 1)[1])[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def project(checkpoint, tmp_path_factory):
    """A user's folder after `piecewise-crf train --config configs/demo.yaml --out runs/demo`."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "runs" / "demo").mkdir(parents=True)
    shutil.copy(checkpoint, folder / "runs" / "demo" / "final.pt")
    return folder


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(project, index, monkeypatch):
    code = python_blocks()[index]
    work = project / f"block{index}"
    shutil.copytree(project / "runs", work / "runs")
    monkeypatch.chdir(work)
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})
    assert os.getcwd() == str(work)
