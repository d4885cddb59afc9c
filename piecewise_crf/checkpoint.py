"""Checkpoints: safe loads (`files.read_torch_file`) and clear messages when one does not fit.

A checkpoint is a dict of tensors and plain Python values only, so `torch.load(weights_only=True)`
reads it without executing code:

    format_version  int
    model           state dict
    config          nested dict (`config_to_dict`), the run's resolved config
    classes         list of class names
    palette         list of [r, g, b]
    epoch, step     completed epochs and optimizer steps (these four keys: `train.RunState`)
    history         list of per-epoch log rows (log.csv)
    best            the best validation score so far
    train_seconds   seconds spent in training steps (the clock of train.minutes)
    metrics         {name: float}, the last validation
    optimizer, scaler, rng   only in last.pt, for --resume
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piecewise_crf.config import Config, config_from_dict
from piecewise_crf.files import read_torch_file
from piecewise_crf.model import DeepStructuredModel, build_model

FORMAT_VERSION = 1


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `piecewise-crf train` (weights_only: no code runs)."""
    ckpt = read_torch_file(path, "checkpoint")
    if not (
        isinstance(ckpt, dict)
        and isinstance(ckpt.get("model"), dict)
        and isinstance(ckpt.get("config"), dict)
    ):
        raise ValueError(
            f"{path} is not a piecewise-crf checkpoint (expected a dict with 'model' and "
            "'config'); pass a .pt file written by piecewise-crf train"
        )
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {version}; this version of piecewise-crf "
            f"reads version {FORMAT_VERSION}"
        )
    return ckpt


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


def model_from_checkpoint(
    ckpt: dict[str, Any], source: str = "the checkpoint"
) -> tuple[DeepStructuredModel, Config]:
    """The model a checkpoint describes, with its weights, in eval mode on the CPU."""
    try:
        config = config_from_dict(ckpt["config"])
    except ValueError as err:
        raise ValueError(f"{source} holds a config this version cannot use: {err}") from None
    model = build_model(config.model, load_weights=False, max_edges=config.train.max_edges)
    load_model_state(model, ckpt["model"], source)
    return model.eval(), config


def check_classes(trained: Sequence[str], classes: Sequence[str], what: str) -> None:
    """Refuse to apply a model trained on `trained` classes to data with other classes."""
    if len(trained) != len(classes):
        raise ValueError(
            f"the checkpoint predicts {len(trained)} classes ({', '.join(trained)}) but {what} "
            f"has {len(classes)} ({', '.join(classes)})"
        )
