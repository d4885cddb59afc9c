"""SIFT-flow reader: S in .mat, the backslash TestSet1.txt, classes absent from test."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from dataset_files import SIFT_DIR, SIFT_NAMES, make_siftflow

from piecewise_crf.data import SiftFlow, build_dataset
from piecewise_crf.data.siftflow import read_test_names
from piecewise_crf.metrics import ConfusionMatrix

REAL_LIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "siftflow" / "TestSet1.txt"


def test_splits_and_label_shift(tmp_path):
    root = make_siftflow(tmp_path)
    test, train = SiftFlow(root, "test"), build_dataset("siftflow", root, "train")
    assert test.names == SIFT_NAMES[:2] and train.names == SIFT_NAMES[2:]
    assert test.num_classes == 33 and test.classes[0] == "awning" and test.classes[32] == "window"
    s = scipy.io.loadmat(root / "SemanticLabels" / SIFT_DIR / f"{SIFT_NAMES[2]}.mat")["S"]
    _, label = train.read_sample(0)
    np.testing.assert_array_equal(label, np.where(s == 0, 255, s - 1))
    x, y = train[2]
    assert x.shape == (3, 16, 16) and int(y.max()) == 255


def test_classes_absent_from_test_are_left_out_of_means(tmp_path):
    train = SiftFlow(make_siftflow(tmp_path), "train")
    assert train.absent_from_test == tuple(range(3, 33))  # fixture test labels use 1..3 only
    assert train.mean_classes() == (0, 1, 2)
    cm = ConfusionMatrix(33)
    cm.update(np.array([0, 1, 2, 5]), np.array([0, 1, 2, 2]))
    assert cm.compute(classes=train.mean_classes())["mean_iou"] == pytest.approx((1 + 1 + 0.5) / 3)


@pytest.mark.skipif(not REAL_LIST.is_file(), reason=f"real TestSet1.txt not present at {REAL_LIST}")
def test_real_test_list(tmp_path):
    names = read_test_names(REAL_LIST)
    assert len(names) == len(set(names)) == 200
    assert names[0] == "coast_arnat59" and all("\\" not in n for n in names)
    root = make_siftflow(tmp_path)
    with pytest.raises(FileNotFoundError, match="of 200 image files are missing"):
        SiftFlow(root, "test", test_list=REAL_LIST)


def test_corrupt_mat_names_the_file(tmp_path):
    root = make_siftflow(tmp_path)
    (root / "SemanticLabels" / SIFT_DIR / f"{SIFT_NAMES[0]}.mat").write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match=f"cannot read MATLAB file .*{SIFT_NAMES[0]}.mat"):
        SiftFlow(root, "test")[0]
