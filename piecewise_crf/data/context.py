"""PASCAL-Context, 59 classes + background (60), on VOC 2010 images.

Layout (`context_root` defaults to `root`; root holds VOCdevkit/VOC2010 as for VOC):
    VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    converted form: SegmentationClassContext/<id>.png (in VOC2010/ or context_root), 0 = background, 1..59
    raw form:       context_root/trainval/<id>.mat (LabelMap, 459-class ids), context_root/labels.txt
                    (`id: name`, 459 lines), optional context_root/59_labels.txt (`id: name`)
    split lists:    context_root/{train,val}.txt or VOC2010/ImageSets/SegmentationContext/{train,val}.txt
                    (4998 / 5105 ids)

The 59 classes are numbered 1..59 in the order of their 459-class ids (alphabetical), as the
Detail API and the usual converted PNGs do; every other id (and 0) is background.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from piecewise_crf.data.base import FilePairDataset, Samples, bit_palette
from piecewise_crf.data.io import load_mat, read_label_png, read_lines, remap, require
from piecewise_crf.data.voc import find_voc_dir, read_ids

CLASSES = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
    "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass",
    "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate",
    "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water",
    "window", "wood",
)  # fmt: skip
PALETTE = bit_palette(len(CLASSES))
# 59_labels.txt spells three classes differently from labels.txt.
ALIASES = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}


def read_id_names(path: Path) -> dict[str, int]:
    """`id: name` lines -> {name: id}."""
    names = {}
    for number, line in enumerate(read_lines(path), 1):
        ident, sep, name = line.partition(":")
        if not sep or not ident.strip().isdigit():
            raise ValueError(f"{path} line {number}: expected 'id: name', got {line!r}")
        names[name.strip()] = int(ident)
    return names


def context_table(labels_txt: Path, labels59_txt: Path | None) -> np.ndarray:
    """Lookup table from 459-class ids to 0 (background) .. 59."""
    full = read_id_names(labels_txt)
    wanted = list(read_id_names(labels59_txt)) if labels59_txt else list(CLASSES[1:])
    missing = [n for n in wanted if ALIASES.get(n, n) not in full]
    if missing:
        raise ValueError(
            f"{labels_txt} has no class named {missing}; is it PASCAL-Context's labels.txt?"
        )
    ids = sorted(full[ALIASES.get(n, n)] for n in wanted)
    table = np.zeros(max(full.values()) + 1, dtype=np.uint8)
    table[ids] = np.arange(1, len(ids) + 1)
    return table


class PascalContext(FilePairDataset):
    """PASCAL-Context 60 classes (0 = background is a class). Reads converted PNGs when
    present, else the raw `trainval/*.mat` LabelMaps."""

    classes = CLASSES
    palette = PALETTE
    title = "PASCAL-Context"

    def find_samples(
        self, root: Path, split: str, *, context_root: str | Path | None = None
    ) -> Samples:
        voc = find_voc_dir(root, "2010")
        ctx = require(Path(context_root), "PASCAL-Context folder") if context_root else root
        list_candidates = [
            ctx / f"{split}.txt",
            voc / "ImageSets" / "SegmentationContext" / f"{split}.txt",
        ]
        list_path = next((p for p in list_candidates if p.is_file()), None)
        if list_path is None:
            raise FileNotFoundError(
                f"PASCAL-Context split list not found at {' or '.join(map(str, list_candidates))}"
            )
        ids = read_ids(list_path)
        png_dir = next(
            (
                d
                for d in (voc / "SegmentationClassContext", ctx / "SegmentationClassContext")
                if d.is_dir()
            ),
            None,
        )
        self.table = None
        if png_dir is not None:
            labels = [png_dir / f"{i}.png" for i in ids]
        else:
            mat_dir = require(
                ctx / "trainval",
                "PASCAL-Context labels (neither SegmentationClassContext/ nor trainval/)",
            )
            labels59 = ctx / "59_labels.txt"
            self.table = context_table(
                require(ctx / "labels.txt", "PASCAL-Context labels.txt"),
                labels59 if labels59.is_file() else None,
            )
            labels = [mat_dir / f"{i}.mat" for i in ids]
        return ids, [voc / "JPEGImages" / f"{i}.jpg" for i in ids], labels

    def decode_label(self, path: Path) -> np.ndarray:
        if self.table is None:
            return read_label_png(path)
        mat = load_mat(path)
        if "LabelMap" not in mat:
            raise ValueError(
                f"{path} has no variable LabelMap; is it a PASCAL-Context trainval .mat?"
            )
        return remap(mat["LabelMap"], self.table, path)
