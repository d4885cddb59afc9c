"""Mean-field on dense-CRF kernels for both front ends: the terms' plan (one point order for all
kernels, the stackable ones stacked), the softmax and the iterations. This module is numpy's
(numba lattices); ``meanfield_torch.py`` holds the torch plan.

Sign convention (pydensecrf's). A term's compat is an *energy* (lower = more likely): a number
w is Potts, ``mu(Q) = -w Q`` (w > 0 rewards equal labels at similar points), a (K,) vector v
``mu(Q) = diag(v) Q``, a (K, K) symmetric matrix M ``mu(Q) = M Q``. ``logp`` is minus the unary
energy (a score, e.g. log p), and one step is ``Q = softmax(logp - sum_k mu_k(K_k Q))``.

``dense_crf``'s mean-field (Potts terms, or one matrix for all) runs fused in
``meanfield_numba.py``; the plans and ``iterate`` serve the pydensecrf drop-in, whose terms each
have their own compat and normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Number
from typing import Literal

import numpy as np

from permutocrf import meanfield_numba
from permutocrf.kernels import Kernel
from permutocrf.lattice_numba import CpuLattice


@dataclass(frozen=True)
class Term:
    """One pairwise energy: its lattice, compat (see the module docstring) and where the
    filter is normalised by ``1 / (K 1)``: "before", "after", or None (nowhere, or by the
    lattice itself: symmetric normalisation is folded into it)."""

    lattice: Kernel
    compat: float | np.ndarray  # Potts weight, (K,) diagonal or (K, K) symmetric matrix
    scale: Literal["before", "after"] | None = None


def is_potts(compat) -> bool:
    """Whether a term's compat is a Potts weight (a number) rather than a vector or matrix."""
    return isinstance(compat, Number)


def scales(lattice, scale: str | None, ones) -> tuple:
    """A term's (P, 1) normalisation (before, after) its filter, None where it has none:
    pydensecrf's DenseKernel::initLattice, ``1 / (K 1 + 1e-20)``. (Its NO_NORMALIZATION
    computes a mean norm too, but filter() never applies it.) ``ones`` (P, 1), numpy or torch
    as the lattice."""
    if scale is None:
        return None, None
    norm = 1 / (lattice.filter(ones) + 1e-20)
    return (norm, None) if scale == "before" else (None, norm)


def softmax_rows(x: np.ndarray) -> np.ndarray:
    """Softmax over the K labels of (P, K) scores, shifted by each row's maximum (pydensecrf's
    expAndNormalize)."""
    e = np.exp(x - x.max(1, keepdims=True))
    e /= e.sum(1, keepdims=True)
    return e


@dataclass(frozen=True)
class NumbaPlan:
    """Terms on numba lattices, which work in point order (``gather`` and ``scatter`` move
    nothing).

    ``fused`` (lattices, weights, compat matrix or None for Potts) is how
    ``meanfield_numba.mean_field`` runs them all in one pass over the points per step
    (``_fusion``), None where it cannot; ``filters`` (lattice, normalisation before, after,
    compat) filter them one by one, for those cases and for single steps and free energies.
    """

    filters: list[tuple[CpuLattice, np.ndarray | None, np.ndarray | None, float | np.ndarray]]
    fused: tuple[list[CpuLattice], list[float], np.ndarray | None] | None

    def gather(self, t: np.ndarray) -> np.ndarray:
        return t

    def scatter(self, t: np.ndarray) -> np.ndarray:
        return t

    def softmax(self, x: np.ndarray, *, per_row: bool = True) -> np.ndarray:
        """Softmax over the labels of (P, K) scores, as ``TorchPlan.softmax``."""
        return softmax_rows(x)

    def pairwise(self, values: np.ndarray) -> np.ndarray:
        """``sum_k mu_k(K_k Q)`` for marginals (P, K), as ``TorchPlan.pairwise``."""
        energy = np.zeros_like(values)
        for lattice, before, after, compat in self.filters:
            potts = is_potts(compat)
            x = values if before is None else values * before
            filtered = lattice.filter(x, -compat if potts else 1.0)  # Potts: -w K Q
            if after is not None:
                filtered *= after
            if potts:
                energy += filtered
            elif compat.ndim == 1:
                energy += filtered * compat
            else:
                energy += filtered @ compat  # compat is symmetric: (M Q)^T = Q^T M
        return energy

    def scores(self, logp: np.ndarray, q: np.ndarray) -> np.ndarray:
        """``logp - sum_k mu_k(K_k Q)``, the next step's softmax input."""
        return logp - self.pairwise(q)

    def mean_field(self, scores: np.ndarray, iterations: int) -> np.ndarray:
        """Q (P, K) after ``iterations`` fused steps from ``softmax(scores)``: ``scores`` (K, P)
        C-contiguous is minus the unary energy."""
        lattices, weights, mu = self.fused
        q = np.empty(scores.shape[::-1], scores.dtype)
        # Written as its transpose, (K, P) column-major: pydensecrf's result layout without a
        # copy (1 ms of 37 on a CamVid frame); numba compiles this layout once more (2.7 s).
        meanfield_numba.mean_field(scores, lattices, weights, iterations, mu, out=q.T)
        return q


def _fusion(terms: list[Term]) -> tuple[list[CpuLattice], list[float], np.ndarray | None] | None:
    """How ``meanfield_numba.mean_field`` runs these terms fused: their lattices, weights and
    one compat matrix (None: Potts, each term's weight its own). None where it cannot: no terms, a
    normalisation before or after the filter (not folded into the lattice), or compats that
    differ beyond Potts weights."""
    if not terms or any(t.scale is not None for t in terms):
        return None
    lattices = [t.lattice for t in terms]
    potts = [is_potts(t.compat) for t in terms]
    if all(potts):  # mu(Q) = -w Q: the message enters with a plus sign
        return lattices, [t.compat for t in terms], None
    if any(potts):
        return None
    mus = [np.diag(t.compat) if t.compat.ndim == 1 else t.compat for t in terms]
    if not all(np.array_equal(mu, mus[0]) for mu in mus[1:]):
        return None
    return lattices, [1.0] * len(terms), mus[0]


def numba_plan(terms: list[Term], num: int) -> NumbaPlan:
    """The plan of ``terms`` on numba lattices over ``num`` points."""
    ones = np.ones((num, 1), np.float32)
    filters = [(t.lattice, *scales(t.lattice, t.scale, ones), t.compat) for t in terms]
    return NumbaPlan(filters, _fusion(terms))


def iterate(plan, logp, iterations: int, *, per_row: bool):
    """Q (P, K) after ``iterations`` mean-field steps from ``softmax(logp)``, ``logp`` (P, K) in
    the plan's order (numpy for a ``NumbaPlan``, torch for a ``TorchPlan``), filtering the terms
    one by one or stacked; ``per_row`` as ``meanfield_torch.softmax_rows``."""
    q = plan.softmax(logp, per_row=per_row)
    for _ in range(iterations):
        q = plan.softmax(plan.scores(logp, q), per_row=per_row)
    return q
