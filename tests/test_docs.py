"""The README's Python examples run as written, from a folder holding the run they name."""

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from piecewise_crf.cli import main
from tiny_run import one_thread  # noqa: F401  (autouse fixture)

from piecewise_crf.checkpoint import load_checkpoint

README = Path(__file__).parents[1] / "README.md"
CONFIGS = README.parent / "configs"


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


def extending_example() -> tuple[str, list[list[str]]]:
    """The "Extending" section's module and its shell commands, as argument lists."""
    section = README.read_text().split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]
    module = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    shell = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " ")
    return module, [shlex.split(line)[1:] for line in shell.strip().splitlines()]


@pytest.fixture()
def registries():
    """Restore the registries after the test: the example registers names of its own."""
    from piecewise_crf.backbones import BACKBONES
    from piecewise_crf.data import DATASETS
    from piecewise_crf.relations import RELATIONS

    saved = [(registry, dict(registry)) for registry in (BACKBONES, DATASETS, RELATIONS)]
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)
    sys.modules.pop("my_extensions", None)


def test_readme_extending_example_trains_and_evaluates(registries, tmp_path, monkeypatch, capsys):
    module, (train, evaluate) = extending_example()
    assert module.startswith("# my_extensions.py")
    (tmp_path / "my_extensions.py").write_text(module)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    train = [str(CONFIGS / "demo.yaml") if a == "configs/demo.yaml" else a for a in train]
    small = ["model.block6_channels=16", "model.hidden=16", "train.epochs=1", "train.val_every=1"]
    assert main([*train, *small, "--quiet"]) == 0
    ckpt = load_checkpoint(tmp_path / "runs" / "mine" / "final.pt")
    assert ckpt["config"]["model"]["backbone"] == "small_cnn"
    assert any(k.startswith("pairwise_nets.diagonal.") for k in ckpt["model"])
    assert main([*evaluate, "--limit", "2", "--no-dense", "--quiet"]) == 0
    assert "synthetic val: 2 of" in capsys.readouterr().out


def test_readme_onnx_example_runs(project, monkeypatch):
    pytest.importorskip("onnxruntime")
    section = README.read_text().split("\n### Deployment: ONNX\n", 1)[1].split("\n#", 1)[0]
    shell = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    export = next(line for line in shell.splitlines() if line.startswith("piecewise-crf export"))
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    work = project / "onnx"
    shutil.copytree(project / "runs", work / "runs")
    monkeypatch.chdir(work)
    assert main(shlex.split(export.split("#")[0])[1:]) == 0
    scope: dict = {"__name__": "readme"}
    exec(compile(code, "README.md ONNX block", "exec"), scope)
    assert scope["labels"].shape == (2, 192, 192) and len(scope["classes"]) == 5
