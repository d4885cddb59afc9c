"""Dense-CRF mean-field on numba lattices (``lattice_numba.py``), fused: all kernels at once.

One mean-field step is one pass over the points (slice the previous step's blurred vertex
values, add the unary, softmax, splat into the next step's vertices) plus a blur of the
vertices. The splat runs in parallel chunks of points as ``lattice_numba``'s (``_chunk_spans``);
a point's slice, softmax and splat are ``rows.py``'s vector operations (the softmax's float32
exponential a polynomial: libm's exp measured 3x slower per pass; float64 keeps libm's).
"""

from __future__ import annotations

import numba
import numpy as np

from permutocrf.jit import entry_point, kernel, threads
from permutocrf.lattice_numba import (
    _BLOCK,
    CpuLattice,
    _blur,
    _chunk_spans,
    _clear_chunk,
    _reduce,
    span_rows,
)
from permutocrf.rows import VECTOR_BYTES, slice_point, softmax_row, splat_rows
from permutocrf.scratch import scratch


@entry_point
def mean_field(
    logp: np.ndarray,
    lattices: list[CpuLattice],
    weights: list[float],
    iterations: int,
    mu: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Parallel mean-field from ``Q = softmax(logp)``, as ``dense.mean_field``: ``logp`` (K, P)
    C-contiguous is minus the unary energy, ``lattices`` normalised, ``mu`` (K, K) symmetric or
    None (Potts). Returns Q (K, P), in ``out`` if given, which may be ``logp`` itself (each
    point's scores are read before its marginals are written)."""
    dtype, k = logp.dtype, logp.shape[0]
    potts = mu is None
    mu = np.zeros((1, 1), dtype) if potts else np.ascontiguousarray(mu, dtype=dtype)
    vertex = tuple(lat.vertex for lat in lattices)
    weight = tuple(lat.weight.astype(dtype, copy=False) for lat in lattices)
    spans = tuple(_chunk_spans(lat.vertex, threads(), lat.num_vertices) for lat in lattices)
    scale = np.array([w * lat.alpha for w, lat in zip(weights, lattices, strict=True)], dtype)
    # Two arrays per kernel take turns: the pass slices one and splats into the other, which
    # the blur then passes between them (``scratch``: fresh pages cost this VM 20-25% of a call).
    current, target = (
        tuple(
            scratch(f"mean_field.{side}.{j}", (span_rows(span, lat.num_vertices), k), dtype)
            for j, (span, lat) in enumerate(zip(spans, lattices, strict=True))
        )
        for side in ("current", "target")
    )
    q = np.empty_like(logp) if out is None else out
    odd = [lat.neighbours.shape[0] % 2 == 1 for lat in lattices]  # blur axes: d + 1
    for step in range(iterations + 1):
        last = step == iterations
        args = (vertex, weight, current, target, spans, scale, step == 0, last, potts, mu)
        _point_pass(logp, *args, q)
        if last:
            break
        for j, lat in enumerate(lattices):
            _reduce(target[j], spans[j])
            _blur(target[j], current[j], lat.neighbours)
        # An odd blur left the result in ``current``: the splat rows stay; else they swap.
        pairs = [(c, t) if o else (t, c) for c, t, o in zip(current, target, odd, strict=True)]
        current, target = (tuple(side) for side in zip(*pairs, strict=True))
    return q


@kernel(parallel=True)
def _point_pass(
    logp, vertex, weight, values, rows, spans, scale, first, last, potts, mu, q
):  # pragma: no cover
    """One pass over the points of ``logp`` (K, P): ``Q_i = softmax(logp_i + message_i)``, the
    message sliced from ``values`` (skipped when ``first``), minus ``message @ mu`` unless
    ``potts``; then ``scale[kernel] Q`` is splatted into ``rows`` (chunk c as
    ``spans[kernel][c]``, ``lattice_numba._chunk_spans``), or ``Q`` written to ``q`` (K, P)
    when ``last``."""
    num, chunks = logp.shape[1], spans[0].shape[0]
    for c in numba.prange(chunks):
        lo, hi = c * num // chunks, (c + 1) * num // chunks
        args = (vertex, weight, values, rows, spans, scale, first, last, potts, mu, q)
        _pass_chunk(logp, c, lo, hi, *args)


@kernel()
def _pass_chunk(
    logp, c, lo, hi, vertex, weight, values, rows, spans, scale, first, last, potts, mu, q
):  # pragma: no cover
    """``_point_pass`` on the points lo..hi-1 (chunk c), splatting into its rows; a row's
    operations are ``rows.py``'s vector ones."""
    k = logp.shape[0]
    own = np.zeros(len(rows), np.int64)
    base = np.zeros(len(rows), np.int64)
    if not last:
        for kernel in range(len(rows)):
            own[kernel], base[kernel] = _clear_chunk(rows[kernel], spans[kernel][c])
    # Each point's row padded to whole vectors: a masked vector store spans all 64 bytes for the
    # loads after it, and a load of the next point's row waited for it (unpadded, the vector
    # softmax made calls 1.2-1.5x slower, measured).
    lanes = VECTOR_BYTES // logp.itemsize
    xp = np.zeros((_BLOCK, -(-k // lanes) * lanes), logp.dtype)
    x = xp[:, :k]  # the block's scores, then marginals (point-major); xp[b, :k] point b's row
    message = np.empty(k, logp.dtype)
    for start in range(lo, hi, _BLOCK):
        n = min(_BLOCK, hi - start)
        if first:
            for b in range(n):
                for j in range(k):
                    x[b, j] = logp[j, start + b]
        elif potts:
            # The message straight into x, the scores added after the block (a point's
            # masked vector store read back at once by scalar loads waited for it, perf),
            # point by point (label by label: 5% slower a pass, measured).
            for b in range(n):
                slice_point(values, vertex, weight, start + b, xp[b, :k])
            for b in range(n):
                for j in range(k):
                    x[b, j] += logp[j, start + b]
        else:
            for b in range(n):
                i = start + b
                slice_point(values, vertex, weight, i, message)
                for j in range(k):
                    s = logp[j, i]
                    for l in range(k):
                        s -= message[l] * mu[l, j]
                    x[b, j] = s
        for b in range(n):
            softmax_row(xp[b, :k])
        if last:
            for b in range(n):
                for j in range(k):
                    q[j, start + b] = x[b, j]
            continue
        for b in range(n):
            i = start + b
            for kernel in range(len(vertex)):
                splat_rows(
                    rows[kernel],
                    own[kernel],
                    base[kernel],
                    vertex[kernel][i],
                    weight[kernel][i],
                    xp[b, :k],
                    scale[kernel],
                )
