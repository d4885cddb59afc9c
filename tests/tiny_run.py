"""A tiny training run on the synthetic set, shared by the train/evaluate/predict/CLI tests.

conftest.py trains it once per session (the `tiny_training` and `checkpoint` fixtures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from piecewise_crf.config import Config, demo_config
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.data.transforms import train_transforms
from piecewise_crf.train import TrainResult, train

SIZE = 192


def tiny_config(epochs: int = 1) -> Config:
    config = demo_config()
    config.model.block6_channels = 16
    config.model.hidden = 16
    config.data.crop_size = (SIZE, SIZE)
    config.dense_crf.iterations = 2
    config.train.epochs = epochs
    config.train.batch_size = 4
    config.train.val_every = 1
    return config


def tiny_sets(n_train: int = 8, n_val: int = 2) -> tuple[SyntheticContext, SyntheticContext]:
    transforms = train_transforms((SIZE, SIZE), (0.8, 1.0), flip=True)
    return (
        SyntheticContext(n_train, size=SIZE, seed=0, transforms=transforms),
        SyntheticContext(n_val, size=SIZE, seed=1),
    )


@dataclass(frozen=True)
class TrainedRun:
    """A finished tiny run: its folder and what `train` returned."""

    out: Path  # the run folder: final.pt, last.pt, best.pt, log.csv, ...
    result: TrainResult


def tiny_run(out: Path, config: Config | None = None, **kwargs) -> TrainResult:
    train_set, val_set = tiny_sets()
    return train(
        config or tiny_config(),
        out,
        train_set=train_set,
        val_set=val_set,
        progress=False,
        **kwargs,
    )


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these tiny models only lose time to thread contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
