"""The README as a newcomer uses it: its commands and Python blocks run as written, in a folder
holding what they name (a trained run, photos, a folder of images and labels)."""

import argparse
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from dataset_files import make_folder
from PIL import Image

from piecewise_crf.commands.cli import build_parser, main
from piecewise_crf.config import load_config
from piecewise_crf.data.synthetic import generate

pytestmark = pytest.mark.usefixtures("one_thread")
README = Path(__file__).parents[1] / "README.md"
TEXT = README.read_text()
# What the training commands add so that they finish in seconds (a user trains for real).
SMALL = ["model.block6_channels=16", "model.hidden=16", "train.epochs=1", "train.val_every=1",
         "data.crop_size=[32,32]", "data.num_workers=0", "dense_crf.iterations=1"]  # fmt: skip


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", TEXT, flags=re.S)


def commands() -> list[list[str]]:
    """The `piecewise-crf` command lines of the bash blocks, as argument lists."""
    lines = "\n".join(blocks("bash")[1:]).replace("\\\n", " ").splitlines()
    return [shlex.split(line.split("  #")[0])[1:] for line in lines if line.startswith("piecewise")]


@pytest.fixture(scope="module")
def project(checkpoint, tmp_path_factory) -> Path:
    """A user's folder after `piecewise-crf demo` (demo_out/run/final.pt, here the tiny run's),
    with photos/ and my_data/ (images/ + labels/)."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "demo_out" / "run").mkdir(parents=True)
    shutil.copy(checkpoint, folder / "demo_out" / "run" / "final.pt")
    (folder / "photos").mkdir()
    for i, name in enumerate(("street.png", "garden.jpg")):
        rgb = (generate(i, seed=7)[0] * 255).round().astype(np.uint8)
        Image.fromarray(rgb[: 150 + 10 * i, :170]).save(folder / "photos" / name)
    make_folder(folder / "my_data", n=4, size=(40, 48))
    return folder


@pytest.fixture()
def work(project, tmp_path, monkeypatch) -> Path:
    shutil.copytree(project, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "work"


def test_the_first_lines_are_the_demo_and_the_tests():
    first = blocks("bash")[0]
    assert TEXT.startswith("# piecewise-crf\n\n```bash\nmake demo ") and "\nmake test " in first
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert len(TEXT.splitlines()) <= 200


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks_run_as_written(work, index):
    exec(compile(blocks("python")[index], f"README.md python block {index}", "exec"), {})


@pytest.mark.slow
def test_the_commands_run_as_written(work, capsys):
    predict, train, evaluate = commands()
    assert main(predict) == 0
    assert sorted(p.name for p in (work / "labelled").iterdir()) == [
        "garden.png", "garden_overlay.png", "street.png", "street_overlay.png",
    ]  # fmt: skip
    assert main([*train, *SMALL]) == 0
    assert main([*evaluate, "--quiet"]) == 0
    assert "folder all: 4 of 4 images" in capsys.readouterr().out


def test_the_yaml_example_loads(tmp_path):
    (tmp_path / "mine.yaml").write_text(blocks("yaml")[0])
    config = load_config(tmp_path / "mine.yaml")
    assert config.model.scales == load_config("cpu").model.scales
    assert config.data.class_names == ("road", "car", "sky") and config.model.num_classes is None
    assert (config.data.dataset, config.train.epochs) == ("folder", 30)


def test_the_command_table_names_real_commands_and_flags():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    rows = re.findall(r"^\| `piecewise-crf ([a-z-]+)(.*?)` \|(.*)\|$", TEXT, flags=re.M)
    assert {name for name, _, _ in rows} == set(sub.choices)
    for name, usage, text in rows:
        flags = {f for a in sub.choices[name]._actions for f in a.option_strings}
        for flag in re.findall(r"--[a-z-]+", usage + text):
            assert flag in flags, f"{name} has no {flag}"


def test_the_weights_command_makes_a_file_the_loader_takes_as_it_is(tmp_path, monkeypatch):
    """The README's torchvision line, run against a stand-in torchvision (no internet here)
    whose mobilenet_v2 has torchvision's layout: our MobileNetV2 plus its 1000-way classifier."""
    import sys
    import types

    import torch
    from torch import nn

    from piecewise_crf.backbones import build_backbone
    from piecewise_crf.backbones.mobilenet import MobileNetV2

    line = next(x for b in blocks("bash") for x in b.splitlines() if x.startswith("python -c"))
    code = shlex.split(line)[2]

    def mobilenet_v2(weights: str) -> nn.Module:
        assert weights == "IMAGENET1K_V1"
        model = MobileNetV2(with_last_conv=True)
        model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))
        return model

    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(mobilenet_v2=mobilenet_v2)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md weights line", "exec"), {})
    saved = torch.load(tmp_path / "mobilenet_v2.pth", weights_only=True)
    assert len(saved) == 314  # torchvision's mobilenet_v2() state dict has 314 entries
    backbone = build_backbone("mobilenet_v2", weights=tmp_path / "mobilenet_v2.pth")
    ours = {k: v for k, v in saved.items() if k in backbone.state_dict()}
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in ours.items()) and ours
