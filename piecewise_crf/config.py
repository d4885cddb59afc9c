"""Reading configs: YAML files, the shipped configs, `base:` chains and `section.key=value` overrides.

A config file starts from another (`base:` a shipped config's name, or a path relative to the
file) and changes what it lists:

    base: cpu
    model: {num_classes: 11, backbone_weights: weights/mobilenet_v2.pth}
    train: {epochs: 30}

The shipped configs (`shipped_configs()`: demo, cpu, paper, camvid, ...) are package data, so
`load_config("camvid")` works from a plain install. Values are converted to the fields' types
(`piecewise_crf.settings`), unknown keys get the closest valid name, and the result is
validated once, so a bad value fails at load with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import types
import typing
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from piecewise_crf.registry import did_you_mean, unknown
from piecewise_crf.settings import (
    DENSE_GRID,
    PAIRWISE_MODES,
    STAGES,
    Config,
    CRFConfig,
    DataConfig,
    DenseCRFConfig,
    ModelConfig,
    TrainConfig,
    show,
)

__all__ = [  # the sections and their vocabulary are defined in settings.py
    "DENSE_GRID", "PAIRWISE_MODES", "STAGES", "CRFConfig", "Config", "DataConfig",
    "DenseCRFConfig", "ModelConfig", "TrainConfig", "apply_overrides", "config_from_dict",
    "config_to_dict", "config_yaml", "load_config", "parse_override", "prediction_settings", "read_config_values",
    "config_summary", "replace_settings", "setting_overrides", "shipped_config_file", "shipped_config_text",
    "shipped_configs",
]  # fmt: skip


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
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {show(value)}")
        inner = args[0] if args[-1] is Ellipsis else None
        kinds = [inner] * len(value) if inner is not None else list(args)
        if len(kinds) != len(value):
            raise ValueError(f"{where}: expected {len(kinds)} values, got {show(value)}")
        return tuple(_coerce(v, k, where) for v, k in zip(value, kinds, strict=True))
    if kind is float:
        number = _as_float(value)
        if number is None:
            raise ValueError(f"{where}: expected a number, got {show(value)}")
        return number
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: expected int, got {show(value)}")
    if kind in (str, bool) and not isinstance(value, kind):
        raise ValueError(f"{where}: expected {kind.__name__}, got {show(value)}")
    return value


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ValueError(unknown("config key", key, names, shown=repr(path)))
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{path}: expected a mapping of its fields, got {show(value)}")
            _apply(current, value, path)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def config_from_dict(values: dict[str, Any]) -> Config:
    """The Config of a nested dict of resolved values (no `base:`), validated."""
    config = Config()
    _apply(config, values, "")
    config.validate()
    return config


def parse_override(text: str) -> dict[str, Any]:
    """'train.lr=0.01' -> {'train': {'lr': 0.01}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. train.lr=0.01")
    key, raw = text.split("=", 1)
    parts = [part.strip() for part in key.split(".")]
    if not all(parts):
        raise ValueError(f"override {text!r}: the key has an empty name; write section.key=value")
    try:
        value: Any = _load_yaml(raw)
    except yaml.YAMLError as err:
        raise ValueError(
            f"override {text!r}: cannot parse the value ({_yaml_problem(err)})"
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


SHIPPED = resources.files("piecewise_crf") / "configs"


def shipped_configs() -> list[str]:
    """The names of the configs shipped with the package (`load_config(name)` reads one)."""
    return sorted(
        p.name.removesuffix(".yaml") for p in SHIPPED.iterdir() if p.name.endswith(".yaml")
    )


def shipped_config_file(name: str) -> Traversable:
    """The file of a shipped config (a package resource); a did-you-mean error if none."""
    return _locate(name, SHIPPED)[0]


def shipped_config_text(name: str) -> str:
    """The YAML of a shipped config as shipped, comments included (a copy to edit keeps its
    `base:`, which names a shipped config)."""
    return shipped_config_file(name).read_text()


def config_summary(name: str) -> str:
    """The first sentence of a shipped config's opening comment: what it is for."""
    lines = shipped_config_text(name).splitlines()
    words = " ".join(line.lstrip("# ").strip() for line in itertools.takewhile(_comment, lines))
    return re.split(r"(?<=\.)\s", words, maxsplit=1)[0]


def _comment(line: str) -> bool:
    return line.startswith("#") and not line.lstrip("# ").startswith("piecewise-crf ")


def _read_file(path: Path | Any, name: str) -> dict[str, Any]:
    """The mapping in one YAML file (a Path or a package resource), or one-line errors."""
    try:
        values = _load_yaml(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ValueError(f"config file {name} is not a text (YAML) file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{name}{line}: cannot parse YAML ({_yaml_problem(err)})") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"{name}: a config file must be a mapping of sections (model:, train:, ...), "
            f"got {show(values)}"
        )
    return values


def _locate(source: str | Path, folder: Path | Traversable | None) -> tuple[Any, str]:
    """The file a config source names and how messages name it. From the command line
    (`folder` None) a path, else a shipped config by name (with or without .yaml); in a `base:`
    a path relative to the naming file's `folder` (a shipped file's base is shipped too)."""
    path = Path(source)
    if folder is None and path.is_file():
        return path, str(path)
    if isinstance(folder, Path) and (folder / path).is_file():
        return folder / path, str(folder / path)
    shipped = SHIPPED / f"{path.name.removesuffix('.yaml')}.yaml"
    if len(path.parts) == 1 and path.suffix in ("", ".yaml") and shipped.is_file():
        return shipped, f"{shipped.name} (shipped)"
    names = shipped_configs()
    raise FileNotFoundError(
        f"config {source} is neither a file nor a shipped config ({', '.join(names)})"
        + did_you_mean(path.stem, names)
    )


def read_config_values(
    source: str | Path, *, folder: Path | Traversable | None = None, chain: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The values a config file sets, with the config its `base:` names merged in first."""
    file, name = _locate(source, folder)
    if name in chain:
        raise ValueError(f"config {name}: its base: chain loops ({' -> '.join((*chain, name))})")
    values = _read_file(file, name)
    base = values.pop("base", None)
    if "preset" in values:  # the key's name before `base:`; it named a shipped config
        base = values.pop("preset") if base is None else base
    if base is None:
        return values
    if not isinstance(base, str):
        raise ValueError(
            f"{name}: base: must name a config file or a shipped config, got {show(base)}"
        )
    parent = file.parent if isinstance(file, Path) else SHIPPED
    return _merge(read_config_values(base, folder=parent, chain=(*chain, name)), values)


def load_config(source: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """The config of a YAML file or a shipped config's name (None: the defaults), with
    `section.key=value` overrides applied, validated."""
    values = {} if source is None else read_config_values(source)
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


def config_yaml(config: Config) -> str:
    """The config as YAML, every field written out."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def prediction_settings(config: Config) -> dict[str, Any]:
    """The crf and dense-CRF settings of `config` by the key names `replace_settings` takes."""
    crf = dataclasses.asdict(config.crf)
    dense = {f"dense_{key}": value for key, value in dataclasses.asdict(config.dense_crf).items()}
    return {**crf, **dense}


def setting_overrides(overrides: typing.Iterable[str]) -> dict[str, Any]:
    """`crf.key=value` and `dense_crf.key=value` overrides of a trained model's prediction
    settings, by the key names `replace_settings` takes, converted to the fields' types; the
    model, data and train sections are the checkpoint's, and refused."""
    changed = Config()
    given: dict[str, list[str]] = {"crf": [], "dense_crf": []}
    for text in overrides:
        change = parse_override(text)
        section = next(iter(change))
        if section not in given or not isinstance(change[section], dict):
            raise ValueError(
                f"{text!r}: only crf.* and dense_crf.* settings change after training; "
                "model, data and train are the checkpoint's"
            )
        _apply(changed, change, "")
        given[section].extend(change[section])
    changed.crf.validate()  # the values' ranges now; what spans sections, with the checkpoint's
    changed.dense_crf.validate()
    crf = {key: getattr(changed.crf, key) for key in given["crf"]}
    dense = {f"dense_{key}": getattr(changed.dense_crf, key) for key in given["dense_crf"]}
    return {**crf, **dense}


def replace_settings(config: Config, overrides: dict[str, Any]) -> Config:
    """A copy of `config` with prediction settings replaced by key name, validated.

    Keys are CRFConfig's (`iterations`, `pairwise_mode`, `pairwise_scale`, `box_fraction`,
    `ring_weights`) and DenseCRFConfig's (`pos_xy_std`, ..., `bi_weight`); the dense CRF's
    `iterations` and `enabled` are `dense_iterations` and `dense_enabled`.
    """
    crf_keys = [f.name for f in dataclasses.fields(CRFConfig)]
    dense_keys = [f.name for f in dataclasses.fields(DenseCRFConfig)]
    crf: dict[str, Any] = {}
    dense: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in crf_keys:
            crf[key] = value
        elif key.removeprefix("dense_") in dense_keys:
            dense[key.removeprefix("dense_")] = value
        else:
            valid = [*crf_keys, *(k for k in dense_keys if k not in crf_keys), "dense_iterations"]
            raise ValueError(unknown("prediction setting", key, valid))
    config = dataclasses.replace(
        config,
        crf=dataclasses.replace(config.crf, **crf),
        dense_crf=dataclasses.replace(config.dense_crf, **dense),
    )
    config.validate()
    return config
