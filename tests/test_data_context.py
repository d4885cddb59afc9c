"""PASCAL-Context reader: raw LabelMap .mat with the 459 -> 59 mapping, and converted PNGs."""

import numpy as np
import pytest
import scipy.io
from dataset_files import make_context

from piecewise_crf.data import PascalContext, build_dataset
from piecewise_crf.data.context import CLASSES


def expected_map(label_map):
    # 459-class ids in the fixture -> 60 classes (alphabetical among the 59; rest background)
    table = {0: 0, 1: 0, 2: 1, 9: 2, 19: 4, 80: 18, 397: 50, 458: 59, 459: 0}
    return np.vectorize(table.get)(label_map)


def test_raw_labelmap_mapping(tmp_path):
    root = make_context(tmp_path)
    ds = PascalContext(root, "train")
    assert ds.num_classes == 60 and ds.classes[0] == "background" and len(ds) == 2
    assert CLASSES[50] == "table" and CLASSES[59] == "wood"
    _, label = ds.read_sample(1)
    raw = scipy.io.loadmat(root / "trainval" / "2008_000003.mat")["LabelMap"]
    np.testing.assert_array_equal(label, expected_map(raw))
    x, y = build_dataset("context", root, "val")[0]
    assert x.shape == (3, 12, 16) and y.shape == (12, 16)


def test_59_labels_file_with_its_spellings(tmp_path):
    root = make_context(tmp_path)
    # The distributed 59_labels.txt spells table/bedclothes/cloth differently; order is not used.
    names = [n for n in CLASSES[1:] if n not in ("table", "bedclothes", "cloth")]
    names = ["diningtable", "bedcloth", "clothes", *reversed(names)]
    (root / "59_labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(names, 1)))
    _, label = PascalContext(root, "train").read_sample(0)
    raw = scipy.io.loadmat(root / "trainval" / "2008_000002.mat")["LabelMap"]
    np.testing.assert_array_equal(label, expected_map(raw))


def test_unknown_59_class_name(tmp_path):
    root = make_context(tmp_path)
    (root / "59_labels.txt").write_text("1: unicorn\n")
    with pytest.raises(ValueError, match="unicorn"):
        PascalContext(root, "train")


def test_converted_pngs(tmp_path):
    ds = PascalContext(make_context(tmp_path, raw=False), "val")
    assert ds.names == ["2010_000001"]
    assert set(np.unique(ds.read_sample(0)[1])) <= {0, 1, 59}


def test_missing_split_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.txt"):
        PascalContext(make_context(tmp_path), "test")
