"""permutocrf's README as its reader uses it: the Python blocks run as written (without torch
too), and the install lines name this distribution and its extra."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

HOME = Path(__file__).parents[1]
TEXT = (HOME / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_block_runs_as_written(index):
    exec(compile(BLOCKS[index], f"permutocrf/README.md python block {index}", "exec"), {})


def test_install_lines_name_the_distribution_and_its_extras():
    pyproject = (HOME / "pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.S | re.M)[1]
    assert re.findall(r'"(\w+)', dependencies) == ["numpy", "numba"]  # no torch
    extras = re.findall(r"pip install '\./permutocrf\[(\w+)\]'", TEXT)
    assert extras == ["torch"]
    assert re.search(r"^torch = \[", pyproject, re.M)
    assert "pip install ./permutocrf " in TEXT
