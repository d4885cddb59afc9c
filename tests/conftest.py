"""Shared fixtures: one thread, a tiny synthetic training run trained once per session, its
config and data, and the registries restored after a test that adds to them."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cli_checks import train_argv
from dataset_files import make_camvid

from piecewise_crf.backbones import BACKBONES
from piecewise_crf.checkpoint import load_checkpoint, save_checkpoint
from piecewise_crf.commands.cli import main
from piecewise_crf.config import Config, load_config
from piecewise_crf.data import DATASETS
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.data.transforms import train_transforms
from piecewise_crf.relations import RELATIONS
from piecewise_crf.training.loop import TrainResult, train

SIZE = 192  # the synthetic images' side


def tiny_config(epochs: int = 1) -> Config:
    """The demo config with 16-unit heads, 2 dense-CRF iterations and `epochs` epochs."""
    config = load_config("demo", ["model.num_classes=5"])  # the synthetic set's
    config.model.block6_channels = 16
    config.model.hidden = 16
    config.data.crop_size = (SIZE, SIZE)
    config.dense_crf.iterations = 2
    config.train.epochs = epochs
    config.train.batch_size = 4
    config.train.val_every = 1
    return config


def _tiny_run(out: Path, config: Config | None = None, **kwargs) -> TrainResult:
    """`train` on 8 synthetic training and 2 validation images."""
    transforms = train_transforms((SIZE, SIZE), (0.8, 1.0), flip=True)
    train_set = SyntheticContext(8, size=SIZE, seed=0, transforms=transforms)
    val_set = SyntheticContext(2, size=SIZE, seed=1)
    return train(config or tiny_config(), out, train_set=train_set, val_set=val_set, **kwargs)


@dataclass(frozen=True)
class TrainedRun:
    """A finished tiny run: its folder and what `train` returned."""

    out: Path  # the run folder: final.pt, last.pt, best.pt, log.csv, ...
    result: TrainResult


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny models only lose time to thread contention on a shared CPU.
    Modules ask for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def make_config() -> Callable[..., Config]:
    """`tiny_config(epochs=1)`: the tiny run's config, a new copy per call."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_run() -> Callable[..., TrainResult]:
    """`tiny_run(out, config=None, **train_kwargs)`: train the tiny config into `out`."""
    return _tiny_run


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """The tiny run with the default tiny config, trained once and shared by every test: read
    its folder and model, never write to them."""
    out = tmp_path_factory.mktemp("tiny_run")
    # Session fixtures start before a module's `one_thread`, so set it here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return TrainedRun(out, _tiny_run(out))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def checkpoint(tiny_training: TrainedRun) -> Path:
    """final.pt of the shared tiny run."""
    return tiny_training.out / "final.pt"


@pytest.fixture(scope="session")
def camvid_data(tmp_path_factory) -> Path:
    """A tiny folder in CamVid's real layout: 4 training and 2 val frames of 36x48."""
    return make_camvid(tmp_path_factory.mktemp("camvid"), n_train=4, n_val=2)


@pytest.fixture(scope="session")
def camvid_run(camvid_data: Path, tmp_path_factory) -> Path:
    """An 11-class run trained through the command line on `camvid_data`; read it, never write
    to it (copy it first)."""
    out = tmp_path_factory.mktemp("camvid_run") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(train_argv(camvid_data, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def with_settings(checkpoint: Path, tmp_path_factory) -> Callable[..., Path]:
    """`with_settings(crf=..., dense_crf=...)`: a copy of the shared final.pt whose config has
    those sections, as a new file."""

    def write(**sections) -> Path:
        ckpt = load_checkpoint(checkpoint)
        config = dataclasses.replace(ckpt.config, **sections)
        path = tmp_path_factory.mktemp("settings") / "final.pt"
        save_checkpoint(dataclasses.replace(ckpt, config=config), path)
        return path

    return write


@pytest.fixture()
def registries(monkeypatch: pytest.MonkeyPatch):
    """The backbone, dataset and relation registries as they were, after the test."""
    for registry in (BACKBONES, DATASETS, RELATIONS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))


@pytest.fixture()
def read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty folder no file can be written to. As root, whom permissions do not stop, the
    refusal the OS would give is simulated (`tempfile.TemporaryFile`, which the checks use)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    else:
        folder.chmod(0o500)
    yield folder
    folder.chmod(0o700)
