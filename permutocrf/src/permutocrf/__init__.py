"""permutocrf: the fully connected CRF (Kraehenbuehl and Koltun 2011) on a permutohedral lattice,
agreeing with pydensecrf; numpy and numba on CPU, PyTorch optional (other devices, tensors,
gradients).

Two ways in:
- the pydensecrf drop-in: ``import permutocrf as dcrf`` for ``import pydensecrf.densecrf as
  dcrf`` (``DenseCRF``, ``DenseCRF2D``, the constants: ``compat.py``) and ``permutocrf.utils``
  for ``pydensecrf.utils``;
- this package's own API: ``dense_crf`` does it all; its building blocks are kernels built once
  (``gaussian_kernel``, ``bilateral_kernel``) and mean-field on any list of them, from
  ``unary_scores(probs)``. With torch tensors that require grad they are differentiable
  (``differentiable.py``), and ``DenseCRFLayer`` (needs torch) is the trainable layer
  (CRF-as-RNN).
"""

from __future__ import annotations

from typing import Any

from permutocrf.compat import *  # noqa: F403 (the drop-in's names; compat.__all__)
from permutocrf.compat import __all__ as _DROP_IN
from permutocrf.dense import (
    PROB_FLOOR,
    bilateral_kernel,
    dense_crf,
    gaussian_kernel,
    mean_field,
    unary_scores,
)
from permutocrf.kernels import BACKENDS, Kernel

__version__ = "0.1.0"  # the one place (pyproject.toml reads it)

__all__ = [
    *_DROP_IN,
    "BACKENDS",
    "DenseCRFLayer",  # noqa: F405 (module __getattr__)
    "PROB_FLOOR",
    "Kernel",
    "__version__",
    "bilateral_kernel",
    "dense_crf",
    "gaussian_kernel",
    "mean_field",
    "unary_scores",
]


def __getattr__(name: str) -> Any:
    """``DenseCRFLayer`` on first use: it is a torch module, and torch is optional."""
    if name == "DenseCRFLayer":
        from permutocrf import torch_support

        torch_support.require("permutocrf.DenseCRFLayer")
        from permutocrf.layer import DenseCRFLayer

        return DenseCRFLayer
    raise AttributeError(f"module 'permutocrf' has no attribute {name!r}")
