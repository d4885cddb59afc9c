"""Session fixtures: the tiny synthetic run (tests/tiny_run.py), trained once for every module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_run import TrainedRun, tiny_run


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """`tiny_run` with the default tiny config, shared by every test: read its folder and
    model, never write to them."""
    out = tmp_path_factory.mktemp("tiny_run")
    # Session fixtures start before a module's `one_thread`, so set it here: one thread is what
    # the module fixtures this replaces trained under (and the fastest on a shared CPU).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return TrainedRun(out, tiny_run(out))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def checkpoint(tiny_training: TrainedRun) -> Path:
    """final.pt of the shared tiny run."""
    return tiny_training.out / "final.pt"
