"""The dense CRF under the names this package has always given it: the permutocrf distribution
(``permutocrf/`` in this repository, numpy + numba, torch optional), whose documentation says
the rest. Library code here imports ``permutocrf`` itself."""

from permutocrf import (
    BACKENDS,
    PROB_FLOOR,
    Kernel,
    bilateral_kernel,
    dense_crf,
    gaussian_kernel,
    mean_field,
    unary_scores,
)
from permutocrf.layer import DenseCRFLayer

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
