"""Mean-field on torch lattices (any device): the softmax, the plan of the pydensecrf drop-in's
terms, and ``dense_crf``'s iterations. Sign convention and plans as ``meanfield.py``'s."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from permutocrf.kernels import Kernel
from permutocrf.lattice_torch import Lattice, Stacked, inverse_permutation, stack
from permutocrf.meanfield import Term, is_potts, iterate, scales


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
    logp: torch.Tensor,
    kernels: list[Kernel],
    weights: list[float],
    iterations: int,
    mu: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dense_crf``'s mean-field on torch kernels from ``Q = softmax(logp)``: ``logp``
    (K, P), kernel k scaled by ``weights[k]``, Potts (``mu`` None) or the symmetric (K, K)
    ``mu`` for all. Returns Q (K, P), written to ``out`` if given (which may be ``logp``)."""
    terms = [Term(kernel, weight) for kernel, weight in zip(kernels, weights, strict=True)]
    plan = torch_plan(terms, logp.shape[1], logp.device, shared=mu)
    q = plan.scatter(iterate(plan, plan.gather(logp.T), iterations, per_row=False)).T
    return q if out is None else out.copy_(q)


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

    def softmax(self, x: torch.Tensor, *, per_row: bool) -> torch.Tensor:
        return softmax_rows(x, per_row=per_row)

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
            if is_potts(compat):
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
        if is_potts(term.compat) and term.scale is None:
            stacked.append(lat)
            weights.append(term.compat)
            continue
        mu = term.compat if is_potts(term.compat) else torch.as_tensor(term.compat, device=device)
        others.append((lat, *scales(lat, term.scale, ones), mu))
    return TorchPlan(
        home.order,
        inverse_permutation(home.order),
        stack(stacked) if stacked else None,
        weights,
        shared,
        others,
    )
