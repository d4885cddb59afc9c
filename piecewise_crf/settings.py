"""Every setting: dataclass sections with commented defaults, each checking its own fields.

`Config` holds the sections model, crf, dense_crf, data and train. `validate()` checks every
field's type and range, naming the key and what it must be; `piecewise_crf.config` reads them
from YAML files and runs it once, when a config is built.
"""

from __future__ import annotations

import math
import re
import reprlib
import typing
from dataclasses import dataclass, field
from typing import Any

from piecewise_crf.registry import did_you_mean

PAIRWISE_MODES = ("raw", "interaction")  # crf.pairwise_mode: the paper's scores, double-centred
STAGES = ("unary", "crf", "crf+dense")  # the prediction stages: crf and dense_crf configure two
# tune-dense-crf's default grid: DeepLab's search (Chen et al. 2015, sec. 4.1), w1 3..5,
# sigma_alpha (xy) 50..80, sigma_beta (rgb) 3..13; the Gaussian kernel near w2 = 3, 1..3.
DENSE_GRID = {
    "bi_weight": (3.0, 4.0, 5.0),
    "bi_xy_std": (50.0, 67.0, 80.0),
    "bi_rgb_std": (3.0, 5.0, 10.0, 13.0),
    "pos_weight": (3.0,),
    "pos_xy_std": (1.0, 3.0),
    "iterations": (5,),
}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::[0-9]+)?")


def show(value: Any) -> str:
    """A bounded repr: a hostile value (huge or deeply nested) must not flood an error line."""
    return reprlib.repr(value)


