"""Folder dataset, build_dataset, and the input checks every reader shares."""

import numpy as np
import pytest
import torch
from dataset_files import blocks, make_camvid, make_folder, rng_image, save
from PIL import Image

from piecewise_crf.data import DATASETS, FolderDataset, build_dataset


def test_pairs_by_stem_with_user_classes(tmp_path):
    ds = FolderDataset(make_folder(tmp_path), num_classes=3, class_names=["a", "b", "c"])
    assert ds.names == ["img0", "img1", "img2"] and ds.classes == ("a", "b", "c")
    assert ds.palette.shape == (3, 3) and ds.num_classes == 3
    x, y = ds[0]
    assert x.shape == (3, 10, 12) and set(y.unique().tolist()) <= {0, 1, 2, 255}


def test_split_folders_list_files_and_void_value(tmp_path):
    make_folder(tmp_path / "train", n=2)
    assert len(build_dataset("folder", tmp_path, "train", num_classes=3)) == 2
    make_folder(tmp_path, n=3)
    (tmp_path / "val.txt").write_text("img2\nimg0\n")
    assert FolderDataset(tmp_path, "val", num_classes=3).names == ["img2", "img0"]
    (tmp_path / "pairs.txt").write_text("images/img1.png labels/img1.png\n")
    ds = FolderDataset(tmp_path, num_classes=3, list_file=tmp_path / "pairs.txt", ignore_values=[2])
    assert ds.names == ["img1"] and 2 not in ds.read_sample(0)[1]
    with pytest.raises(FileNotFoundError, match="no split 'test'.*data.train_split=all"):
        FolderDataset(tmp_path, "test", num_classes=3)  # the fix for a plain images/ + labels/


def test_classes_counted_from_the_labels_unless_given(tmp_path):
    root = make_folder(tmp_path, n=3)  # labels hold 0, 1, 2 and 255
    assert FolderDataset(root).num_classes == 3
    assert FolderDataset(root, class_names=list("abcd")).classes == tuple("abcd")
    assert FolderDataset(root, num_classes=7).num_classes == 7
    save(root / "labels" / "img1.png", np.array([[11, 4], [255, 11]], np.uint8))
    save(root / "images" / "img1.png", rng_image(1, 2, 2))
    assert FolderDataset(root).num_classes == 12  # 11 is a class until it is said to be void
    void = FolderDataset(root, ignore_values=[11])
    assert void.num_classes == 5  # the largest class value is now 4
    assert void.read_sample(1)[1].tolist() == [[255, 4], [255, 255]]
    for i in (0, 2):
        save(root / "labels" / f"img{i}.png", np.full((10, 12), 11, np.uint8))
    save(root / "labels" / "img1.png", np.full((2, 2), 255, np.uint8))
    with pytest.raises(ValueError, match="hold no class values, only ignored ones.*num_classes"):
        FolderDataset(root, ignore_values=[11])
    with pytest.raises(ValueError, match="ignore_values must be label values in 0..255"):
        FolderDataset(root, ignore_values=[256])


def test_folder_argument_checks(tmp_path):
    root = make_folder(tmp_path)
    with pytest.raises(ValueError, match="2 class names given for 3 classes"):
        FolderDataset(root, num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="num_classes must be in 1..255"):
        FolderDataset(root, num_classes=256)
    (root / "labels" / "img1.png").unlink()
    with pytest.raises(FileNotFoundError, match="have no label.*img1"):
        FolderDataset(root, num_classes=3)


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(
        ValueError, match="^unknown dataset 'cityscapes'; valid: " + ", ".join(DATASETS)
    ):
        build_dataset("cityscapes", tmp_path, "train")
    with pytest.raises(ValueError, match=r"^unknown dataset 'camvd'; did you mean 'camvid'\?$"):
        build_dataset("CamVd", tmp_path, "train")


# --- input checks (CamVid fixture; every reader goes through the same base class) ---


def test_grayscale_and_rgba_images_are_converted(tmp_path):
    root = make_camvid(tmp_path)
    Image.fromarray(rng_image(0, 36, 48)[..., 0]).save(root / "train" / "0001TP_train000.png")
    Image.fromarray(np.dstack([rng_image(1, 36, 48), np.full((36, 48), 9, np.uint8)])).save(
        root / "train" / "0001TP_train001.png"
    )
    ds = build_dataset("camvid", root, "train")
    for i in (0, 1):
        image, _ = ds.read_sample(i)
        assert image.mode == "RGB"
        assert ds[i][0].shape == (3, 36, 48)


def test_corrupt_image(tmp_path):
    root = make_camvid(tmp_path)
    (root / "train" / "0001TP_train001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="cannot read image .*0001TP_train001.png.*corrupt"):
        build_dataset("camvid", root, "train")[1]


def test_missing_image(tmp_path):
    root = make_camvid(tmp_path)
    (root / "val" / "0001TP_val001.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2 image files are missing.*0001TP_val001"):
        build_dataset("camvid", root, "val")


def test_label_values_out_of_range(tmp_path):
    root = make_camvid(tmp_path)
    bad = blocks(36, 48, [0, 1])
    bad[0, :3] = [12, 40, 12]
    save(root / "trainannot" / "0001TP_train002.png", bad)
    with pytest.raises(ValueError, match=r"0001TP_train002.png holds values \[12, 40\]"):
        build_dataset("camvid", root, "train")[2]
    root = make_folder(tmp_path / "f")
    save(root / "labels" / "img0.png", np.full((10, 12), 7, np.uint8))
    with pytest.raises(ValueError, match=r"img0.png holds values \[7\] .* classes 0..2"):
        FolderDataset(root, num_classes=3)[0]


def test_colour_label_image(tmp_path):
    root = make_folder(tmp_path)
    save(root / "labels" / "img0.png", rng_image(0, 10, 12))
    with pytest.raises(ValueError, match="colour .*class indices"):
        FolderDataset(root, num_classes=3)[0]


def test_size_mismatch(tmp_path):
    root = make_camvid(tmp_path)
    save(root / "valannot" / "0001TP_val000.png", np.zeros((30, 40), np.uint8))
    with pytest.raises(ValueError, match="image is 48x36 but label .*0001TP_val000.png is 40x30"):
        build_dataset("camvid", root, "val")[0]


def test_empty_split(tmp_path):
    root = make_camvid(tmp_path)
    (root / "val.txt").write_text("\n")
    with pytest.raises(ValueError, match="split 'val' of CamVid is empty"):
        build_dataset("camvid", root, "val")


def test_dataloader_batches(tmp_path):
    ds = FolderDataset(make_folder(tmp_path), num_classes=3)
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert x.shape == (3, 3, 10, 12) and y.dtype == torch.int64
