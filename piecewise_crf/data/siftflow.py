"""SIFT-flow (LMSun subset): 2688 outdoor images 256x256, 33 classes; 200 test / 2488 train.

Layout under `root`:
    Images/spatial_envelope_256x256_static_8outdoorcategories/<name>.jpg
    SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/<name>.mat  (S: 0 unlabelled, 1..33)
    TestSet1.txt  the 200 test images, Windows paths as distributed
                  (`spatial_envelope_256x256_static_8outdoorcategories\\coast_arnat59.jpg`)
Labels become 0..32 with unlabelled -> 255. Three classes never occur in the test images; metric
means should skip them (`mean_classes()`).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path, PureWindowsPath

import numpy as np

from piecewise_crf.data.base import IGNORE_INDEX, FilePairDataset, Samples, bit_palette
from piecewise_crf.data.io import load_mat, read_lines, remap, require

CLASSES = (
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk",
    "desert", "door", "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole",
    "river", "road", "rock", "sand", "sea", "sidewalk", "sign", "sky", "staircase",
    "streetlight", "sun", "tree", "window",
)  # fmt: skip
PALETTE = bit_palette(len(CLASSES) + 1)[1:]
SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"
# 0 unlabelled -> ignore, 1..33 -> 0..32
LABEL_TABLE = np.array([IGNORE_INDEX, *range(len(CLASSES))], dtype=np.uint8)


def read_test_names(path: Path) -> list[str]:
    """Image stems listed in TestSet1.txt (backslash or slash paths)."""
    return [PureWindowsPath(line).stem for line in read_lines(path)]


def read_siftflow_mat(path: Path) -> np.ndarray:
    mat = load_mat(path)
    if "S" not in mat:
        raise ValueError(f"{path} has no variable S; is it a SIFT-flow SemanticLabels .mat?")
    return remap(mat["S"], LABEL_TABLE, path)


class SiftFlow(FilePairDataset):
    """SIFT-flow `train` (2488) or `test` (200, from TestSet1.txt; pass `test_list` when the
    list lives elsewhere)."""

    classes = CLASSES
    palette = PALETTE
    title = "SIFT-flow"

    def find_samples(
        self, root: Path, split: str, *, test_list: str | Path | None = None
    ) -> Samples:
        if split not in ("train", "test"):
            raise ValueError(f"SIFT-flow splits are 'train' and 'test', got {split!r}")
        image_dir = require(root / "Images" / SUBDIR, "SIFT-flow image folder")
        self.label_dir = root / "SemanticLabels" / SUBDIR
        self.test_names = read_test_names(Path(test_list) if test_list else root / "TestSet1.txt")
        if split == "test":
            names = self.test_names
        else:
            test = set(self.test_names)
            names = sorted(p.stem for p in image_dir.glob("*.jpg") if p.stem not in test)
        images = [image_dir / f"{n}.jpg" for n in names]
        return names, images, [self.label_dir / f"{n}.mat" for n in names]

    def decode_label(self, path: Path) -> np.ndarray:
        return read_siftflow_mat(path)

    @cached_property
    def absent_from_test(self) -> tuple[int, ...]:
        """Class ids that occur in no test label (read once from the test .mat files)."""
        seen = np.zeros(256, dtype=bool)
        for name in self.test_names:
            seen[np.unique(read_siftflow_mat(self.label_dir / f"{name}.mat"))] = True
        return tuple(int(c) for c in np.flatnonzero(~seen[: self.num_classes]))

    def mean_classes(self) -> tuple[int, ...]:
        """Classes to average metrics over: those that occur in the test set."""
        return tuple(c for c in range(self.num_classes) if c not in self.absent_from_test)
