"""Checkpoints: the one reader, writer and updater of the .pt format.

A checkpoint file is a dict of tensors and plain Python values only, so
`torch.load(weights_only=True)` reads it without executing code:

    format_version  1
    model           state dict
    config          nested dict (`config_to_dict`), the run's resolved config
    classes         list of class names
    palette         list of [r, g, b]
    epoch, step, history, best, train_seconds    the `RunState` of the run when it was saved
    metrics         {name: float}, the last validation
    calibration     optional: the record of `piecewise-crf calibrate` (what it fitted, on what)
    dense_tuning    optional: the record of `piecewise-crf tune-dense-crf --write` (likewise)
    optimizer, scaler, rng    only in last.pt, to resume from (`Checkpoint.resume`)

`Checkpoint` is that dict as a dataclass (`to_dict` / `from_dict`); `load_checkpoint`,
`save_checkpoint` and `update_checkpoint` are the only functions that read or write the files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from piecewise_crf.config import Config, config_from_dict, config_to_dict
from piecewise_crf.files import atomic_save, read_torch_file
from piecewise_crf.model import DeepStructuredModel, build_model

FORMAT_VERSION = 1
RESUME_KEYS = ("optimizer", "scaler", "rng")


@dataclass
class RunState:
    """What the training loop carries from epoch to epoch; every checkpoint holds it."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (log.csv)
    best: float = -math.inf  # the best validation score so far (best.pt's)
    train_seconds: float = 0.0  # time in training steps: the clock of `train.minutes`


@dataclass
class Checkpoint:
    """A trained model and everything needed to predict with it or to train it further."""

    model: dict[str, Tensor]  # the state dict of `build_model(config.model)`
    config: Config
    classes: list[str]
    palette: list[list[int]]  # an RGB colour per class
    run: RunState = field(default_factory=RunState)
    metrics: dict[str, float] = field(default_factory=dict)  # the last validation's
    calibration: dict[str, Any] | None = None  # what `piecewise-crf calibrate` fitted, on what
    dense_tuning: dict[str, Any] | None = None  # what `tune-dense-crf --write` chose, on what
    resume: dict[str, Any] | None = None  # optimizer, scaler and RNG states (last.pt only)

    def to_dict(self) -> dict[str, Any]:
        """The file's dict (see the module docstring)."""
        out = {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "config": config_to_dict(self.config),
            "classes": list(self.classes),
            "palette": [[int(c) for c in colour] for colour in self.palette],
            "metrics": dict(self.metrics),
            **dataclasses.asdict(self.run),
        }
        for key in ("calibration", "dense_tuning"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.resume is not None:
            out.update({key: self.resume[key] for key in RESUME_KEYS})
        return out

    @classmethod
    def from_dict(cls, values: Any, source: str = "the checkpoint") -> Checkpoint:
        """A checkpoint from a file's dict; ValueError saying what does not fit."""
        if not (
            isinstance(values, dict)
            and isinstance(values.get("model"), dict)
            and isinstance(values.get("config"), dict)
        ):
            raise ValueError(
                f"{source} is not a piecewise-crf checkpoint (expected a dict with 'model' and "
                "'config'); pass a .pt file written by piecewise-crf train"
            )
        version = values.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"checkpoint {source} has format version {version}; this version of "
                f"piecewise-crf reads version {FORMAT_VERSION}"
            )
        try:
            config = config_from_dict(values["config"])
        except ValueError as err:
            raise ValueError(f"{source} holds a config this version cannot use: {err}") from None
        names = [f.name for f in dataclasses.fields(RunState)]
        has_resume = all(key in values for key in RESUME_KEYS)
        return cls(
            model=values["model"],
            config=config,
            classes=list(values["classes"]),
            palette=[list(colour) for colour in values["palette"]],
            run=RunState(**{key: values[key] for key in names if key in values}),
            metrics=dict(values.get("metrics", {})),
            calibration=values.get("calibration"),
            dense_tuning=values.get("dense_tuning"),
            resume={key: values[key] for key in RESUME_KEYS} if has_resume else None,
        )

    def build_model(self, source: str = "the checkpoint") -> DeepStructuredModel:
        """The model this checkpoint describes, with its weights, in eval mode on the CPU."""
        model = build_model(
            self.config.model, load_weights=False, max_edges=self.config.train.max_edges
        )
        load_model_state(model, self.model, source)
        return model.eval()


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by `piecewise-crf train` (weights_only: no code runs)."""
    return Checkpoint.from_dict(read_torch_file(path, "checkpoint"), str(path))


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> None:
    """Write `checkpoint` to `path` atomically: a kill leaves the old file or the new one."""
    atomic_save(checkpoint.to_dict(), path)


def update_checkpoint(
    path: str | Path, change: Callable[[Checkpoint], Checkpoint], out: str | Path | None = None
) -> Checkpoint:
    """Read the checkpoint at `path`, apply `change`, and write the result to `out` (default:
    `path` itself, replaced atomically). Returns what was written."""
    updated = change(load_checkpoint(path))
    save_checkpoint(updated, path if out is None else out)
    return updated


def config_differences(ours: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: a vs b' for every leaf that differs between two nested config dicts."""
    out = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} vs {b!r}")
    return out


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`model.load_state_dict(state)`, but saying which weights are missing, extra or reshaped."""
    own = model.state_dict()
    problems = [
        f"{k} is {tuple(v.shape)} in {source} but {tuple(own[k].shape)} in the model"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing:
        problems.append(f"{len(missing)} weights missing from {source}, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} weights in {source} the model lacks, e.g. {extra[:3]}")
    if problems:
        raise ValueError(
            f"{source} does not fit this model (another architecture or number of classes?): "
            + "; ".join(problems[:6])
        )
    model.load_state_dict(state)


def check_classes(trained: Sequence[str], classes: Sequence[str], what: str) -> None:
    """Refuse to apply a model trained on `trained` classes to data with other classes."""
    if len(trained) != len(classes):
        raise ValueError(
            f"the checkpoint predicts {len(trained)} classes ({', '.join(trained)}) but {what} "
            f"has {len(classes)} ({', '.join(classes)})"
        )
