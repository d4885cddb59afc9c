"""Files without losses: atomic writes under failures and signals, safe loads, output guards."""

import os
import signal

import pytest
import torch

from piecewise_crf.files import atomic_save


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(2)}, path)

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_a_signal_during_a_save_is_handled_after_the_file_is_complete(tmp_path, monkeypatch):
    """SIGTERM in the middle of torch.save (a scheduler stopping a run): the write finishes and
    is renamed into place, then the handler runs; inside the write it used to surface as the zip
    writer's RuntimeError or abort the process."""

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop(signum)

    path, real_save = tmp_path / "ckpt.pt", torch.save

    def signalled(obj, f):
        f.write(b"")  # the signal lands while the file is open
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(obj, f)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        monkeypatch.setattr(torch, "save", signalled)
        with pytest.raises(Stop):
            atomic_save({"a": torch.zeros(2)}, path)
        assert signal.getsignal(signal.SIGTERM) is handler  # put back before it ran
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
