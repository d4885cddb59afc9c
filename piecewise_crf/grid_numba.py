"""Grid mean-field on CPU, compiled with numba: `crf.grid_mean_field` without autograd.

The torch loop multiplies every offset's scores z (B, K, K, h', w') by the partner's marginals
and sums, two broadcast products per offset and iteration, each writing a temporary as large as
z. Here one pass over z per iteration makes both messages of every edge (to p and to q) and
adds them into per-thread maps, so each iteration reads the scores once and writes nothing of
their size. Scores come packed in span order (`PairwiseNet.span_scores`): (B, K * K * S), a
(K * K, n) block for every offset's run of p (`relations.offset_span`), its non-edges scored 0,
so an offset's messages for one label pair are one loop over its run, q a fixed shift from p
(measured on CamVid's 34x45 grid, 337 offsets: 3x faster than row by row over the p region,
whose rows of 30-45 nodes left most of the time to loop overhead and scalar remainders).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np
import torch
from torch import Tensor

from permutocrf.jit import entry_point, kernel, threads
from piecewise_crf.relations import Offset, offset_span


def offset_table(offsets: list[Offset], h: int, w: int) -> np.ndarray:
    """Rows (first, shift, start, length) of the offsets in span order: the `offset_span` run
    of p and where its run starts in the packed runs (its block starts at K * K * start)."""
    table = np.zeros((len(offsets), 4), np.int64)
    start = 0
    for row, (dy, dx) in enumerate(offsets):
        first, shift, length = offset_span(h, w, dy, dx)
        table[row] = first, shift, start, length
        start += length
    return table


Block = tuple[tuple[Offset, ...], Tensor]  # offsets and their scores (B, K * K * S)


def applies(
    unary: Tensor, blocks: Sequence[Block], weights: Sequence[float | Tensor] | None
) -> bool:
    """Whether `grid_mean_field` can run these scores: float32 on CPU, packed in blocks (in
    span order: `GridScores.spans`), with nothing to differentiate and no tracer recording."""
    tensors = [unary, *(flat for _, flat in blocks)]
    tensors += [w for w in weights or () if isinstance(w, Tensor)]
    return (
        bool(blocks)
        and not torch.jit.is_tracing()
        and all(t.device.type == "cpu" for t in tensors)
        and all(flat.dtype == torch.float32 for _, flat in blocks)
        and unary.dtype == torch.float32
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )


def grid_mean_field(
    unary: Tensor,
    blocks: Sequence[Block],
    iterations: int,
    weights: Sequence[float | Tensor] | None,
    centred: bool,
    tolerance: float = 0.0,
    interaction: bool = False,
) -> Tensor:
    """`crf.grid_mean_field` of unary scores (B, K, h, w) and the pairwise `blocks`, `weights`
    one per offset (None: 1), compiled; where `applies`. `tolerance` as there. `interaction`:
    the blocks hold (K - 1)^2 rows per edge, the scores' interaction part
    (`GridScores.interaction`), and mean-field runs centred."""
    h, w = unary.shape[-2:]
    count = sum(len(offsets) for offsets, _ in blocks)
    factors = (
        np.ones(count, np.float32)
        if weights is None
        else np.array([float(x) for x in weights], np.float32)
    )
    chunks, first = [], 0
    for offsets, flat in blocks:
        table = offset_table(list(offsets), h, w)
        last = first + len(offsets)
        chunks.append((flat.contiguous().numpy(), table, factors[first:last]))
        first = last
    q = mean_field(unary.contiguous().numpy(), chunks, iterations, centred, tolerance, interaction)
    return torch.from_numpy(q)


Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]  # packed scores, offset_table, weights


@entry_point
def mean_field(
    unary: np.ndarray,
    chunks: list[Chunk],
    iterations: int,
    centred: bool,
    tolerance: float,
    interaction: bool = False,
) -> np.ndarray:
    """Marginals (B, K, h, w) float32 from unary scores (B, K, h, w) and chunks of pairwise
    scores: packed in span order (B, R * S) (both C-contiguous float32), their `offset_table`
    and one weight per offset (float32); stops early once an update moves no marginal by more
    than `tolerance` (> 0). R = K * K, or (K - 1)^2 if `interaction`: z_c[i, j] for i, j < K - 1
    of centred scores, whose rows and columns sum to 0, so the message to p is
    sum_(j < K-1) z_c[i, j] (Q_q(j) - Q_q(K-1)) for i < K - 1 and minus their sum for K - 1
    (to q alike): the same products as K * K scores, on K - 1 marginal differences."""
    batch, k, h, w = unary.shape
    rows = k - 1 if interaction else k
    parts = np.zeros((threads(), batch, rows, h, w), np.float32)

    def messages(q: np.ndarray) -> np.ndarray:
        if interaction:
            q = np.ascontiguousarray(q[:, :-1] - q[:, -1:])
        total = np.zeros((batch, rows, h, w), np.float32)
        for packed, table, weights in chunks:
            total += _messages(packed, table, weights, q, parts)
        if interaction:
            total = np.concatenate([total, -total.sum(1, keepdims=True)], axis=1)
        return total

    start = unary
    if centred and not interaction:  # the row and column means: messages of uniform marginals
        start = unary - messages(np.full_like(unary, 1.0 / k))
    q = _softmax(unary)
    for _ in range(iterations):
        q, previous = _softmax(start + messages(q)), q
        if tolerance > 0 and np.abs(q - previous).max() <= tolerance:
            break
    return q


@kernel(parallel=True)
def _messages(z, table, weights, q, parts):  # pragma: no cover - compiled
    """sum over edges (p, q) of z_pq Q_q into p and z_pq^T Q_p into q; offsets round-robin over
    the threads, each into its own map of `parts`, summed at the end."""
    workers = parts.shape[0]
    for t in numba.prange(workers):
        parts[t] = 0.0
        for row in range(t, table.shape[0], workers):
            _offset_messages(z, table[row], weights[row], q, parts[t])
    return parts.sum(axis=0)


@kernel(fastmath={"contract"})
def _offset_messages(z, entry, weight, q, out):  # pragma: no cover - compiled
    """Both messages of one offset's edges, added into `out` (B, K, h, w)."""
    batch, k, h, w = q.shape
    first, shift, start, length = entry[0], entry[1], entry[2], entry[3]
    marginals, messages = q.reshape(batch, k, h * w), out.reshape(batch, k, h * w)
    for b in range(batch):
        for i in range(k):
            p_q, p_out = marginals[b, i, first : first + length], messages[b, i, first:]
            for j in range(k):
                column = (k * k * start) + (i * k + j) * length
                scores = z[b, column : column + length]
                q_q = marginals[b, j, first + shift : first + shift + length]
                q_out = messages[b, j, first + shift :]
                for x in range(length):  # two loops: each vectorises
                    p_out[x] += weight * scores[x] * q_q[x]
                for x in range(length):
                    q_out[x] += weight * scores[x] * p_q[x]


@kernel()
def _softmax(scores):  # pragma: no cover - compiled
    """Softmax over axis 1 of (B, K, h, w)."""
    batch, k, h, w = scores.shape
    out = np.empty_like(scores)
    for b in range(batch):
        for y in range(h):
            for x in range(w):
                top = scores[b, 0, y, x]
                for i in range(1, k):
                    top = max(top, scores[b, i, y, x])
                total = 0.0
                for i in range(k):
                    e = math.exp(scores[b, i, y, x] - top)
                    out[b, i, y, x] = e
                    total += e
                for i in range(k):
                    out[b, i, y, x] /= total
    return out
