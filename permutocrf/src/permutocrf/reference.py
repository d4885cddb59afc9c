"""Exact O(N^2) dense CRF with explicit Gaussian kernel matrices, for tiny images in tests."""

from __future__ import annotations

import torch

from permutocrf.dense import PROB_FLOOR


def dense_crf_exact(
    image: torch.Tensor,
    probs: torch.Tensor,
    iterations: int = 5,
    pos_xy_std: float = 3.0,
    pos_weight: float = 3.0,
    bi_xy_std: float = 80.0,
    bi_rgb_std: float = 13.0,
    bi_weight: float = 10.0,
    compat: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean-field of :func:`~permutocrf.dense_crf` with exact kernels: Potts, or
    the symmetric (K, K) energy ``compat``. Differentiable in ``probs``, the weights and
    ``compat`` (tensors).

    ``image`` (H, W, 3) uint8, ``probs`` (K, H, W); computes in float64. Each kernel is
    ``k(i, j) = exp(-|f_i - f_j|^2 / 2)`` including j = i, normalised symmetrically by
    ``n_i = (sum_j k(i, j))^-1/2`` as pydensecrf does.
    """
    k, h, w = probs.shape
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    xy = torch.stack([x, y], -1).reshape(-1, 2)
    rgb = image.reshape(-1, 3).to(torch.float64)
    message_matrix = 0
    for f, weight in (
        (xy / pos_xy_std, pos_weight),
        (torch.cat([xy / bi_xy_std, rgb / bi_rgb_std], 1), bi_weight),
    ):
        kernel = torch.exp(-0.5 * torch.cdist(f, f).square())
        norm = kernel.sum(1).rsqrt()
        message_matrix = message_matrix + weight * norm[:, None] * kernel * norm[None, :]
    logp = probs.to(torch.float64).reshape(k, -1).T.clamp(min=PROB_FLOOR).log()
    q = torch.softmax(logp, 1)
    for _ in range(iterations):
        message = message_matrix @ q
        q = torch.softmax(logp + message if compat is None else logp - message @ compat, 1)
    return q.T.reshape(k, h, w)
