"""permutocrf's fixtures. The tests run with and without torch installed: those that need it
skip without it (``needs_torch``, ``pytest.importorskip``)."""

from __future__ import annotations

import sys

import numba
import pytest
from environment import HAS_TORCH

collect_ignore = [] if HAS_TORCH else ["test_dense.py", "test_grad.py"]  # the torch path's


@pytest.fixture(scope="module")
def one_thread():
    """One thread (numba's, and torch's where it is loaded): tiny problems only lose time to
    thread contention on a shared CPU."""
    torch = sys.modules.get("torch")
    threads = numba.get_num_threads(), torch and torch.get_num_threads()
    numba.set_num_threads(1)
    if torch:
        torch.set_num_threads(1)
    yield
    numba.set_num_threads(threads[0])
    if torch:
        torch.set_num_threads(threads[1])


@pytest.fixture
def ref():
    """pydensecrf.densecrf; the test is skipped without pydensecrf2."""
    return pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is not installed")


@pytest.fixture
def ref_utils(ref):
    return pytest.importorskip("pydensecrf.utils")
