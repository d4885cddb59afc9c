"""Mean-field through torch lattices with gradients (CRF-as-RNN, Zheng et al. 2015): the
marginals Q are differentiable with respect to the unary scores, the kernel weights w_k and the
compatibility mu.

A normalised lattice filter is linear, ``K = N S^T B S N`` (S the splat, whose transpose is the
slice; B the blur; N the symmetric normalisation), so its vector-Jacobian product is
``K^T g = N S^T B^T S N g``. B is not symmetric: it blurs the lattice axes one after another,
and on a lattice with missing vertices those passes do not commute (measured on a 5x6
bilateral lattice: K and K^T differ by up to 0.12, entries up to 1). ``B^T`` blurs the same
axes in reverse order (measured equal to K^T within 2e-16), so backward costs one filter per
kernel and step, as forward does.

Not differentiable: the kernels themselves (features and their stds, e.g. ``pos_xy_std``,
``bi_rgb_std``), which choose the lattice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from permutocrf.lattice_torch import Lattice, inverse_permutation


class _Filter(torch.autograd.Function):
    """``K v`` for (P, C) values in the lattice's order; backward ``K^T g`` by ``adjoint``."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, lattice: Lattice, adjoint: Lattice) -> torch.Tensor:
        ctx.adjoint = adjoint
        return lattice.filter(values)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.adjoint.filter(grad.contiguous()), None, None


def adjoint(lattice: Lattice) -> Lattice:
    """The lattice whose filter is ``lattice``'s transpose: the axes blurred in reverse."""
    return replace(lattice, neighbours=lattice.neighbours.flip(0))


def mean_field(
    scores: torch.Tensor,
    kernels: Sequence[Lattice],
    weights: torch.Tensor,
    compat: torch.Tensor | None,
    iterations: int,
) -> torch.Tensor:
    """Q (K, P) after ``iterations`` steps ``Q = softmax(scores - sum_k w_k mu(K_k Q))`` from
    ``softmax(scores)``, differentiable in ``scores`` (K, P), ``weights`` (n,) and ``compat``.

    ``compat`` is the symmetric (K, K) energy mu, shared by all kernels; None is Potts, whose
    message ``-w_k K_k Q`` enters with a plus sign (see ``meanfield.py``).
    """
    # One point order for all kernels, the largest lattice's, as meanfield.torch_plan.
    home = max(kernels, key=lambda lat: lat.num_corners)
    pairs = []
    for lat in kernels:
        lat = lat if lat is home else lat.reordered(home.order)
        pairs.append((lat, adjoint(lat)))
    logp = scores.T.index_select(0, home.order)
    q = torch.softmax(logp, 1)
    for _ in range(iterations):
        message = sum(
            w * _Filter.apply(q, lat, adj) for w, (lat, adj) in zip(weights, pairs, strict=True)
        )
        q = torch.softmax(logp + message if compat is None else logp - message @ compat, 1)
    return q.index_select(0, inverse_permutation(home.order)).T
