"""The pages of docs/: their tables are up to date, their Python examples run as written, and
their shell lines name flags and modules that exist."""

import importlib.util
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.commands.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
EXTENSION = "# my_extensions.py"  # the first line of extending.md's example module
PREPARE = {"export"}  # commands whose output a page's Python example reads (demo.onnx)


def fenced(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def shell_lines(language: str = "bash") -> list[tuple[str, str]]:
    """(page name, command) for every line of the pages' bash blocks, continuations joined."""
    return [
        (page.name, line.strip())
        for page in PAGES
        for block in fenced(page, language)
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip()
    ]


def argv(line: str) -> list[str]:
    """The arguments of a `piecewise-crf ...` line, its comment dropped."""
    return shlex.split(line, comments=True)[1:]


CLI = [(page, line) for page, line in shell_lines() if line.startswith("piecewise-crf ")]
PYTHON = [(page, line) for page, line in shell_lines() if line.startswith("python")]
EXAMPLES = [
    (page.name, i, code)
    for page in PAGES
    for i, code in enumerate(fenced(page, "python"))
    if not code.startswith(EXTENSION)
]


def test_the_pages_have_examples():
    assert CLI and PYTHON and EXAMPLES
    assert {p for p, _ in CLI} >= {"camvid.md", "deployment.md", "extending.md"}


def test_tables_are_up_to_date():
    spec = importlib.util.spec_from_file_location("docs_tables", DOCS / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    assert tables.stale_tables() == [], "run `python docs/tables.py` and commit the pages"
    used = {match[2] for page in PAGES for match in tables.REGION.finditer(page.read_text())}
    assert used == set(tables.GENERATORS), "a generator no page uses, or a region without one"


@pytest.mark.parametrize(("page", "line"), CLI, ids=[f"{p}:{line[:60]}" for p, line in CLI])
def test_command_line_parses(page, line, capsys):
    try:
        build_parser().parse_args(argv(line))
    except SystemExit:
        pytest.fail(f"{page}: `{line}` does not parse: {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize(("page", "line"), PYTHON, ids=[f"{p}:{line[:60]}" for p, line in PYTHON])
def test_python_line_names_a_module_that_exists(page, line, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # run from the repository root, as the pages say
    words = shlex.split(line, comments=True)
    assert words[1] == "-m", f"{page}: `{line}`: run it as a module (`python -m ...`)"
    assert importlib.util.find_spec(words[2]) is not None, f"{page}: no module {words[2]}"


@pytest.fixture()
def project(checkpoint, tmp_path, monkeypatch):
    """A user's folder, the current one, after `piecewise-crf demo` (demo_out/run/final.pt, here
    the tiny run's)."""
    (tmp_path / "demo_out" / "run").mkdir(parents=True)
    shutil.copy(checkpoint, tmp_path / "demo_out" / "run" / "final.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # where `--import` looks first
    return tmp_path


@pytest.mark.parametrize(
    ("page", "index", "code"), EXAMPLES, ids=[f"{p}:{i}" for p, i, _ in EXAMPLES]
)
def test_python_example_runs(project, page, index, code):
    if "onnxruntime" in code:
        pytest.importorskip("onnxruntime")
    for name, line in CLI:
        if name == page and argv(line)[0] in PREPARE:
            assert main(argv(line)) == 0, f"{page}: `{line}` failed"
    exec(compile(code, f"docs/{page}, python block {index}", "exec"), {"__name__": "docs"})


@pytest.mark.slow
def test_extending_example_trains_and_evaluates(registries, project, capsys):
    module = next(c for c in fenced(DOCS / "extending.md", "python") if c.startswith(EXTENSION))
    (project / "my_extensions.py").write_text(module)
    train, evaluate = [argv(line) for page, line in CLI if page == "extending.md"]
    small = ["model.block6_channels=16", "model.hidden=16", "train.epochs=1", "train.val_every=1"]
    try:
        assert main([*train, *small, "--quiet"]) == 0
        ckpt = load_checkpoint(project / "runs" / "mine" / "final.pt")
        assert ckpt.config.model.backbone == "small_cnn"
        assert any(k.startswith("pairwise_nets.diagonal.") for k in ckpt.model)
        assert main([*evaluate, "--limit", "2", "--no-dense", "--quiet"]) == 0
        assert "synthetic val: 2 of" in capsys.readouterr().out
    finally:
        sys.modules.pop("my_extensions", None)


def test_readme_speed_ranges_are_the_result_files():
    """The dense CRF's speed ranges typed into both READMEs span exactly the ratios to
    pydensecrf in the result files (dense_crf*.json, dense_crf_params.json), rounded."""
    results = ROOT / "benchmarks/results"
    ratios: dict[int, list[float]] = {2: [], 1: []}
    for r in json.loads((results / "dense_crf_params.json").read_text())["parameter_sets"]:
        ratios[r["threads"]].append(r["ratio"])
    for name in ("dense_crf.json", "dense_crf_quick.json"):
        d = json.loads((results / name).read_text())
        ratios[2].append(d["ratio_ours_over_pydensecrf"])
        ratios[1].append(d["ratio_1thread_ours_over_pydensecrf"])
    span = {n: f"{min(v):.2f}-{max(v):.2f}x" for n, v in ratios.items()}
    package = (ROOT / "permutocrf/README.md").read_text()
    assert f"{span[2]} pydensecrf's time on 2 threads and\n{span[1]} on 1" in package
    assert f"It runs in {span[2]} pydensecrf's time" in (ROOT / "README.md").read_text()
