"""Configuration: dataclasses with commented defaults, two presets, YAML files and key=value overrides.

A YAML file may name a preset (`preset: cpu` or `preset: paper`) and then override any field:

    preset: cpu
    model: {backbone: vgg16, backbone_weights: hed}
    train: {epochs: 30}

Unknown keys are rejected with the closest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ModelConfig:
    num_classes: int = 5
    backbone: str = (
        "mobilenet_v2"  # "vgg16" (the paper's), "mobilenet_v2" (fast) or "tiny" (tests, demo)
    )
    backbone_weights: str | None = (
        None  # torchvision state-dict file, "hed" (VGG-16), or None = random
    )
    scales: tuple[float, ...] = (
        1.2,
        0.8,
        0.4,
    )  # input scales; the node grid is the largest one's map
    block6_channels: int = 512  # width of each scale's block 6; the main CPU width knob
    pool_windows: tuple[int, ...] = (5, 9)  # sliding pyramid pooling windows; () switches it off
    pool_order: str = "pool_then_concat"  # or "concat_then_pool"
    hidden: int = 512  # hidden units of Unary-Net and every Pairwise-Net
    relations: tuple[str, ...] = ("surrounding", "above_below")  # () = unary-only FCN baseline
    box_fraction: float = 0.4  # range box side as a fraction of the shorter grid side
    custom_relations: dict[str, list[list[int]]] = field(default_factory=dict)  # name -> [[dy, dx]]
    node_labels: str = (
        "nearest"  # pixel labels -> node labels: "nearest" (node centre) or "majority"
    )
    ignore_index: int = 255


@dataclass
class CRFConfig:
    iterations: int = 3  # mean-field iterations at prediction
    pairwise_mode: str = "raw"  # "raw" (the paper's scores) or "interaction" (double-centred)
    pairwise_scale: float = (
        1.0  # multiplies pairwise scores in mean-field; choose on validation data
    )
    box_fraction: float | None = None  # range box at prediction; None = model.box_fraction


@dataclass
class DenseCRFConfig:
    enabled: bool = True  # run the "crf+dense" boundary-refinement stage at evaluation
    iterations: int = 5
    pos_xy_std: float = 3.0  # Gaussian (position) kernel: pydensecrf's sxy
    pos_weight: float = 3.0  # its Potts weight (compat)
    bi_xy_std: float = 80.0  # bilateral kernel: position std
    bi_rgb_std: float = 13.0  # bilateral kernel: colour std
    bi_weight: float = 10.0  # its Potts weight (compat)


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # camvid, voc, context, nyud, siftflow, folder, synthetic
    root: str | None = None  # dataset folder; --data-root overrides
    train_split: str = "train"
    val_split: str = "val"
    crop_size: tuple[int, int] = (256, 256)  # (H, W) training crop; labels padded with ignore
    scale_range: tuple[float, float] = (0.7, 1.2)  # random rescaling in training (the paper's)
    flip: bool = True  # random horizontal flip in training
    num_workers: int = 2


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 4
    lr: float = 0.01  # SGD; backbone gets lr * backbone_lr_mult
    backbone_lr_mult: float = 0.1  # pretrained layers learn slower than the new heads
    freeze_layers: int = 0  # keep the backbone's first N `features` layers at their loaded
    # weights: no backward through the high-resolution stem (MobileNetV2: 4 = up to stride 4)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_power: float = 0.9  # "poly" schedule: lr * (1 - step / total) ** lr_power
    pairwise_weight: float = 1.0  # loss = unary_nll + pairwise_weight * pairwise_nll
    class_balance: float = 0.0  # weight class c by (median freq / freq c) ** this; 1 = SegNet's
    edge_fraction: float = 1.0  # < 1: sample this fraction of offsets per step (unbiased estimate)
    max_edges: int = 32768  # edges per chunk of the K*K layer (bounds peak memory)
    memory_efficient: bool = (
        False  # recompute each chunk in backward: memory of one chunk, ~1.3x time
    )
    minutes: float = 0.0  # > 0: stop after this many minutes of training steps (validation not
    # counted), whichever of this and `epochs` comes first; the poly lr then follows elapsed time
    val_every: int = 5  # validate every N epochs and keep the best checkpoint
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # bfloat16/float16 autocast on CUDA; ignored on CPU


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    dense_crf: DenseCRFConfig = field(default_factory=DenseCRFConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def paper_config() -> Config:
    """The paper's settings: VGG-16, three scales, both pyramid windows, both relations, 512 units."""
    return Config(
        model=ModelConfig(backbone="vgg16", backbone_weights="hed"),
        data=DataConfig(crop_size=(384, 384)),
    )


def cpu_config() -> Config:
    """What trains in reasonable time on a 2-core CPU: MobileNetV2, two scales, narrow heads."""
    return Config(
        model=ModelConfig(
            backbone="mobilenet_v2",
            scales=(1.0, 0.5),
            block6_channels=128,
            hidden=128,
        ),
        data=DataConfig(crop_size=(240, 320)),
        train=TrainConfig(batch_size=4, edge_fraction=0.25),
    )


def demo_config() -> Config:
    """The demo: a tiny random-init network on the synthetic context dataset (a few CPU minutes).

    One scale and no pyramid pooling keep the unary receptive field (~100 px) shorter than the
    distance to the context that decides an object's class, so only the pairwise CRF can use it.
    """
    return Config(
        model=ModelConfig(
            num_classes=5,
            backbone="tiny",
            scales=(1.0,),
            block6_channels=64,
            pool_windows=(),
            hidden=64,
            box_fraction=0.5,
        ),
        crf=CRFConfig(pairwise_mode="raw", pairwise_scale=1.0),
        data=DataConfig(
            dataset="synthetic", crop_size=(192, 192), scale_range=(1.0, 1.0), num_workers=0
        ),
        train=TrainConfig(epochs=10, batch_size=8, lr=0.1, backbone_lr_mult=1.0, val_every=2),
    )


PRESETS = {"paper": paper_config, "cpu": cpu_config, "demo": demo_config}


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1)
    return f"; did you mean {match[0]!r}?" if match else f"; valid keys: {', '.join(options)}"


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Convert a YAML value to a field's annotated type (tuples from lists, ints to floats)."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
        return _coerce(value, kind, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args[-1] is Ellipsis else None
        kinds = [inner] * len(value) if inner is not None else list(args)
        if len(kinds) != len(value):
            raise ValueError(f"{where}: expected {len(kinds)} values, got {value!r}")
        return tuple(_coerce(v, k, where) for v, k in zip(value, kinds, strict=True))
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str, bool) and not isinstance(value, kind):
        raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ValueError(f"unknown config key {path!r}{_closest(key, names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{path}: expected a mapping of its fields, got {value!r}")
            _apply(current, value, path)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from a nested dict: an optional `preset`, then field overrides."""
    values = dict(values)
    preset = values.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}{_closest(str(preset), list(PRESETS))}")
    config = PRESETS[preset]() if preset else Config()
    _apply(config, values, "")
    return config


def parse_override(text: str) -> dict[str, Any]:
    """'train.lr=0.01' -> {'train': {'lr': 0.01}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. train.lr=0.01")
    key, raw = text.split("=", 1)
    value: Any = yaml.safe_load(raw)
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read a YAML config (or start from defaults) and apply `section.key=value` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config file must be a mapping of sections")
    for text in overrides:
        values = _merge(values, parse_override(text))
    return config_from_dict(values)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), for YAML and checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
