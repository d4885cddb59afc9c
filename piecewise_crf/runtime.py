"""What train, evaluate and predict share: device choice, autocast dtype, datasets by name."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from piecewise_crf.config import Config


def open_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    transforms: Any = None,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] = (),
    palette: Sequence[Sequence[int]] = (),
) -> Dataset:
    """A dataset split by name (see `piecewise_crf.data.build_dataset`). `num_classes`,
    `class_names` and `palette` are for "folder" datasets (users' own data), whose files do not
    say what the classes are."""
    from piecewise_crf.data import build_dataset  # the readers pull in scipy/h5py: load on use

    extra: dict[str, Any] = {}
    if name == "folder":
        extra = {"num_classes": num_classes} if num_classes else {}
        extra.update(class_names=list(class_names) or None, palette=list(palette) or None)
    return build_dataset(name, root, split, transforms=transforms, **extra)


def dataset_from_config(
    config: Config, split: str, *, root: str | Path | None = None, transforms: Any = None
) -> Dataset:
    """`split` of the config's dataset (at `root`, default `data.root`), its classes named."""
    data = config.data
    return open_dataset(
        data.dataset,
        data.root if root is None else root,
        split,
        transforms,
        num_classes=config.model.num_classes,
        class_names=data.class_names,
        palette=data.palette,
    )


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device for a name: auto = CUDA when present, else CPU; bare cuda = the local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for, but CUDA is not available; use cpu or auto"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 autocast where the GPU supports it, else float16 (with a GradScaler); none on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def ensure_writable(folder: str | Path) -> Path:
    """Create `folder` and check a file can be written there, before any long computation."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PermissionError(
            f"cannot write to the output folder {folder}: {err.strerror or err}; "
            "choose another output path or fix its permissions"
        ) from err
    return folder
