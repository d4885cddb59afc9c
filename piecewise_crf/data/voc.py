"""PASCAL VOC 2012 segmentation, with the SBD augmentation (train_aug, 10,582 images).

Layout (root may be the folder holding VOCdevkit/, VOCdevkit/ itself, or VOC2012/):
    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png     palette PNG: 0 background, 1..20, 255 void
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png  optional, the common converted SBD labels
    benchmark_RELEASE/dataset/cls/<id>.mat           optional SBD: struct GTcls, field Segmentation
    benchmark_RELEASE/dataset/{train,val}.txt
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from piecewise_crf.data.base import FilePairDataset, Samples, bit_palette
from piecewise_crf.data.io import load_mat, read_label_png, read_lines, require

CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
PALETTE = bit_palette(len(CLASSES))


def find_voc_dir(root: Path, year: str) -> Path:
    """The VOC<year> folder (the one holding JPEGImages/) under `root`."""
    for candidate in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(
        f"no VOC{year} folder with JPEGImages/ found at {root}, {root}/VOC{year} or "
        f"{root}/VOCdevkit/VOC{year}. Pass the folder that holds VOCdevkit/ (see the README "
        "for the download)."
    )


def read_ids(path: Path) -> list[str]:
    """Sample ids from a split list: plain ids, or DeepLab-style `/JPEGImages/<id>.jpg ...` lines."""
    return [Path(line.split()[0]).stem for line in read_lines(path)]


def read_sbd_mat(path: Path) -> np.ndarray:
    """SBD `cls/*.mat`: MATLAB v5 struct GTcls with the uint8 class map in field Segmentation."""
    mat = load_mat(path, squeeze_me=True, struct_as_record=False)
    if "GTcls" not in mat or not hasattr(mat["GTcls"], "Segmentation"):
        raise ValueError(f"{path} has no GTcls.Segmentation; is it an SBD cls/*.mat file?")
    return np.asarray(mat["GTcls"].Segmentation)


class VOCSegmentation(FilePairDataset):
    """VOC 2012 splits `train` (1464), `val` (1449), `trainval`, and `train_aug`
    (SBD train + val + VOC train, minus VOC val). Any other `ImageSets/Segmentation/<split>.txt`
    works too. Where several annotations of an image exist, VOC's own (with void borders) is used,
    then SegmentationClassAug, then SBD."""

    classes = CLASSES
    palette = PALETTE
    title = "VOC"

    def find_samples(
        self, root: Path, split: str, *, sbd_root: str | Path | None = None, year: str = "2012"
    ) -> Samples:
        voc = find_voc_dir(root, year)
        lists = voc / "ImageSets" / "Segmentation"
        sbd = self._find_sbd(root, voc, sbd_root)
        aug = next((d for d in (voc / "SegmentationClassAug", root / "SegmentationClassAug")
                    if d.is_dir()), None)  # fmt: skip
        if (lists / f"{split}.txt").exists():
            ids = read_ids(lists / f"{split}.txt")
        elif split == "train_aug":
            ids = self._train_aug_ids(lists, sbd, aug)
        else:
            raise FileNotFoundError(
                f"split list {lists / f'{split}.txt'} not found; VOC has train, val, trainval "
                "and train_aug"
            )
        label_dirs = [voc / "SegmentationClass", *([aug] if aug else [])]
        labels = [self._find_label(i, label_dirs, sbd) for i in ids]
        return ids, [voc / "JPEGImages" / f"{i}.jpg" for i in ids], labels

    @staticmethod
    def _find_sbd(root: Path, voc: Path, sbd_root: str | Path | None) -> Path | None:
        if sbd_root is not None:
            sbd = require(Path(sbd_root), "SBD root")
            return sbd / "dataset" if (sbd / "dataset" / "cls").is_dir() else sbd
        for candidate in (root / "benchmark_RELEASE", voc.parent.parent / "benchmark_RELEASE"):
            if (candidate / "dataset" / "cls").is_dir():
                return candidate / "dataset"
        return None

    @staticmethod
    def _train_aug_ids(lists: Path, sbd: Path | None, aug: Path | None) -> list[str]:
        voc_val = set(read_ids(lists / "val.txt"))
        extra = set(read_ids(lists / "train.txt"))
        if sbd is not None:
            extra |= set(read_ids(sbd / "train.txt")) | set(read_ids(sbd / "val.txt"))
        elif aug is not None:
            extra |= {p.stem for p in aug.glob("*.png")}
        else:
            raise FileNotFoundError(
                "split train_aug needs the SBD labels (benchmark_RELEASE/dataset/cls/*.mat; pass "
                "sbd_root=...) or SegmentationClassAug/*.png next to SegmentationClass/"
            )
        return sorted(extra - voc_val)

    @staticmethod
    def _find_label(sample: str, label_dirs: list[Path], sbd: Path | None) -> Path:
        candidates = [d / f"{sample}.png" for d in label_dirs]
        if sbd is not None:
            candidates.append(sbd / "cls" / f"{sample}.mat")
        # A missing label is reported by the existence check, at the first place looked.
        return next((c for c in candidates if c.is_file()), candidates[0])

    def decode_label(self, path: Path) -> np.ndarray:
        return read_sbd_mat(path) if path.suffix == ".mat" else read_label_png(path)
