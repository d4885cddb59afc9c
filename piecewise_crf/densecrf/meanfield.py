"""Mean-field on dense-CRF kernels for both front ends: the terms' plan (one point order for all
kernels, the stackable ones stacked), the softmax and the iterations.

Sign convention (pydensecrf's). A term's compat is an *energy* (lower = more likely): a number
w is Potts, ``mu(Q) = -w Q`` (w > 0 rewards equal labels at similar points), a (K,) vector v
``mu(Q) = diag(v) Q``, a (K, K) symmetric matrix M ``mu(Q) = M Q``. ``logp`` is minus the unary
energy (a score, e.g. log p), and one step is ``Q = softmax(logp - sum_k mu_k(K_k Q))``.

``run`` is ``dense_crf``'s mean-field: Potts terms, or one matrix for all, fused in numba or
stacked in torch. ``torch_plan`` / ``numba_plan`` and ``iterate`` serve the pydensecrf drop-in,
whose terms each have their own compat and normalisation (and ``run``'s torch path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from piecewise_crf.densecrf import meanfield_numba
from piecewise_crf.densecrf.kernels import Kernel
from piecewise_crf.densecrf.lattice_numba import CpuLattice
from piecewise_crf.densecrf.lattice_torch import Lattice, Stacked, inverse_permutation, stack


@dataclass(frozen=True)
class Term:
    """One pairwise energy: its lattice, compat (see the module docstring) and where the
    filter is normalised by ``1 / (K 1)``: "before", "after", or None (nowhere, or by the
    lattice itself: symmetric normalisation is folded into it)."""

    lattice: Kernel
    compat: float | np.ndarray  # Potts weight, (K,) diagonal or (K, K) symmetric matrix
    scale: Literal["before", "after"] | None = None


def softmax_rows(x: torch.Tensor, *, per_row: bool) -> torch.Tensor:
    """Softmax over the K labels of (P, K) scores.

    ``per_row``: shifted by each row's maximum, pydensecrf's expAndNormalize (the drop-in's, on
    every device); torch.softmax over the short last axis measured 11 ms for a CamVid frame
    (172800 x 11, CPU), this 2 ms. Otherwise (``dense_crf``'s) torch.softmax off the CPU; on CPU
    ``torch.softmax`` measured 2x slower than shifting by the global maximum, one exp and a
    matrix-vector row sum. That shift is safe unless some row lies ~87 below the global maximum
    (its sum underflows in float32); then torch.softmax is used.
    """
    if per_row:
        e = (x - x.amax(1, keepdim=True)).exp_()
        return e.div_(e.sum(1, keepdim=True))
    if x.device.type != "cpu":
        return torch.softmax(x, 1)
    e = (x - x.max()).exp_()
    sums = e @ x.new_ones(x.shape[1], 1)
    if sums.min() < 1e-30:
        return torch.softmax(x, 1)
    return e.div_(sums)


def run(
    engine: str,
    logp: torch.Tensor,
    kernels: list[Kernel],
    weights: list[float],
    iterations: int,
    mu: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dense_crf``'s mean-field on ``engine``'s kernels from ``Q = softmax(logp)``: ``logp``
    (K, P), kernel k scaled by ``weights[k]``, Potts (``mu`` None) or the symmetric (K, K)
    ``mu`` for all. Returns Q (K, P), written to ``out`` if given (which may be ``logp``)."""
    if engine == "numba":
        q = meanfield_numba.mean_field(
            logp.detach().contiguous().numpy(),
            kernels,
            weights,
            iterations,
            None if mu is None else mu.numpy(),
            out=None if out is None else out.numpy(),
        )
        return torch.from_numpy(q)
    terms = [Term(kernel, weight) for kernel, weight in zip(kernels, weights, strict=True)]
    plan = torch_plan(terms, logp.shape[1], logp.device, shared=mu)
    q = plan.scatter(iterate(plan, plan.gather(logp.T), iterations, per_row=False)).T
    return q if out is None else out.copy_(q)


def _potts(compat) -> bool:
    return not isinstance(compat, np.ndarray | torch.Tensor)


def _scales(lattice, scale: str | None, ones) -> tuple:
    """A term's (P, 1) normalisation (before, after) its filter, None where it has none:
    pydensecrf's DenseKernel::initLattice, ``1 / (K 1 + 1e-20)``. (Its NO_NORMALIZATION
    computes a mean norm too, but filter() never applies it.) ``ones`` (P, 1), numpy or torch
    as the lattice."""
    if scale is None:
        return None, None
    norm = 1 / (lattice.filter(ones) + 1e-20)
    return (norm, None) if scale == "before" else (None, norm)


@dataclass(frozen=True)
class TorchPlan:
    """Terms on torch lattices, re-expressed in one point order, ready for mean-field steps.

    Potts terms normalised nowhere or in their lattice are stacked and filtered together (one
    splat and one slice product for all), their sum ``sum_k w_k K_k Q`` entering as Potts or,
    given ``shared``, through that one compat matrix; the ``others`` are filtered one by one,
    with their (P, 1) normalisation before or after.
    """

    order: torch.Tensor  # sorted position -> point
    inverse: torch.Tensor  # point -> sorted position
    stacked: Stacked | None
    weights: list[float]
    shared: torch.Tensor | None
    others: list[tuple[Lattice, torch.Tensor | None, torch.Tensor | None, float | torch.Tensor]]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Rows in point order -> rows in the plan's order."""
        return t.index_select(0, self.order)

    def scatter(self, t: torch.Tensor) -> torch.Tensor:
        """Rows in the plan's order -> rows in point order (a gather: a scatter measured
        slower)."""
        return t.index_select(0, self.inverse)

    def pairwise(self, q: torch.Tensor) -> torch.Tensor:
        """``sum_k mu_k(K_k Q)`` for marginals q (P, K) in the plan's order (pydensecrf's
        ``PairwisePotential::apply`` summed over the terms)."""
        if self.stacked is None:
            energy = torch.zeros_like(q)
        elif self.shared is None:
            energy = self.stacked.filter(q, self.weights).neg_()  # Potts: -w K Q
        else:
            energy = self.stacked.filter(q, self.weights) @ self.shared
        for lattice, before, after, compat in self.others:
            filtered = lattice.filter(q if before is None else q * before)
            if after is not None:
                filtered.mul_(after)
            if _potts(compat):
                energy.sub_(filtered, alpha=compat)
            elif compat.dim() == 1:
                energy.addcmul_(filtered, compat)
            else:
                energy.addmm_(filtered, compat)  # compat is symmetric: (M Q)^T = Q^T M
        return energy

    def scores(self, logp: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``logp - sum_k mu_k(K_k Q)``, the next step's softmax input."""
        if self.stacked is not None and self.shared is None and not self.others:
            # Potts: -w [l != l'] and the equivalent -w ... + w [l == l'] differ by a per-pixel
            # constant, which softmax ignores, so the message enters with a plus sign.
            return self.stacked.filter(q, self.weights).add_(logp)
        return logp - self.pairwise(q)


def torch_plan(
    terms: list[Term], num: int, device: torch.device, shared: torch.Tensor | None = None
) -> TorchPlan:
    """The plan of ``terms`` on torch lattices over ``num`` points; ``shared`` (K, K): the one
    compat of the stacked terms, whose numbers are then weights (None: Potts)."""
    if not terms:
        order = torch.arange(num, device=device)
        return TorchPlan(order, order, None, [], shared, [])
    # One point order for all kernels: the order of the lattice with the most corners (the
    # bilateral one); the others are re-expressed in it, so nothing is permuted per iteration,
    # and all stacked kernels filter together (one splat and one slice product per iteration).
    home = max((t.lattice for t in terms), key=lambda lat: lat.num_corners)
    ones = torch.ones(num, 1, device=device)
    stacked, weights, others = [], [], []
    for term in terms:
        lat = term.lattice if term.lattice is home else term.lattice.reordered(home.order)
        if _potts(term.compat) and term.scale is None:
            stacked.append(lat)
            weights.append(term.compat)
            continue
        mu = term.compat if _potts(term.compat) else torch.as_tensor(term.compat, device=device)
        others.append((lat, *_scales(lat, term.scale, ones), mu))
    return TorchPlan(
        home.order,
        inverse_permutation(home.order),
        stack(stacked) if stacked else None,
        weights,
        shared,
        others,
    )


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

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def scatter(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def pairwise(self, q: torch.Tensor) -> torch.Tensor:
        """``sum_k mu_k(K_k Q)`` for marginals q (P, K), as ``TorchPlan.pairwise``."""
        values = q.numpy()
        energy = np.zeros_like(values)
        for lattice, before, after, compat in self.filters:
            potts = _potts(compat)
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
        return torch.from_numpy(energy)

    def scores(self, logp: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``logp - sum_k mu_k(K_k Q)``, the next step's softmax input."""
        return logp - self.pairwise(q)

    def mean_field(self, scores: np.ndarray, iterations: int) -> torch.Tensor:
        """Q (P, K) after ``iterations`` fused steps from ``softmax(scores)``: ``scores`` (K, P)
        C-contiguous is minus the unary energy."""
        lattices, weights, mu = self.fused
        q = np.empty(scores.shape[::-1], scores.dtype)
        # Written as its transpose, (K, P) column-major: pydensecrf's result layout without a
        # copy (1 ms of 37 on a CamVid frame); numba compiles this layout once more (2.7 s).
        meanfield_numba.mean_field(scores, lattices, weights, iterations, mu, out=q.T)
        return torch.from_numpy(q)


def _fusion(terms: list[Term]) -> tuple[list[CpuLattice], list[float], np.ndarray | None] | None:
    """How ``meanfield_numba.mean_field`` runs these terms fused: their lattices, weights and
    one compat matrix (None: Potts, each term's weight its own). None where it cannot: no terms, a
    normalisation before or after the filter (not folded into the lattice), or compats that
    differ beyond Potts weights."""
    if not terms or any(t.scale is not None for t in terms):
        return None
    lattices = [t.lattice for t in terms]
    potts = [_potts(t.compat) for t in terms]
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
    filters = [(t.lattice, *_scales(t.lattice, t.scale, ones), t.compat) for t in terms]
    return NumbaPlan(filters, _fusion(terms))


Plan = TorchPlan | NumbaPlan


def iterate(plan: Plan, logp: torch.Tensor, iterations: int, *, per_row: bool) -> torch.Tensor:
    """Q (P, K) after ``iterations`` mean-field steps from ``softmax(logp)``, ``logp`` (P, K) in
    the plan's order, filtering the terms one by one or stacked; ``per_row`` as
    ``softmax_rows``."""
    q = softmax_rows(logp, per_row=per_row)
    for _ in range(iterations):
        q = softmax_rows(plan.scores(logp, q), per_row=per_row)
    return q
