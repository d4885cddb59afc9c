"""A generic dataset for users' own data: image and label files paired by name.

Samples come from, in order:
- `list_file`, or `root/<split>.txt`: lines `image_path label_path` (relative to root) or a bare
  name, looked up as <image_dir>/<name>.* and <label_dir>/<name>.*;
- `root/<split>/<image_dir>/` + `root/<split>/<label_dir>/`;
- with split "all" (or None): `root/<image_dir>/` + `root/<label_dir>/`.
Labels are single-channel or palette PNGs holding 0..K-1, with 255 and any `ignore_values`
(e.g. CamVid-style void 11) ignored. K is `num_classes`, else the number of `class_names`, else
one more than the largest class value the labels hold (every label is read once for it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from piecewise_crf.data.base import (
    IGNORE_INDEX,
    FilePairDataset,
    JointTransform,
    Samples,
    bit_palette,
)
from piecewise_crf.data.io import (
    IMAGE_SUFFIXES,
    read_label_png,
    read_lines,
    read_pair_list,
    require,
)

log = logging.getLogger(__name__)


def files_by_stem(folder: Path) -> dict[str, Path]:
    require(folder, "folder")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


class FolderDataset(FilePairDataset):
    """Images and labels of the user's own data; the classes as the module says, optionally
    named, with a (K, 3) uint8 palette."""

    def __init__(
        self,
        root: str | Path | None,
        split: str | None = "all",
        *,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        palette: np.ndarray | None = None,
        transforms: JointTransform | None = None,
        list_file: str | Path | None = None,
        image_dir: str = "images",
        label_dir: str = "labels",
        ignore_values: Sequence[int] = (),
    ) -> None:
        if any(not 0 <= v <= 255 for v in ignore_values):
            raise ValueError(f"ignore_values must be label values in 0..255, got {ignore_values}")
        self.ignore_values = tuple(ignore_values)
        super().__init__(
            root,
            split or "all",
            transforms=transforms,
            list_file=list_file,
            image_dir=image_dir,
            label_dir=label_dir,
        )
        if num_classes is None:
            num_classes = len(class_names) if class_names else self._count_classes()
        if not 1 <= num_classes <= 255:
            raise ValueError(
                f"num_classes must be in 1..255 (255 is the ignore value), got {num_classes}"
            )
        if class_names and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.classes = tuple(class_names or (f"class_{i}" for i in range(num_classes)))
        self.palette = (
            bit_palette(num_classes) if palette is None else np.asarray(palette, np.uint8)
        )
        if self.palette.shape != (num_classes, 3):
            raise ValueError(
                f"palette must have shape ({num_classes}, 3), got {self.palette.shape}"
            )

    def _count_classes(self) -> int:
        """One more than the largest class value in the labels (255 and ignore_values aside)."""

        def values(path: Path) -> list[int]:
            return np.unique(self.decode_label(path)).tolist()

        with ThreadPoolExecutor(max_workers=2) as pool:  # PIL decodes without the GIL
            found = set().union(*pool.map(values, self.label_paths))
        found.discard(IGNORE_INDEX)
        if not found:
            raise ValueError(
                f"the labels in {self.label_paths[0].parent} hold no class values, only ignored "
                f"ones (255{''.join(f', {v}' for v in self.ignore_values)}); set model.num_classes"
            )
        top = max(found)
        missing = sorted(set(range(top)) - found)
        if missing:
            log.warning(
                f"the labels hold class values up to {top} but never {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}: {top + 1} classes, of which "
                f"{len(missing)} are empty; if {top} marks void, set data.ignore_values=[{top}]"
            )
        return top + 1

    def find_samples(
        self,
        root: Path,
        split: str,
        *,
        list_file: str | Path | None,
        image_dir: str,
        label_dir: str,
    ) -> Samples:
        list_path = Path(list_file) if list_file else root / f"{split}.txt"
        if list_file or list_path.is_file():
            images, labels = self._from_list(
                require(list_path, "list file"), root, image_dir, label_dir
            )
        else:
            base = root / split if split != "all" else root
            if not (base / image_dir).is_dir():
                hint = (
                    f"; {root} has only {image_dir}/ and {label_dir}/, which is split 'all': "
                    "train on it with data.train_split=all and data.val_split=all (validation "
                    "then scores training images) or data.val_split='' (no validation)"
                    if split != "all" and (root / image_dir).is_dir()
                    else f" (split 'all' uses {root / image_dir}/)"
                )
                raise FileNotFoundError(
                    f"no split {split!r} in {root}: expected {root / f'{split}.txt'} or "
                    f"{base / image_dir}/ with {base / label_dir}/{hint}"
                )
            images, labels = self._from_folders(base / image_dir, base / label_dir)
        return [p.stem for p in images], images, labels

    @staticmethod
    def _from_list(
        path: Path, root: Path, image_dir: str, label_dir: str
    ) -> tuple[list[Path], list[Path]]:
        lines = read_lines(path)
        if lines and len(lines[0].split()) == 2:
            return read_pair_list(path, root)
        image_files, label_files = files_by_stem(root / image_dir), files_by_stem(root / label_dir)
        missing = [n for n in lines if n not in image_files or n not in label_files]
        if missing:
            raise FileNotFoundError(
                f"{path}: no image in {root / image_dir} or no label in {root / label_dir} for "
                f"{len(missing)} names, e.g. {missing[:3]}"
            )
        return [image_files[n] for n in lines], [label_files[n] for n in lines]

    @staticmethod
    def _from_folders(image_dir: Path, label_dir: Path) -> tuple[list[Path], list[Path]]:
        image_files, label_files = files_by_stem(image_dir), files_by_stem(label_dir)
        unlabelled = [n for n in image_files if n not in label_files]
        if unlabelled:
            raise FileNotFoundError(
                f"{len(unlabelled)} images in {image_dir} have no label with the same name in "
                f"{label_dir}, e.g. {unlabelled[:3]}"
            )
        return list(image_files.values()), [label_files[n] for n in image_files]

    def decode_label(self, path: Path) -> np.ndarray:
        label = read_label_png(path)
        if self.ignore_values:
            label = np.where(np.isin(label, self.ignore_values), IGNORE_INDEX, label)
        return label
