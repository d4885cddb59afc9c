"""pydensecrf.utils: unary energies from labels or softmax outputs, and pairwise features.

Re-exported by ``permutocrf.compat`` (which holds pydensecrf.densecrf), so that
``import permutocrf.compat as dcrf`` has every public name of both. Energies are
pydensecrf's: ``-log`` probabilities, lower = more likely.
"""

from __future__ import annotations

import logging
from numbers import Number

import numpy as np

__all__ = [
    "compute_unary",
    "create_pairwise_bilateral",
    "create_pairwise_gaussian",
    "softmax_to_unary",
    "unary_from_labels",
    "unary_from_softmax",
]


class _RangeError(ValueError, AssertionError):
    """pydensecrf.utils asserts its ranges (AssertionError); here that is also a ValueError."""


def unary_from_labels(labels, n_labels, gt_prob, zero_unsure=True):
    """Unary energy (n_labels, npoints) float32 from a label map: probability ``gt_prob`` for the
    given label, the rest shared by the others; with ``zero_unsure`` label 0 means "unknown"
    (uniform) and labels are 1..n_labels."""
    if not 0 < gt_prob < 1:
        raise _RangeError(f"gt_prob must be in (0, 1), got {gt_prob!r}")
    labels = labels.flatten()
    n_energy = -np.log((1.0 - gt_prob) / (n_labels - 1))
    p_energy = -np.log(gt_prob)
    # Order matters: the given labels overwrite the rest, then the unknown ones overwrite those.
    U = np.full((n_labels, len(labels)), n_energy, dtype="float32")
    U[labels - 1 if zero_unsure else labels, np.arange(U.shape[1])] = p_energy
    if zero_unsure:
        U[:, labels == 0] = -np.log(1.0 / n_labels)
    return U


def compute_unary(labels, M, GT_PROB=0.5):
    """Deprecated, use `unary_from_labels` instead."""
    logging.warning("pydensecrf.compute_unary is deprecated, use unary_from_labels instead.")
    return unary_from_labels(labels, M, GT_PROB)


def unary_from_softmax(sm, scale=None, clip=1e-5):
    """Unary energy (n_classes, npoints) float32 ``-log(sm)`` from softmax outputs ``sm``
    (classes first); ``scale`` mixes in the uniform distribution (sm 1 -> probability scale),
    ``clip`` is the smallest probability kept."""
    num_cls = sm.shape[0]
    if scale is not None:
        if not 0 < scale <= 1:
            raise _RangeError(f"scale must be in (0, 1], got {scale!r}")
        uniform = np.ones(sm.shape) / num_cls
        sm = scale * sm + (1 - scale) * uniform
    if clip is not None:
        sm = np.clip(sm, clip, 1.0)
    return -np.log(sm).reshape([num_cls, -1]).astype(np.float32)


def softmax_to_unary(sm, GT_PROB=1):
    """Deprecated, use `unary_from_softmax` instead."""
    logging.warning("pydensecrf.softmax_to_unary is deprecated, use unary_from_softmax instead.")
    return unary_from_softmax(sm, None if GT_PROB == 1 else GT_PROB, clip=None)


def _scaled_mesh(sdims, shape) -> np.ndarray:
    """Index coordinates (len(shape), *shape) float32 of an array of ``shape``, coordinate i
    divided by ``sdims[i]``."""
    mesh = np.array(np.meshgrid(*[range(s) for s in shape], indexing="ij"), dtype=np.float32)
    for i, s in enumerate(sdims):
        mesh[i] /= s
    return mesh


def create_pairwise_gaussian(sdims, shape):
    """Position features (len(sdims), prod(shape)) float32 of an array of any ``shape``: index
    coordinate i divided by ``sdims[i]`` (``DenseCRF2D.addPairwiseGaussian``'s in 2-D, (y, x))."""
    return _scaled_mesh(sdims, shape).reshape([len(sdims), -1])


def create_pairwise_bilateral(sdims, schan, img, chdim=-1):
    """Position + channel features (ndim + channels, npoints) float32 of ``img``: positions /
    ``sdims``, channels / ``schan`` (a number or one per channel); ``chdim`` is the channel axis,
    -1 for none."""
    if chdim == -1:
        im_feat = img[np.newaxis].astype(np.float32)
    else:
        im_feat = np.rollaxis(img, chdim).astype(np.float32)
    if isinstance(schan, Number):
        im_feat /= schan
    else:
        for i, s in enumerate(schan):
            im_feat[i] /= s
    feats = np.concatenate([_scaled_mesh(sdims, im_feat.shape[1:]), im_feat])
    return feats.reshape([feats.shape[0], -1])
