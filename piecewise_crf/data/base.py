"""What every dataset shares: the (image, label) contract and the readers of file pairs.

Readers turn each dataset's own label coding into ours: classes 0..K-1 and 255 = ignore.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from piecewise_crf.data.io import check_files_exist, dataset_root, open_rgb, read_label_png
from piecewise_crf.data.transforms import to_tensors

IGNORE_INDEX = 255

JointTransform = Callable[[Image.Image, np.ndarray], tuple[Tensor, Tensor]]
Samples = tuple[list[str], list[Path], list[Path]]  # sample names, image files, label files


def bit_palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map: class bits spread over the high bits of R, G and B."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[i] = (r, g, b)
    return palette


class SegmentationDataset(Dataset):
    """Base class: items are (image (3, H, W) float32 in [0, 1], label (H, W) int64, 255 = ignore).

    Subclasses set `classes`, `palette` and `names` and implement `load_image` / `load_label`.
    `read_sample(i)` gives the checked raw pair (PIL RGB image, uint8 label) before transforms.
    """

    classes: tuple[str, ...]
    palette: np.ndarray
    ignore_index = IGNORE_INDEX

    def __init__(self, names: Sequence[str], transforms: JointTransform | None, split: str) -> None:
        if not names:
            raise ValueError(
                f"split {split!r} of {type(self).__name__} is empty: no samples listed"
            )
        self.names = list(names)
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        """Sample id, usable as an output file stem."""
        return self.names[index]

    def mean_classes(self) -> tuple[int, ...] | None:
        """Class ids that metric means average over (None: all); see ConfusionMatrix.compute."""
        return None

    def load_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def load_label(self, index: int) -> tuple[np.ndarray, str]:
        """Label map already in our coding (0..K-1, 255), and where it came from (for messages)."""
        raise NotImplementedError

    def read_sample(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """Checked (RGB image, uint8 label (H, W)) at full resolution."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image = self.load_image(index)
        label, source = self.load_label(index)
        bad = (label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))
        if bad.any():
            values = np.unique(label[bad])[:10].tolist()
            raise ValueError(
                f"label {source} holds values {values} that are neither classes "
                f"0..{self.num_classes - 1} nor the ignore value {self.ignore_index}"
            )
        if label.shape != (image.height, image.width):
            raise ValueError(
                f"size mismatch in sample {self.names[index]!r}: image is "
                f"{image.width}x{image.height} but label {source} is "
                f"{label.shape[1]}x{label.shape[0]} (width x height)"
            )
        return image, label.astype(np.uint8)

    def check(self, threads: int = 2) -> None:
        """Read every sample once (decode the image and the label, compare their sizes, check
        the label values), so that a bad file stops a run before it starts, not in its first
        epoch. ValueError: the first problem, and how many samples have one."""

        def problem(index: int) -> str | None:
            try:
                self.read_sample(index)
            except (ValueError, OSError) as err:
                return str(err)
            return None

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # PIL decodes without the GIL
            problems = [p for p in pool.map(problem, range(len(self))) if p is not None]
        if problems:
            more = (
                f" ({len(problems)} of {len(self)} samples have one)" if len(problems) > 1 else ""
            )
            raise ValueError(problems[0] + more)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.read_sample(index)
        if self.transforms is None:
            return to_tensors(image, label)
        return self.transforms(image, label)


class FileDataset(SegmentationDataset):
    """A dataset read from files under one folder, called like every reader:
    `cls(root, split, *, transforms=None, **options)`. The root is checked first
    (`dataset_root`, naming the dataset by `title`, with `hint` on where to get it), then
    `read_split(root, split, **options)` gives the sample names and keeps what `load_image` and
    `load_label` need; `options` are the reader's own keywords."""

    title = "dataset"
    hint = ""

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        *,
        transforms: JointTransform | None = None,
        **options: Any,
    ) -> None:
        root = dataset_root(root, self.title, self.hint)
        super().__init__(self.read_split(root, split, **options), transforms, split)

    def read_split(self, root: Path, split: str, **options: Any) -> list[str]:
        raise NotImplementedError


class FilePairDataset(FileDataset):
    """A dataset whose samples are (image file, label file) pairs, listed by `find_samples`;
    every listed file must exist. `decode_label` reads one label file."""

    def read_split(self, root: Path, split: str, **options: Any) -> list[str]:
        names, images, labels = self.find_samples(root, split, **options)
        check_files_exist(images, "image")
        check_files_exist(labels, "label")
        self.image_paths = list(images)
        self.label_paths = list(labels)
        return names

    def find_samples(self, root: Path, split: str, **options: Any) -> Samples:
        """Names, image files and label files of `split` under the checked `root`."""
        raise NotImplementedError

    def decode_label(self, path: Path) -> np.ndarray:
        return read_label_png(path)

    def load_image(self, index: int) -> Image.Image:
        return open_rgb(self.image_paths[index])

    def load_label(self, index: int) -> tuple[np.ndarray, str]:
        path = self.label_paths[index]
        return self.decode_label(path), str(path)
