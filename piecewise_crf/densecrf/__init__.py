"""Dense (fully connected) CRF refinement agreeing with pydensecrf: numba on CPU, PyTorch on
other devices. ``dense_crf`` does it all; its building blocks are public: kernels built once
(``gaussian_kernel``, ``bilateral_kernel``) and mean-field on any list of them, from
``unary_scores(probs)``. With torch tensors that require grad they are differentiable
(``differentiable.py``), and ``DenseCRFLayer`` is the trainable layer (CRF-as-RNN)."""

from piecewise_crf.densecrf.dense import (
    PROB_FLOOR,
    bilateral_kernel,
    dense_crf,
    gaussian_kernel,
    mean_field,
    unary_scores,
)
from piecewise_crf.densecrf.kernels import BACKENDS, Kernel
from piecewise_crf.densecrf.layer import DenseCRFLayer

__all__ = [
    "BACKENDS",
    "DenseCRFLayer",
    "PROB_FLOOR",
    "Kernel",
    "bilateral_kernel",
    "dense_crf",
    "gaussian_kernel",
    "mean_field",
    "unary_scores",
]
