"""Configuration: dataclasses with commented defaults, two presets, YAML files and key=value overrides.

A YAML file may name a preset (`preset: cpu` or `preset: paper`) and then override any field:

    preset: cpu
    model: {backbone: vgg16, backbone_weights: hed}
    train: {epochs: 30}

Unknown keys are rejected with the closest valid name, and `validate` checks every value's range
or choice when a config is built, so a bad value fails at load time with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
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
    ring_weights: dict[str, list[float]] = field(default_factory=dict)  # relation -> a weight
    # per offset ring (1 = the 8 neighbours, 2, ...; the last holds beyond), on top of
    # pairwise_scale; empty = 1. Learned by `piecewise-crf calibrate`.


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
    val_split: str | None = "val"  # "" or None: no validation during training
    crop_size: tuple[int, int] = (256, 256)  # (H, W) training crop; labels padded with ignore
    scale_range: tuple[float, float] = (0.7, 1.2)  # random rescaling in training (the paper's)
    flip: bool = True  # random horizontal flip in training
    colour_jitter: tuple[float, float, float, float] = (
        0.0,
        0.0,
        0.0,
        0.0,
    )  # training: brightness, contrast, saturation factors in [1-x, 1+x], hue in [-h, h] turns
    num_workers: int = 2
    class_names: tuple[str, ...] = ()  # "folder" datasets: a name per class (default class_0, ...)
    palette: tuple[tuple[int, int, int], ...] = ()  # "folder": an RGB colour per class


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
    detach_pairwise: bool = False  # True: pairwise_nll trains the Pairwise-Nets only, and
    # FeatMap-Net learns from unary_nll (the paper shares it); CamVid, 12 epochs, unary mIoU on
    # two held-out drives: -3.0 and +0.4 (README "recipe options")
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


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats: PyYAML follows YAML 1.1, whose float rule
    needs a dot, so `lr: 1e-3` would otherwise be the string '1e-3'."""


