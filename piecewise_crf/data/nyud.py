"""NYU Depth v2, 40 classes (Gupta et al.'s mapping), 795 train / 654 test.

Two forms under `root`:
- raw: nyu_depth_v2_labeled.mat (MATLAB v7.3 = HDF5; arrays stored transposed, `images` is
  (N, 3, W, H), `labels` (N, W, H) with 0 unlabelled and 1..894), splits.mat (`trainNdxs`,
  `testNdxs`, 1-based) and classMapping40.mat (`mapClass`, 1 x 894 -> 1..40);
- folder: image/<name>.png and label40/<name>.png (0 unlabelled, 1..40), with the split given by
  <split>.txt (one name per line) or by splits.mat, whose 1-based indices then match numeric names.
Labels become 0..39 with unlabelled -> 255.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from piecewise_crf.data.base import (
    IGNORE_INDEX,
    FileDataset,
    FilePairDataset,
    Samples,
    SegmentationDataset,
    bit_palette,
)
from piecewise_crf.data.io import dataset_root, load_mat, read_label_png, read_lines, remap, require

CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip
# Colour of class i is the VOC colour of i + 1, so 0 stays black for "unlabelled" in renderings.
PALETTE = bit_palette(len(CLASSES) + 1)[1:]
SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}
LABELED_MAT = "nyu_depth_v2_labeled.mat"
SPLITS_HINT = "It holds trainNdxs/testNdxs (1-based); the folder form also accepts <split>.txt"
# 0 unlabelled -> ignore, 1..40 -> 0..39
LABEL40_TABLE = np.array([IGNORE_INDEX, *range(len(CLASSES))], dtype=np.uint8)


def split_indices(splits_mat: Path, split: str) -> list[int]:
    """0-based sample indices of `split` ("train" or "test") from splits.mat."""
    if split not in SPLIT_KEYS:
        raise ValueError(f"NYUDv2 splits are {sorted(SPLIT_KEYS)}, got {split!r}")
    mat = load_mat(require(splits_mat, "NYUDv2 splits.mat", SPLITS_HINT))
    if SPLIT_KEYS[split] not in mat:
        raise ValueError(f"{splits_mat} has no variable {SPLIT_KEYS[split]}")
    return [int(i) - 1 for i in np.asarray(mat[SPLIT_KEYS[split]]).ravel()]


def class_table(mapping_mat: Path) -> np.ndarray:
    """Lookup table 0..894 -> 255 (unlabelled) or 0..39, from classMapping40.mat's mapClass."""
    mat = load_mat(require(mapping_mat, "NYUDv2 classMapping40.mat"))
    if "mapClass" not in mat:
        raise ValueError(f"{mapping_mat} has no variable mapClass")
    mapped = np.asarray(mat["mapClass"]).ravel().astype(np.int64)
    if mapped.min() < 1 or mapped.max() > len(CLASSES):
        raise ValueError(f"{mapping_mat}: mapClass values must be in 1..40")
    return np.concatenate([[IGNORE_INDEX], mapped - 1]).astype(np.uint8)


class NYUDv2(FileDataset):
    """NYUDv2 from the labeled .mat (v7.3). The HDF5 file is opened lazily in each process,
    so the dataset can be used by forked or spawned DataLoader workers."""

    classes = CLASSES
    palette = PALETTE
    title = "NYUDv2"

    def read_split(self, root: Path, split: str) -> list[str]:
        self.path = require(root / LABELED_MAT, "NYUDv2 labeled data")
        self.table = class_table(root / "classMapping40.mat")
        self.indices = split_indices(root / "splits.mat", split)
        with h5py.File(self.path, "r") as f:
            for key in ("images", "labels"):
                if key not in f:
                    raise ValueError(
                        f"{self.path} has no dataset {key!r}; is it nyu_depth_v2_labeled.mat?"
                    )
            count = f["images"].shape[0]
        bad = [i + 1 for i in self.indices if not 0 <= i < count]
        if bad:
            raise ValueError(
                f"splits.mat indices {bad[:5]} are outside 1..{count} images of {self.path}"
            )
        self._file: h5py.File | None = None
        self._pid: int | None = None
        return [f"{i + 1:04d}" for i in self.indices]

    def _h5(self) -> h5py.File:
        # An HDF5 handle must not cross a fork: reopen in every new process.
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}

    def load_image(self, index: int) -> Image.Image:
        # Stored (3, W, H) for MATLAB's column-major (H, W, 3).
        return Image.fromarray(np.ascontiguousarray(self._h5()["images"][self.indices[index]].T))

    def load_label(self, index: int) -> tuple[np.ndarray, str]:
        i = self.indices[index]
        source = f"{self.path}[labels][{i}]"
        return remap(self._h5()["labels"][i].T, self.table, source), source


class NYUDv2Folder(FilePairDataset):
    """NYUDv2 as PNG folders: image/<name>.png, label40/<name>.png (0 unlabelled, 1..40)."""

    classes = CLASSES
    palette = PALETTE
    title = "NYUDv2"

    def find_samples(
        self, root: Path, split: str, *, image_dir: str = "image", label_dir: str = "label40"
    ) -> Samples:
        images_root = require(root / image_dir, "NYUDv2 image folder")
        if (root / f"{split}.txt").is_file():
            names = [Path(line.split()[0]).stem for line in read_lines(root / f"{split}.txt")]
        else:
            by_number = {int(p.stem): p.stem for p in images_root.glob("*.png") if p.stem.isdigit()}
            wanted = [i + 1 for i in split_indices(root / "splits.mat", split)]
            missing = [i for i in wanted if i not in by_number]
            if missing:
                raise FileNotFoundError(
                    f"no image/<number>.png for splits.mat indices {missing[:5]} in {images_root}"
                )
            names = [by_number[i] for i in wanted]
        images = [images_root / f"{n}.png" for n in names]
        return names, images, [root / label_dir / f"{n}.png" for n in names]

    def decode_label(self, path: Path) -> np.ndarray:
        return remap(read_label_png(path), LABEL40_TABLE, path)


def read_nyud(root: str | Path | None, split: str, **kwargs: Any) -> SegmentationDataset:
    """The "nyud" reader: the labeled .mat when `root` holds it, else the image/ + label40/
    folders."""
    labeled = (dataset_root(root, "NYUDv2") / LABELED_MAT).is_file()
    return (NYUDv2 if labeled else NYUDv2Folder)(root, split, **kwargs)
