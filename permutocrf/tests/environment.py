"""What this test environment has: torch or not (the package must work without it), a GPU."""

from __future__ import annotations

import importlib.util

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch (pip install torch)")
needs_cuda = pytest.mark.skipif(
    not (HAS_TORCH and __import__("torch").cuda.is_available()), reason="needs a CUDA GPU"
)
BACKENDS = ("numba", "torch") if HAS_TORCH else ("numba",)
"""The backends this environment can test."""
