"""VOC 2012 + SBD readers on fixtures: palette PNGs with 255 borders, GTcls structs, Aug PNGs."""

import numpy as np
import pytest
from dataset_files import make_voc, voc_label

from piecewise_crf.data import VOCSegmentation, build_dataset
from piecewise_crf.data.voc import PALETTE


def test_palette_is_the_voc_bit_pattern():
    assert PALETTE[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert PALETTE[15].tolist() == [192, 128, 128]  # person


def test_voc_splits_read_palette_indices(tmp_path):
    root = make_voc(tmp_path)
    train = VOCSegmentation(root, "train")
    assert train.names == ["2007_a", "2007_b"] and train.num_classes == 21
    image, label = train.read_sample(0)
    assert image.size == (30, 20)
    np.testing.assert_array_equal(label, voc_label(0))  # indices, with the 255 borders kept
    assert 255 in label
    assert len(VOCSegmentation(root / "VOCdevkit", "trainval")) == 3
    assert len(build_dataset("voc", root / "VOCdevkit" / "VOC2012", "val")) == 1


def test_train_aug_from_sbd(tmp_path):
    root = make_voc(tmp_path, sbd=True)
    ds = VOCSegmentation(root, "train_aug")
    # SBD train+val {b, c, d, e} + VOC train {a, b} - VOC val {c}
    assert ds.names == ["2007_a", "2007_b", "2008_d", "2008_e"]
    assert ds.label_paths[1].suffix == ".png"  # VOC's own annotation wins over SBD's
    assert ds.label_paths[2].name == "2008_d.mat"
    _, label = ds.read_sample(2)
    assert label.shape == (20, 30) and set(np.unique(label)) <= {0, 7, 15}
    _, y = ds[3]
    assert y.shape == (20, 30)


def test_train_aug_from_segmentation_class_aug(tmp_path):
    ds = VOCSegmentation(make_voc(tmp_path, aug=True), "train_aug")
    assert ds.names == ["2007_a", "2007_b", "2008_d", "2008_e"]
    assert ds.label_paths[2].parent.name == "SegmentationClassAug"
    assert set(np.unique(ds.read_sample(2)[1])) <= {0, 3, 9}


def test_train_aug_without_sbd_says_what_is_needed(tmp_path):
    with pytest.raises(FileNotFoundError, match="sbd_root"):
        VOCSegmentation(make_voc(tmp_path), "train_aug")


def test_missing_label_is_reported(tmp_path):
    root = make_voc(tmp_path)
    (root / "VOCdevkit/VOC2012/SegmentationClass/2007_b.png").unlink()
    with pytest.raises(FileNotFoundError, match="2007_b.png"):
        VOCSegmentation(root, "train")


def test_bad_sbd_mat(tmp_path):
    import scipy.io

    root = make_voc(tmp_path, sbd=True)
    scipy.io.savemat(root / "benchmark_RELEASE/dataset/cls/2008_d.mat", {"x": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="GTcls.Segmentation"):
        VOCSegmentation(root, "train_aug").read_sample(2)
