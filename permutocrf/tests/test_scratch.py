"""Scratch arrays (``scratch.py``): one buffer per name and thread, reused, bounded, and never
behind what a call returns."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from permutocrf import (
    bilateral_kernel,
    dense_crf,
    gaussian_kernel,
    mean_field,
    scratch,
    unary_scores,
)


@pytest.fixture(autouse=True)
def _empty():
    scratch.release()
    yield
    scratch.release()


def test_a_name_reuses_its_memory_and_grows_when_too_small():
    a = scratch.scratch("t.a", (10, 3), np.float32)
    assert a.shape == (10, 3) and a.dtype == np.float32 and a.flags.c_contiguous
    b = scratch.scratch("t.a", (4, 5), np.int64)  # smaller, another dtype: the same memory
    assert np.shares_memory(a, b)
    c = scratch.scratch("t.b", (10, 3), np.float32)  # another name: its own
    assert not np.shares_memory(a, c)
    big = scratch.scratch("t.a", (2**19,), np.float32)  # 2 MiB: grown, fresh memory
    assert not np.shares_memory(a, big)
    assert np.shares_memory(big, scratch.scratch("t.a", (7,), np.float64))
    assert scratch.kept() == 2 * 2**20 + 2**20  # whole MiB per name


def test_a_thread_keeps_at_most_the_limit(monkeypatch):
    monkeypatch.setattr(scratch, "LIMIT", 3 * 2**20)
    first = scratch.scratch("t.a", (2**20,), np.uint8)
    assert scratch.kept() == 2**20
    huge = scratch.scratch("t.b", (3 * 2**20,), np.uint8)  # would pass the limit: not kept
    assert scratch.kept() == 2**20
    assert not np.shares_memory(huge, scratch.scratch("t.b", (3 * 2**20,), np.uint8))
    assert np.shares_memory(first, scratch.scratch("t.a", (5,), np.uint8))


def test_threads_have_their_own_and_release_frees():
    mine = scratch.scratch("t.a", (100,), np.float32)
    theirs = []
    worker = threading.Thread(
        target=lambda: theirs.append(scratch.scratch("t.a", (100,), np.float32))
    )
    worker.start()
    worker.join()
    assert not np.shares_memory(mine, theirs[0])
    scratch.release()
    assert scratch.kept() == 0
    assert not np.shares_memory(mine, scratch.scratch("t.a", (100,), np.float32))


def test_results_do_not_live_in_scratch():
    """Marginals and lattices outlive their call: the next call must not overwrite them."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), np.uint8)
    probs = rng.dirichlet(np.ones(4), (30, 40)).transpose(2, 0, 1).astype(np.float32)
    first = dense_crf(image, probs)
    kept = first.copy()
    kernels = [gaussian_kernel(30, 40, 3.0), bilateral_kernel(image, 20.0, 10.0)]
    lattice = kernels[1]
    arrays = [a.copy() for a in (lattice.vertex, lattice.weight, lattice.neighbours)]
    q = mean_field(unary_scores(probs).reshape(4, -1), kernels, [3.0, 5.0], 5)
    q_kept = q.copy()
    other = rng.integers(0, 256, (30, 40, 3), np.uint8)
    dense_crf(other, probs[::-1].copy())  # the same shapes: the same scratch names and sizes
    bilateral_kernel(other, 20.0, 10.0)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(q, q_kept)
    for a, b in zip((lattice.vertex, lattice.weight, lattice.neighbours), arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    assert scratch.kept() > 0


def test_the_package_readme_states_the_limit():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"at most {scratch.LIMIT // 2**20} MiB" in readme