def _check(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{key} must be {requirement}, got {show(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_pair(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2


def _int(key: str, value: Any, low: int) -> None:
    _check(_is_int(value), key, "an int", value)
    _check(value >= low, key, f">= {low}", value)


def _fraction(key: str, value: Any) -> None:
    _check(_is_finite(value) and 0 < value <= 1, key, "in (0, 1]", value)


def _number(key: str, value: Any, low: float, *, above: bool = False, high: float = math.inf):
    """A finite number >= low (> low when `above`), <= high."""
    ok = _is_finite(value) and (value > low if above else value >= low) and value <= high
    bound = f"{'>' if above else '>='} {low:g}" + ("" if high == math.inf else f" and <= {high:g}")
    _check(ok, key, f"a finite number {bound}", value)


def _flag(key: str, value: Any) -> None:
    _check(isinstance(value, bool), key, "true or false", value)


def _choice(key: str, value: Any, options: typing.Iterable[str]) -> None:
    options = list(options)
    if value not in options:
        need = f"one of {', '.join(options)}"
        raise ValueError(f"{key} must be {need}, got {show(value)}{did_you_mean(value, options)}")


def _list(key: str, value: Any, *, empty: bool = True) -> None:
    ok = isinstance(value, list | tuple) and (empty or len(value) > 0)
    _check(ok, key, "a list" if empty else "a non-empty list", value)


@dataclass
class ModelConfig:
    num_classes: int | None = None  # None: the training set's (a "folder" set counts its labels)
    backbone: str = "mobilenet_v2"  # "vgg16" (the paper's), "mobilenet_v2" (fast), "tiny" (tests)
    backbone_weights: str | None = None  # a torchvision state-dict file, "hed" (VGG-16) or None
    scales: tuple[float, ...] = (1.2, 0.8, 0.4)  # input scales; the grid is the largest one's map
    block6_channels: int = 512  # width of each scale's block 6; the main CPU width knob
    pool_windows: tuple[int, ...] = (5, 9)  # sliding pyramid pooling windows; () switches it off
    pool_order: str = "pool_then_concat"  # or "concat_then_pool"
    hidden: int = 512  # hidden units of Unary-Net and every Pairwise-Net
    relations: tuple[str, ...] = ("surrounding", "above_below")  # () = unary-only FCN baseline
    box_fraction: float = 0.4  # range box side as a fraction of the shorter grid side
    custom_relations: dict[str, list[list[int]]] = field(default_factory=dict)  # name: [[dy, dx]]
    node_labels: str = "nearest"  # pixel labels -> node labels: "nearest" (centre) or "majority"
    ignore_index: int = 255  # in 0..255: labels are read as 8-bit images

    def validate(self) -> None:
        # The registries pull in torch: imported on use, so `import piecewise_crf.config` is light.
        from piecewise_crf.backbones import BACKBONES
        from piecewise_crf.featmap import POOL_ORDERS
        from piecewise_crf.node_labels import NODE_LABEL_RULES
        from piecewise_crf.relations import RELATIONS

        if self.num_classes is not None:
            _int("model.num_classes", self.num_classes, 1)
        for key in ("block6_channels", "hidden"):
            _int(f"model.{key}", getattr(self, key), 1)
        _choice("model.backbone", self.backbone, BACKBONES)
        weights = self.backbone_weights
        ok = weights is None or isinstance(weights, str)
        _check(ok, "model.backbone_weights", "a file path, 'hed' or null", weights)
        _list("model.scales", self.scales, empty=False)
        for i, scale in enumerate(self.scales):
            _number(f"model.scales[{i}]", scale, 0, above=True)
        _list("model.pool_windows", self.pool_windows)
        for i, window in enumerate(self.pool_windows):
            # FeatMapNet's stride-1 pooling keeps the map size only with an odd window.
            ok = _is_int(window) and window >= 1 and window % 2 == 1
            _check(ok, f"model.pool_windows[{i}]", "an odd int >= 1", window)
        _choice("model.pool_order", self.pool_order, POOL_ORDERS)
        _check_custom_relations(self.custom_relations)
        _list("model.relations", self.relations)
        for i, name in enumerate(self.relations):
            _choice(f"model.relations[{i}]", name, [*RELATIONS, *self.custom_relations])
        _fraction("model.box_fraction", self.box_fraction)
        _choice("model.node_labels", self.node_labels, NODE_LABEL_RULES)
        _check(
            _is_int(self.ignore_index) and 0 <= self.ignore_index <= 255,
            "model.ignore_index",
            "an int in 0..255",
            self.ignore_index,
        )


def _check_custom_relations(relations: Any) -> None:
    """name -> non-empty list of [dy, dx] int pairs, never [0, 0] (what FixedOffsets accepts).

    Checked level by level, so a hostile nested value fails at its first wrong element.
    """
    key = "model.custom_relations"
    _check(isinstance(relations, dict), key, "a mapping name -> [[dy, dx], ...]", relations)
    for name, offsets in relations.items():
        _check(isinstance(name, str) and name != "", key, "keyed by non-empty names", name)
        where = f"{key}.{name}"
        ok = isinstance(offsets, list | tuple) and len(offsets) > 0
        _check(ok, where, "a non-empty list of [dy, dx] pairs", offsets)
        for pair in offsets:
            ok = _is_pair(pair) and _is_int(pair[0]) and _is_int(pair[1])
            _check(ok, where, "a list of [dy, dx] int pairs", pair)
            _check(tuple(pair) != (0, 0), where, "non-zero [dy, dx] offsets", pair)


@dataclass
class CRFConfig:
    iterations: int = 3  # mean-field iterations at prediction, at most
    tolerance: float = 1e-3  # stop once an update moves no marginal by more; 0 = every iteration
    pairwise_mode: str = "raw"  # "raw" (the paper's scores) or "interaction" (double-centred)
    pairwise_scale: float = 1.0  # multiplies pairwise scores in mean-field; choose on held-out data
    box_fraction: float | None = None  # range box at prediction; None = model.box_fraction
    ring_weights: dict[str, list[float]] = field(default_factory=dict)  # relation -> a weight per
    # offset ring (1 = the 8 neighbours, 2, ...; the last holds beyond), on top of pairwise_scale;
    # empty = 1. Learned by `piecewise-crf calibrate`.

    def validate(self) -> None:
        _int("crf.iterations", self.iterations, 0)
        _number("crf.tolerance", self.tolerance, 0, high=1)
        _choice("crf.pairwise_mode", self.pairwise_mode, PAIRWISE_MODES)
        _number("crf.pairwise_scale", self.pairwise_scale, 0)
        if self.box_fraction is not None:
            _fraction("crf.box_fraction", self.box_fraction)
        rings = self.ring_weights
        _check(isinstance(rings, dict), "crf.ring_weights", "relation: [weights]", rings)
        for name, weights in rings.items():
            ok = isinstance(weights, list | tuple) and len(weights) > 0
            ok = ok and all(_is_finite(w) and w >= 0 for w in weights)
            need = "a non-empty list of finite numbers >= 0"
            _check(ok, f"crf.ring_weights.{name}", need, weights)


@dataclass
class DenseCRFConfig:
    # The kernels' defaults are permutocrf.dense.PARAMS, written out: importing permutocrf here
    # would load numba (~1 s) in every command; tests/test_config.py checks they agree.
    enabled: bool = True  # run the "crf+dense" boundary-refinement stage at evaluation
    iterations: int = 5  # 0 = the CRF's output, unrefined
    pos_xy_std: float = 3.0  # Gaussian (position) kernel: pydensecrf's sxy
    pos_weight: float = 3.0  # its Potts weight (compat)
    bi_xy_std: float = 80.0  # bilateral kernel: position std
    bi_rgb_std: float = 13.0  # bilateral kernel: colour std
    bi_weight: float = 10.0  # its Potts weight (compat)

    def validate(self) -> None:
        _flag("dense_crf.enabled", self.enabled)
        _int("dense_crf.iterations", self.iterations, 0)
        for key in ("pos_xy_std", "bi_xy_std", "bi_rgb_std", "pos_weight", "bi_weight"):
            _number(f"dense_crf.{key}", getattr(self, key), 0, above=key.endswith("std"))


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # camvid, voc, context, nyud, siftflow, folder, synthetic
    root: str | None = None  # the dataset's folder
    train_split: str = "train"
    val_split: str | None = "val"  # "" or None: no validation during training
    crop_size: tuple[int, int] = (256, 256)  # (H, W) training crop; labels padded with ignore
    scale_range: tuple[float, float] = (0.7, 1.2)  # random rescaling in training (the paper's)
    flip: bool = True  # random horizontal flip in training
    colour_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brightness,
    # contrast, saturation factors drawn from [1-x, 1+x] (each x <= 1), hue from [-h, h] turns
    # (h <= 0.5), in training
    num_workers: int = 2
    class_names: tuple[str, ...] = ()  # "folder" datasets: a name per class (default class_0, ...)
    palette: tuple[tuple[int, int, int], ...] = ()  # "folder": an RGB colour per class
    ignore_values: tuple[int, ...] = ()  # "folder": label values void like 255, e.g. [11]

    def validate(self) -> None:
        from piecewise_crf.data import DATASETS  # the readers pull in scipy and h5py: on use

        _choice("data.dataset", self.dataset, DATASETS)
        _check(
            self.root is None or isinstance(self.root, str),
            "data.root",
            "a folder or null",
            self.root,
        )
        ok = isinstance(self.train_split, str) and self.train_split != ""
        _check(ok, "data.train_split", "a split name", self.train_split)
        ok = self.val_split is None or isinstance(self.val_split, str)
        _check(ok, "data.val_split", 'a split name, or "" / null for none', self.val_split)
        crop = self.crop_size
        ok = _is_pair(crop) and all(_is_int(v) and v >= 32 for v in crop)
        _check(ok, "data.crop_size", "two ints >= 32, [height, width]", crop)
        low_high = self.scale_range
        ok = _is_pair(low_high) and all(map(_is_finite, low_high))
        _check(
            ok and 0 < low_high[0] <= low_high[1],
            "data.scale_range",
            "two finite numbers [low, high] with 0 < low <= high",
            low_high,
        )
        _flag("data.flip", self.flip)
        jitter = self.colour_jitter
        ok = isinstance(jitter, list | tuple) and len(jitter) == 4 and all(map(_is_finite, jitter))
        ok = ok and all(0 <= v <= 1 for v in jitter[:3]) and 0 <= jitter[3] <= 0.5
        need = "[brightness, contrast, saturation, hue] with the first three in 0..1, hue in 0..0.5"
        _check(ok, "data.colour_jitter", need, jitter)
        _int("data.num_workers", self.num_workers, 0)
        for name in self.class_names:
            _check(
                isinstance(name, str) and name != "", "data.class_names", "non-empty names", name
            )
        for colour in self.palette:
            ok = isinstance(colour, list | tuple) and len(colour) == 3
            ok = ok and all(_is_int(c) and 0 <= c <= 255 for c in colour)
            _check(ok, "data.palette", "[r, g, b] triples of ints in 0..255", colour)
        for value in self.ignore_values:
            _check(_is_int(value) and 0 <= value <= 255, "data.ignore_values",
                   "label values in 0..255", value)  # fmt: skip
        for key in ("class_names", "palette", "ignore_values"):
            if getattr(self, key) and self.dataset != "folder":
                raise ValueError(
                    f"data.{key} is read by the folder dataset only (its files do not say it); "
                    f"data.dataset is {self.dataset!r}"
                )


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 4  # the global batch, split over the processes under torchrun
    lr: float = 0.01  # SGD; the backbone learns at lr * backbone_lr_mult
    backbone_lr_mult: float = 0.1  # pretrained layers learn slower than the new heads
    freeze_layers: int = 0  # keep the backbone's first N `features` layers at their loaded
    # weights: no backward through the high-resolution stem (MobileNetV2: 4 = up to stride 4)
    momentum: float = 0.9  # in [0, 1)
    weight_decay: float = 5e-4
    lr_power: float = 0.9  # "poly" schedule: lr * (1 - step / total) ** lr_power
    pairwise_weight: float = 1.0  # loss = unary_nll + pairwise_weight * pairwise_nll
    detach_pairwise: bool = False  # True: pairwise_nll trains the Pairwise-Nets only, and
    # FeatMap-Net learns from unary_nll (the paper shares it); CamVid, 12 epochs, unary mIoU on
    # two held-out drives: -3.0 and +0.4 (docs/camvid.md, "Recipe options")
    class_balance: float = 0.0  # weight class c by (median freq / freq c) ** this; 1 = SegNet's
    edge_fraction: float = 1.0  # < 1: sample this fraction of offsets per step (unbiased estimate)
    max_edges: int = 32768  # edges per chunk of the K*K layer (bounds peak memory)
    memory_efficient: bool = False  # recompute each chunk in backward: one chunk's memory, ~1.3x
    minutes: float = 0.0  # > 0: stop after this many minutes of training steps (validation not
    # counted), whichever of this and `epochs` comes first; the poly lr then follows elapsed time
    val_every: int = 5  # validate every N epochs and keep the best checkpoint
    seed: int = 0  # in 0..2**32 - 1, NumPy's seed range
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # bfloat16/float16 autocast on CUDA; ignored on CPU

    def validate(self) -> None:
        lowest = {"epochs": 1, "batch_size": 1, "freeze_layers": 0, "max_edges": 1, "val_every": 1}
        for key, low in lowest.items():
            _int(f"train.{key}", getattr(self, key), low)
        _number("train.lr", self.lr, 0, above=True)
        for key in (
            "backbone_lr_mult",
            "weight_decay",
            "lr_power",
            "pairwise_weight",
            "class_balance",
            "minutes",
        ):
            _number(f"train.{key}", getattr(self, key), 0)
        momentum = self.momentum
        _check(_is_finite(momentum) and 0 <= momentum < 1, "train.momentum", "in [0, 1)", momentum)
        _fraction("train.edge_fraction", self.edge_fraction)
        for key in ("detach_pairwise", "memory_efficient", "amp"):
            _flag(f"train.{key}", getattr(self, key))
        _check(
            _is_int(self.seed) and 0 <= self.seed < 2**32,
            "train.seed",
            "an int in 0..4294967295",
            self.seed,
        )
        ok = isinstance(self.device, str) and _DEVICE.fullmatch(self.device) is not None
        _check(ok, "train.device", "auto, cpu, cuda or cuda:N", self.device)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    dense_crf: DenseCRFConfig = field(default_factory=DenseCRFConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Every section's fields, then what spans sections."""
        for section in (self.model, self.crf, self.dense_crf, self.data, self.train):
            section.validate()
        named = [*self.model.relations, *self.model.custom_relations]
        for name in self.crf.ring_weights:
            if name not in named:
                need = f"keyed by the model's relations ({', '.join(named)})"
                raise ValueError(
                    f"crf.ring_weights must be {need}, got {show(name)}" + did_you_mean(name, named)
                )
        names = self.data.class_names
        k = self.model.num_classes if self.model.num_classes is not None else len(names)
        for key in ("class_names", "palette"):
            given = getattr(self.data, key)
            need = f"empty or one entry per class ({k} classes)"
            _check(not given or not k or len(given) == k, f"data.{key}", need, given)