_Loader.add_implicit_resolver(  # copies SafeLoader's resolvers first: SafeLoader is untouched
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _yaml_problem(err: yaml.YAMLError) -> str:
    return getattr(err, "problem", None) or str(err).splitlines()[0]


def _show(value: Any) -> str:
    """A bounded repr: a hostile value (huge or deeply nested) must not flood an error line."""
    return reprlib.repr(value)


def _as_float(value: Any) -> float | None:
    """A number, or a string holding one (a hand-written `lr: "0.01"`), as a float; else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Convert a YAML value to a field's annotated type (tuples from lists, ints to floats).

    Strict where YAML is loose: bools are not numbers (True would count as 1) and a float is
    never an int (2.5 epochs is a mistake, and so, for consistency, is 3.0).
    """
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
        return _coerce(value, kind, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {_show(value)}")
        inner = args[0] if args[-1] is Ellipsis else None
        kinds = [inner] * len(value) if inner is not None else list(args)
        if len(kinds) != len(value):
            raise ValueError(f"{where}: expected {len(kinds)} values, got {_show(value)}")
        return tuple(_coerce(v, k, where) for v, k in zip(value, kinds, strict=True))
    if kind is float:
        number = _as_float(value)
        if number is None:
            raise ValueError(f"{where}: expected a number, got {_show(value)}")
        return number
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: expected int, got {_show(value)}")
    if kind in (str, bool) and not isinstance(value, kind):
        raise ValueError(f"{where}: expected {kind.__name__}, got {_show(value)}")
    return value


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ValueError(f"unknown config key {path!r}{_closest(str(key), names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{path}: expected a mapping of its fields, got {_show(value)}")
            _apply(current, value, path)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::[0-9]+)?")


def _check(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{key} must be {requirement}, got {_show(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_pair(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2


def _at_least(key: str, value: Any, low: int) -> None:
    _check(_is_int(value), key, "an int", value)
    _check(value >= low, key, f">= {low}", value)


def _finite(key: str, value: Any, op: str, bound: float) -> None:
    """`value` must be a finite number with `value op bound`, op '>' or '>='."""
    ok = _is_finite(value) and (value > bound if op == ">" else value >= bound)
    _check(ok, key, f"a finite number {op} {bound}", value)


def _fraction(key: str, value: Any) -> None:
    _check(_is_finite(value) and 0 < value <= 1, key, "in (0, 1]", value)


def _choice(key: str, value: Any, options: typing.Sequence[str]) -> None:
    if value not in options:
        match = difflib.get_close_matches(value, options, n=1) if isinstance(value, str) else []
        hint = f"; did you mean {match[0]!r}?" if match else ""
        raise ValueError(f"{key} must be one of {', '.join(options)}, got {_show(value)}{hint}")


def _check_custom_relations(relations: Any) -> None:
    """name -> non-empty list of [dy, dx] int pairs, never [0, 0] (what FixedOffsets accepts).

    Checked level by level, so a hostile nested value fails at its first wrong element.
    """
    key = "model.custom_relations"
    _check(isinstance(relations, dict), key, "a mapping name -> [[dy, dx], ...]", relations)
    for name, offsets in relations.items():
        _check(isinstance(name, str) and name != "", key, "keyed by non-empty names", name)
        where = f"{key}.{name}"
        _check(
            isinstance(offsets, list | tuple) and len(offsets) > 0,
            where,
            "a non-empty list of [dy, dx] pairs",
            offsets,
        )
        for pair in offsets:
            ok = _is_pair(pair) and _is_int(pair[0]) and _is_int(pair[1])
            _check(ok, where, "a list of [dy, dx] int pairs", pair)
            _check(tuple(pair) != (0, 0), where, "non-zero [dy, dx] offsets", pair)


def validate(config: Config) -> None:
    """Check every field's range or choice; raise ValueError naming the first bad key and the fix.

    The registries are imported here, not at the top: they pull in torch, and `import
    piecewise_crf.config` should stay light.
    """
    from piecewise_crf.backbones import BACKBONES
    from piecewise_crf.data import DATASETS
    from piecewise_crf.featmap import POOL_ORDERS
    from piecewise_crf.model import NODE_LABEL_RULES, PAIRWISE_MODES
    from piecewise_crf.relations import RELATIONS

    m = config.model
    _at_least("model.num_classes", m.num_classes, 1)
    _choice("model.backbone", m.backbone, list(BACKBONES))
    _check(
        m.backbone_weights is None or isinstance(m.backbone_weights, str),
        "model.backbone_weights",
        "a file path, 'hed' or null",
        m.backbone_weights,
    )
    _check(
        isinstance(m.scales, tuple | list) and len(m.scales) > 0,
        "model.scales",
        "a non-empty list",
        m.scales,
    )
    for i, scale in enumerate(m.scales):
        _finite(f"model.scales[{i}]", scale, ">", 0)
    _at_least("model.block6_channels", m.block6_channels, 1)
    _check(isinstance(m.pool_windows, tuple | list), "model.pool_windows", "a list", m.pool_windows)
    for i, window in enumerate(m.pool_windows):
        # FeatMapNet's stride-1 pooling keeps the map size only with an odd window.
        ok = _is_int(window) and window >= 1 and window % 2 == 1
        _check(ok, f"model.pool_windows[{i}]", "an odd int >= 1", window)
    _choice("model.pool_order", m.pool_order, POOL_ORDERS)
    _at_least("model.hidden", m.hidden, 1)
    _check_custom_relations(m.custom_relations)
    _check(isinstance(m.relations, tuple | list), "model.relations", "a list", m.relations)
    known = [*RELATIONS, *m.custom_relations]
    for i, name in enumerate(m.relations):
        _choice(f"model.relations[{i}]", name, known)
    _fraction("model.box_fraction", m.box_fraction)
    _choice("model.node_labels", m.node_labels, NODE_LABEL_RULES)
    _check(  # labels are read as 8-bit images
        _is_int(m.ignore_index) and 0 <= m.ignore_index <= 255,
        "model.ignore_index",
        "an int in 0..255",
        m.ignore_index,
    )

    c = config.crf
    _at_least("crf.iterations", c.iterations, 0)
    _choice("crf.pairwise_mode", c.pairwise_mode, PAIRWISE_MODES)
    _finite("crf.pairwise_scale", c.pairwise_scale, ">=", 0)
    _check(
        isinstance(c.ring_weights, dict), "crf.ring_weights", "relation: [weights]", c.ring_weights
    )
    named = [*m.relations, *m.custom_relations]
    for name, weights in c.ring_weights.items():
        _check(
            name in named,
            "crf.ring_weights",
            f"keyed by the model's relations ({', '.join(named)})",
            name,
        )
        ok = isinstance(weights, (list, tuple)) and len(weights) > 0
        _check(
            ok and all(_is_finite(w) and w >= 0 for w in weights),
            f"crf.ring_weights.{name}",
            "a non-empty list of finite numbers >= 0",
            weights,
        )
    if c.box_fraction is not None:
        _fraction("crf.box_fraction", c.box_fraction)

    d = config.dense_crf
    _check(isinstance(d.enabled, bool), "dense_crf.enabled", "true or false", d.enabled)
    _at_least("dense_crf.iterations", d.iterations, 0)  # 0 = the CRF's output, unrefined
    _finite("dense_crf.pos_xy_std", d.pos_xy_std, ">", 0)
    _finite("dense_crf.bi_xy_std", d.bi_xy_std, ">", 0)
    _finite("dense_crf.bi_rgb_std", d.bi_rgb_std, ">", 0)
    _finite("dense_crf.pos_weight", d.pos_weight, ">=", 0)
    _finite("dense_crf.bi_weight", d.bi_weight, ">=", 0)

    data = config.data
    _choice("data.dataset", data.dataset, list(DATASETS))
    _check(
        data.root is None or isinstance(data.root, str), "data.root", "a folder or null", data.root
    )
    _check(
        isinstance(data.train_split, str) and data.train_split != "",
        "data.train_split",
        "a split name",
        data.train_split,
    )
    _check(
        data.val_split is None or isinstance(data.val_split, str),
        "data.val_split",
        'a split name, or "" / null for no validation',
        data.val_split,
    )
    _check(
        _is_pair(data.crop_size) and all(_is_int(v) and v >= 32 for v in data.crop_size),
        "data.crop_size",
        "two ints >= 32, [height, width]",
        data.crop_size,
    )
    low_high = data.scale_range
    _check(
        _is_pair(low_high) and all(map(_is_finite, low_high)) and 0 < low_high[0] <= low_high[1],
        "data.scale_range",
        "two finite numbers [low, high] with 0 < low <= high",
        low_high,
    )
    _check(isinstance(data.flip, bool), "data.flip", "true or false", data.flip)
    jitter = data.colour_jitter
    _check(
        isinstance(jitter, (list, tuple))
        and len(jitter) == 4
        and all(map(_is_finite, jitter))
        and all(0 <= v <= 1 for v in jitter[:3])
        and 0 <= jitter[3] <= 0.5,
        "data.colour_jitter",
        "[brightness, contrast, saturation, hue] with the first three in 0..1, hue in 0..0.5",
        jitter,
    )
    _at_least("data.num_workers", data.num_workers, 0)
    for key, given in (("data.class_names", data.class_names), ("data.palette", data.palette)):
        _check(
            not given or len(given) == m.num_classes,
            key,
            f"empty or one entry per class (model.num_classes = {m.num_classes})",
            given,
        )
    for name in data.class_names:
        _check(isinstance(name, str) and name != "", "data.class_names", "non-empty names", name)
    for colour in data.palette:
        ok = len(colour) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in colour)
        _check(ok, "data.palette", "[r, g, b] triples of ints in 0..255", colour)

    t = config.train
    _at_least("train.epochs", t.epochs, 1)
    _at_least("train.batch_size", t.batch_size, 1)
    _finite("train.lr", t.lr, ">", 0)
    _finite("train.backbone_lr_mult", t.backbone_lr_mult, ">=", 0)
    _at_least("train.freeze_layers", t.freeze_layers, 0)
    _check(
        _is_finite(t.momentum) and 0 <= t.momentum < 1, "train.momentum", "in [0, 1)", t.momentum
    )
    _finite("train.weight_decay", t.weight_decay, ">=", 0)
    _finite("train.lr_power", t.lr_power, ">=", 0)
    _finite("train.pairwise_weight", t.pairwise_weight, ">=", 0)
    _finite("train.class_balance", t.class_balance, ">=", 0)
    _fraction("train.edge_fraction", t.edge_fraction)
    _at_least("train.max_edges", t.max_edges, 1)
    _check(
        isinstance(t.memory_efficient, bool),
        "train.memory_efficient",
        "true or false",
        t.memory_efficient,
    )
    _finite("train.minutes", t.minutes, ">=", 0)
    _at_least("train.val_every", t.val_every, 1)
    _check(  # NumPy's seed range
        _is_int(t.seed) and 0 <= t.seed < 2**32, "train.seed", "an int in 0..4294967295", t.seed
    )
    _check(
        isinstance(t.device, str) and _DEVICE.fullmatch(t.device) is not None,
        "train.device",
        "auto, cpu, cuda or cuda:N",
        t.device,
    )
    _check(isinstance(t.amp, bool), "train.amp", "true or false", t.amp)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from a nested dict: an optional `preset`, then field overrides; validated."""
    values = dict(values)
    preset = values.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}{_closest(str(preset), list(PRESETS))}")
    config = PRESETS[preset]() if preset else Config()
    _apply(config, values, "")
    validate(config)
    return config


def parse_override(text: str) -> dict[str, Any]:
    """'train.lr=0.01' -> {'train': {'lr': 0.01}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. train.lr=0.01")
    key, raw = text.split("=", 1)
    parts = [part.strip() for part in key.split(".")]
    if not all(parts):
        raise ValueError(
            f"--set {text}: the key has an empty name; write section.key=value, e.g. train.lr=0.01"
        )
    try:
        value: Any = _load_yaml(raw)
    except yaml.YAMLError as err:
        raise ValueError(
            f"--set {text}: cannot parse the value as YAML ({_yaml_problem(err)})"
        ) from None
    for part in reversed(parts):
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


def apply_overrides(values: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """A copy of the nested dict `values` with `section.key=value` overrides merged in."""
    for text in overrides:
        values = _merge(values, parse_override(text))
    return values


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read a YAML config (or start from defaults) and apply `section.key=value` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            values = _load_yaml(path.read_text()) or {}
        except UnicodeDecodeError:
            raise ValueError(f"config file {path} is not a text (YAML) file") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{path}{line}: cannot parse YAML ({_yaml_problem(err)})") from None
        if not isinstance(values, dict):
            raise ValueError(
                f"{path}: a config file must be a mapping of sections (model:, train:, ...), "
                f"got {_show(values)}"
            )
    return config_from_dict(apply_overrides(values, overrides))


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
    """Write `config` as YAML atomically: a kill mid-write leaves the old file or the new one."""
    from piecewise_crf.files import atomic_write_text  # it imports torch: keep this module light

    atomic_write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), path)
