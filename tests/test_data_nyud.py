"""NYUDv2 readers: the v7.3 labeled .mat (transposed HDF5), splits.mat, classMapping40.mat."""

import numpy as np
import pytest
import torch
from dataset_files import NYU_SIZE, make_nyud, save
from torch.utils.data import DataLoader

from piecewise_crf.data import NYUDv2, NYUDv2Folder, build_dataset


def expected(labels):
    # fixture mapClass: id -> (id - 1) % 40 + 1, then 1..40 -> 0..39, 0 -> 255
    return np.where(labels == 0, 255, (labels.astype(int) - 1) % 40)


def test_labeled_mat_splits_and_transpose(tmp_path):
    root = make_nyud(tmp_path)
    truth = np.load(root / "truth.npz")
    train, test = NYUDv2(root, "train"), NYUDv2(root, "test")
    assert (len(train), len(test)) == (3, 2) and train.num_classes == 40
    assert test.names == ["0002", "0005"]
    image, label = test.read_sample(1)  # testNdxs[1] = 5 -> index 4
    assert image.size == NYU_SIZE[::-1]
    np.testing.assert_array_equal(np.array(image), truth["images"][4])
    np.testing.assert_array_equal(label, expected(truth["labels"][4]))
    assert np.all(label[0] == 255)
    assert isinstance(build_dataset("nyud", root, "train"), NYUDv2)


def test_works_in_forked_dataloader_workers(tmp_path):
    ds = NYUDv2(make_nyud(tmp_path), "train")
    ds.read_sample(0)  # opens the file in the parent before the workers fork
    batches = list(DataLoader(ds, batch_size=1, num_workers=2))
    assert len(batches) == 3
    assert torch.equal(batches[2][1][0], ds[2][1])


def test_bad_split_and_missing_files(tmp_path):
    root = make_nyud(tmp_path)
    with pytest.raises(ValueError, match="NYUDv2 splits are"):
        NYUDv2(root, "val")
    (root / "classMapping40.mat").unlink()
    with pytest.raises(FileNotFoundError, match="classMapping40.mat"):
        NYUDv2(root, "train")


def test_folder_form(tmp_path):
    root = make_nyud(tmp_path / "raw")
    truth = np.load(root / "truth.npz")
    folder = tmp_path / "folder"
    for i in range(5):
        save(folder / "image" / f"{i + 1:06d}.png", truth["images"][i])
        label40 = np.where(truth["labels"][i] == 0, 0, (truth["labels"][i] - 1) % 40 + 1)
        save(folder / "label40" / f"{i + 1:06d}.png", label40.astype(np.uint8))
    (folder / "splits.mat").write_bytes((root / "splits.mat").read_bytes())
    ds = build_dataset("nyud", folder, "test")
    assert isinstance(ds, NYUDv2Folder) and ds.names == ["000002", "000005"]
    np.testing.assert_array_equal(ds.read_sample(1)[1], expected(truth["labels"][4]))
    (folder / "train.txt").write_text("000003\n")
    assert NYUDv2Folder(folder, "train").names == ["000003"]
