"""The lattice arithmetic both implementations share (numpy only): the elevation's scale and
the checks that features fit the lattice's float and integer arithmetic."""

from __future__ import annotations

import math

import numpy as np


def elevation_scale(d: int) -> np.ndarray:
    """Per-feature scale (d,) float64 of the elevation onto the hyperplane sum = 0, chosen so
    that the blur has std 1 in feature space (pydensecrf's ``scale_factor``); cast it to the
    features' dtype."""
    # pydensecrf keeps sqrt(2/3) (d + 1) in a C float and multiplies in double: computed any
    # other way, the scale is 1 ulp off for d = 3 and 5, and points on a simplex boundary land
    # in the neighbouring simplex (3 of 36 random 3-D volume cases lost a voxel's label).
    inv_std = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))
    return np.array([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std for i in range(d)])  # its order


TOO_LARGE = (
    "dense CRF lattice too large to hash: a standard deviation is tiny compared with the image "
    "size or colour range; use larger stds or split the batch"
)


def check_features(extent: list[float], eps: float) -> None:
    """Refuse features whose lattice float arithmetic (machine epsilon ``eps``) cannot resolve:
    non-finite ones, or ones whose elevated coordinates, at most (d+1) sum_k extent_k scale_k
    for ``extent`` (d,) the largest |f_k|, leave under 4 ulps for the lattice's unit spacing."""
    scale = elevation_scale(len(extent)).tolist()
    bound = (len(extent) + 1) * sum(e * s for e, s in zip(extent, scale, strict=True))
    if not math.isfinite(bound):
        raise ValueError("dense CRF features must be finite")
    if bound >= 0.25 / eps:
        raise ValueError(TOO_LARGE)


def fits(cells: int, groups: int) -> bool:
    """Whether mixed-radix vertex codes (``cells`` per image, ``groups`` images) fit in int64."""
    return cells * groups < 2**62
