"""What `pip install` gives a user without a checkout: the shipped configs (listed, written out
to edit), the split lists, the licence, and one version."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from cli_checks import fails

from piecewise_crf import __version__
from piecewise_crf.commands.cli import main
from piecewise_crf.config import load_config, shipped_config_file, shipped_configs

ROOT = Path(__file__).parents[1]


def test_configs_lists_every_shipped_config_with_what_it_is_for(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines[:-1]]
    assert listed == shipped_configs() and {"demo", "cpu", "paper", "camvid"} <= set(listed)
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines[:-1])  # each says something
    assert "piecewise-crf configs NAME --out FILE.yaml" in lines[-1]


def test_a_config_written_out_is_the_shipped_one_and_loads_the_same(tmp_path, capsys):
    for name in shipped_configs():
        out = tmp_path / f"my_{name}.yaml"
        assert main(["configs", name, "--out", str(out)]) == 0
        assert out.read_text().startswith("#")  # the comments come along, to edit
        assert load_config(out) == load_config(name)  # a `base:` still finds the shipped one
    assert main(["configs", "demo"]) == 0
    assert capsys.readouterr().out.endswith((tmp_path / "my_demo.yaml").read_text())
    out = tmp_path / "my_demo.yaml"
    out.write_text("# mine, edited\n")
    fails(["configs", "demo", "--out", str(out)], capsys, "exists; pass --overwrite", tmp_path)
    fails(["configs", "dmeo"], capsys, "did you mean 'demo'?")
    shipped = shipped_config_file("demo")
    before = shipped.read_bytes()
    fails(["configs", "demo", "--out", str(shipped), "--overwrite"], capsys, str(shipped))
    assert shipped.read_bytes() == before
    assert main(["configs", "demo", "--out", str(out), "--overwrite"]) == 0
    assert out.read_text() != "# mine, edited\n"


def test_the_version_has_one_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    run = subprocess.run([sys.executable, "-m", "piecewise_crf", "--version"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert run.stdout.strip() == f"piecewise-crf {__version__}"


@pytest.mark.slow
def test_the_wheel_holds_the_configs_the_splits_and_the_licence(tmp_path):
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(tmp_path), str(ROOT)]  # fmt: skip
    subprocess.run(build, check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("piecewise_crf-*.whl")
    assert wheel.name.startswith(f"piecewise_crf-{__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in shipped_configs():
        assert f"piecewise_crf/configs/{name}.yaml" in names
    assert any(n.startswith("piecewise_crf/data/splits/") and n.endswith(".txt") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "experiments/")) for n in names)
    assert not any(n.startswith("permutocrf/") for n in names)  # its own distribution
    assert "Requires-Dist: permutocrf>=0.1" in wheel_metadata(wheel)


def wheel_metadata(wheel: Path) -> str:
    archive = zipfile.ZipFile(wheel)
    (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    return archive.read(name).decode()


@pytest.mark.slow
def test_the_dense_crf_wheel_stands_alone_without_torch(tmp_path):
    """permutocrf/ builds its own wheel: its package alone, requiring numpy and numba (torch
    only as the extra), the version from permutocrf.__version__."""
    import permutocrf

    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(tmp_path), str(ROOT / "permutocrf")]  # fmt: skip
    subprocess.run(build, check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("permutocrf-*.whl")
    assert wheel.name.startswith(f"permutocrf-{permutocrf.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"permutocrf/__init__.py", "permutocrf/compat.py", "permutocrf/utils.py"} <= names
    assert {n.split("/")[0] for n in names if not n.startswith("permutocrf-")} == {"permutocrf"}
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in wheel_metadata(wheel).splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    assert [r for r in requires if "extra ==" not in r] == ["numpy>=1.23", "numba>=0.61"]
    assert any(r.startswith("torch") and 'extra == "torch"' in r for r in requires)


def test_the_dense_crf_keeps_its_piecewise_crf_names():
    """``piecewise_crf.densecrf`` (``dense_crf``, the layer) and ``piecewise_crf.densecrf.compat``
    (the pydensecrf drop-in) are permutocrf's objects under the names DESIGN.md gives them."""
    import permutocrf
    import permutocrf.compat
    import piecewise_crf.densecrf
    import piecewise_crf.densecrf.compat as dcrf

    for name in piecewise_crf.densecrf.__all__:
        assert getattr(piecewise_crf.densecrf, name) is getattr(permutocrf, name)
    assert dcrf.__all__ == permutocrf.compat.__all__
    for name in dcrf.__all__:
        assert getattr(dcrf, name) is getattr(permutocrf, name)
