"""The checkpoint format: what a file holds, files of earlier versions, and clear refusals."""

import dataclasses

import numpy as np
import pytest
import torch

from piecewise_crf.checkpoint import (
    Checkpoint,
    RunState,
    load_checkpoint,
    save_checkpoint,
    update_checkpoint,
)
from piecewise_crf.config import config_to_dict, load_config
from piecewise_crf.model import build_model


def test_a_checkpoint_round_trips_through_its_file(checkpoint, tmp_path):
    ckpt = load_checkpoint(checkpoint)
    assert ckpt.classes[0] == "background" and len(ckpt.palette) == 5
    assert ckpt.run.epoch == 1 and ckpt.run.history and ckpt.resume is None
    save_checkpoint(ckpt, tmp_path / "copy.pt")
    copy = load_checkpoint(tmp_path / "copy.pt")
    assert copy.config == ckpt.config and copy.run == ckpt.run and copy.classes == ckpt.classes
    for key, value in ckpt.model.items():
        assert torch.equal(copy.model[key], value), key
    last = load_checkpoint(checkpoint.parent / "last.pt")
    assert set(last.resume) == {"optimizer", "scaler", "rng"}


def test_a_file_written_before_the_checkpoint_dataclass_still_loads(tmp_path):
    """Format 1 as `train` wrote it before this module owned the format: a plain dict, keys
    written by hand, 'best' and 'train_seconds' optional."""
    config = load_config(
        "demo", ["model.num_classes=5", "model.block6_channels=8", "model.hidden=8"]
    )
    model = build_model(config.model)
    old = {
        "format_version": 1,
        "model": model.state_dict(),
        "config": config_to_dict(config),
        "classes": ["a", "b", "c", "d", "e"],
        "palette": np.zeros((5, 3), int).tolist(),
        "metrics": {"val_unary_miou": 0.5},
        "epoch": 3,
        "step": 12,
        "history": [{"epoch": 3}],
        "calibration": {"split": "train"},
    }
    torch.save(old, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt.run == RunState(epoch=3, step=12, history=[{"epoch": 3}])
    assert ckpt.calibration == {"split": "train"} and ckpt.metrics == {"val_unary_miou": 0.5}
    assert ckpt.config == config
    assert ckpt.build_model().state_dict().keys() == model.state_dict().keys()
    save_checkpoint(ckpt, tmp_path / "new.pt")
    written = torch.load(tmp_path / "new.pt", weights_only=True)
    assert {k: v for k, v in written.items() if k != "model"} == {
        **{k: v for k, v in old.items() if k != "model"},
        "best": -float("inf"),
        "train_seconds": 0.0,
    }


def test_update_writes_a_changed_copy_or_replaces_in_place(checkpoint, tmp_path):
    def half_scale(c: Checkpoint) -> Checkpoint:
        crf = dataclasses.replace(c.config.crf, pairwise_scale=0.5)
        return dataclasses.replace(c, config=dataclasses.replace(c.config, crf=crf))

    before = checkpoint.read_bytes()
    update_checkpoint(checkpoint, half_scale, out=tmp_path / "half.pt")
    assert checkpoint.read_bytes() == before
    assert load_checkpoint(tmp_path / "half.pt").config.crf.pairwise_scale == 0.5
    update_checkpoint(tmp_path / "half.pt", lambda c: dataclasses.replace(c, metrics={}))
    assert load_checkpoint(tmp_path / "half.pt").metrics == {}


def test_a_state_dict_of_another_architecture_says_what_differs(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    wider = dataclasses.replace(ckpt.config.model, hidden=32)
    with pytest.raises(ValueError, match=r"unary_net.*is \(.*16.*\) in .* but \(.*32"):
        dataclasses.replace(
            ckpt, config=dataclasses.replace(ckpt.config, model=wider)
        ).build_model()
    fewer = dataclasses.replace(ckpt.config.model, relations=("surrounding",))
    with pytest.raises(ValueError, match="weights in the checkpoint the model lacks"):
        dataclasses.replace(
            ckpt, config=dataclasses.replace(ckpt.config, model=fewer)
        ).build_model()


def test_unreadable_or_foreign_checkpoints_are_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a piecewise-crf checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"model": {}, "config": {}, "format_version": 7}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format version 7; this version of piecewise-crf reads"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"model": {}, "config": {}, "f": np.float64}, tmp_path / "unsafe.pt")
    with pytest.raises(ValueError, match="refusing to read checkpoint"):  # weights_only refuses it
        load_checkpoint(tmp_path / "unsafe.pt")
    torch.save(
        {"model": {}, "config": {"train": {"lrr": 1}}, "format_version": 1}, tmp_path / "c.pt"
    )
    with pytest.raises(ValueError, match="holds a config this version cannot use: unknown config"):
        load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
