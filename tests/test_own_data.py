"""A user's own images and label PNGs, end to end through the command line: the classes from the
labels, a void value other than 255, and a run that remembers its data."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from dataset_files import blocks, rng_image, save
from PIL import Image

from piecewise_crf.commands.cli import main
from piecewise_crf.data import FolderDataset

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["model.block6_channels=16", "model.hidden=16", "train.epochs=1", "train.batch_size=2",
         "data.crop_size=[32,32]", "data.num_workers=0", "dense_crf.iterations=1"]  # fmt: skip


def own_data(root: Path, n: int = 4) -> Path:
    """images/ + labels/ whose labels hold classes 0..2 and CamVid-style void 11 (no 255)."""
    for i in range(n):
        save(root / "images" / f"frame{i}.jpg", rng_image(i, 40, 48))
        save(root / "labels" / f"frame{i}.png", blocks(40, 48, [0, 1, 2, 11], i))
    return root


def test_own_data_trains_with_classes_from_its_labels_and_void_11(tmp_path, monkeypatch, capsys):
    data = own_data(tmp_path / "my data")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--config", "demo", "--dataset", "folder", "--data-root", "my data",
            "--out", "runs/mine", "--quiet", "--set", "data.ignore_values=[11]",
            "data.train_split=all", "data.val_split=all", *SMALL]  # fmt: skip
    assert main(argv) == 0
    saved = yaml.safe_load((tmp_path / "runs" / "mine" / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 3  # 0, 1, 2: 11 is void
    assert saved["data"]["root"] == str(data.resolve())  # found again from anywhere
    assert (saved["data"]["dataset"], saved["data"]["ignore_values"]) == ("folder", [11])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    checkpoint = str(tmp_path / "runs" / "mine" / "final.pt")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", checkpoint, "--split", "all", "--quiet"]) == 0
    assert "folder all: 4 of 4 images" in capsys.readouterr().out
    assert main(["predict", "--checkpoint", checkpoint, str(data / "images"), "--out", "p"]) == 0
    labels = np.asarray(Image.open(elsewhere / "p" / "frame0.png"))
    assert labels.shape == (40, 48) and labels.max() <= 2


def test_without_the_void_value_it_is_a_class_and_the_gap_is_named(tmp_path, caplog):
    data = own_data(tmp_path)
    with caplog.at_level("WARNING"):
        assert FolderDataset(data).num_classes == 12
    assert "never [3, 4, 5, 6, 7] ...: 12 classes, of which 8 are empty" in caplog.text
    assert "set data.ignore_values=[11]" in caplog.text


def test_the_folder_settings_are_refused_for_other_datasets(tmp_path, capsys):
    argv = ["train", "--config", "demo", "--out", str(tmp_path / "run"), "--quiet", "--set"]
    for setting in ("data.ignore_values=[11]", "data.class_names=[a,b]"):
        assert main([*argv, setting]) == 2
        err = capsys.readouterr().err
        assert "is read by the folder dataset only" in err and err.count("\n") == 1
    assert main([*argv, "data.ignore_values=[300]", "data.dataset=folder"]) == 2
    assert "data.ignore_values must be label values in 0..255" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_worked_example_of_the_datasets_page_runs_as_written(tmp_path, monkeypatch, capsys):
    import re
    import shlex

    page = (Path(__file__).parents[1] / "docs" / "datasets.md").read_text()
    section = page[page.index("## Your own data, worked through") :]
    (yaml_text,) = re.findall(r"```yaml\n(.*?)```", section.split("\n## ")[0], flags=re.S)
    (commands,) = re.findall(r"```bash\n(.*?)```", section.split("\n## ")[0], flags=re.S)
    monkeypatch.chdir(tmp_path)
    for split, names in (("train", "ab"), ("val", "c")):
        for i, name in enumerate(names):
            save(tmp_path / "street" / split / "images" / f"{name}.jpg", rng_image(i, 40, 48))
            save(tmp_path / "street" / split / "labels" / f"{name}.png",
                 blocks(40, 48, [0, 1, 2, 11], i))  # fmt: skip
    (tmp_path / "street.yaml").write_text(
        yaml_text.replace("backbone_weights: mobilenet_v2.pth", "backbone_weights: null")
    )  # the weights file is the user's to make (README); the rest runs as written
    train, evaluate, predict = (shlex.split(line)[1:] for line in commands.splitlines())
    assert main([*train, "--quiet", "--set", *SMALL]) == 0
    assert main([*evaluate, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "folder val: 1 of 1 images" in out and "road" in out and "sky" in out
    assert main([*predict, "--quiet"]) == 0
    assert (tmp_path / "street_labelled" / "c.png").is_file()


def test_without_a_config_train_says_it_uses_the_cpu_one(tmp_path, capsys):
    data = own_data(tmp_path / "mine")
    argv = ["train", "--dataset", "folder", "--data-root", str(data), "--out", str(tmp_path / "r"),
            "--quiet", "--set", "data.ignore_values=[11]", "data.train_split=all",
            "data.val_split=", "model.backbone_weights=null", *SMALL]  # fmt: skip
    assert main(argv) == 0
    assert "note: no --config: the shipped 'cpu' config" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["model"]["backbone"] == "mobilenet_v2" and saved["model"]["num_classes"] == 3
