"""Dense-CRF mean-field on numba lattices (``lattice_numba.py``), fused: all kernels at once.

One mean-field step is one pass over the points (slice the previous step's blurred vertex
values, add the unary, softmax, splat into the next step's vertices) plus a blur of the
vertices. The splat runs in parallel chunks of points as ``lattice_numba``'s (``_chunk_spans``);
a point's slice and splat of a vertex row are ``rows.py``'s vector operations. The softmax
exponentiates blocks of points with a polynomial that vectorises (float32; libm's exp measured
3x slower per pass); float64 keeps libm's exp.
"""

from __future__ import annotations

import math

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
from permutocrf.rows import slice_point, splat_rows
from permutocrf.scratch import scratch

# 2^f on [-1/2, 1/2], relative error 1e-7 in float32 (least squares on Chebyshev nodes).
_EXP2 = (6.9314718e-01, 2.4022646e-01, 5.5503290e-02, 9.6185198e-03, 1.3399860e-03, 1.5337577e-04)


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
    potts, poly = mu is None, dtype == np.float32
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
        args = (vertex, weight, current, target, spans, scale, step == 0, last, potts, mu, poly)
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


@kernel()
def _softmax_block(x, bits, poly):  # pragma: no cover - compiled
    """Softmax of every row of the (n, K) block ``x`` in place, by the polynomial exponential
    when ``poly`` (float32 only). ``bits`` (n K,) int32 scratch."""
    n, k = x.shape
    t = x.dtype.type
    for b in range(n):
        top = x[b, 0]
        for j in range(1, k):
            top = max(top, x[b, j])
        for j in range(k):
            x[b, j] -= top
    flat = x.reshape(n * k)
    if poly:
        # exp(x) = 2^e 2^f with e = round(x log2(e)), |f| <= 1/2; 2^e through the exponent
        # bits. Below -80 (2^-115) the term is clamped: it is 1e-35 of the row's largest.
        for j in range(n * k):
            u = max(flat[j], t(-80.0)) * t(1.4426950408889634)
            e = np.floor(u + t(0.5))
            f = u - e
            p = t(_EXP2[5])
            for c in (_EXP2[4], _EXP2[3], _EXP2[2], _EXP2[1], _EXP2[0]):
                p = p * f + t(c)
            flat[j] = p * f + t(1.0)
            bits[j] = (np.int32(e) + 127) << 23
        scale = bits[: n * k].view(np.float32)
        for j in range(n * k):
            flat[j] *= scale[j]
    else:
        for j in range(n * k):
            flat[j] = math.exp(flat[j])
    for b in range(n):
        s = x[b, 0]
        for j in range(1, k):
            s += x[b, j]
        inv = t(1.0) / s
        for j in range(k):
            x[b, j] *= inv


@kernel(parallel=True)
def _point_pass(
    logp, vertex, weight, values, rows, spans, scale, first, last, potts, mu, poly, q
):  # pragma: no cover
    """One pass over the points of ``logp`` (K, P): ``Q_i = softmax(logp_i + message_i)``, the
    message sliced from ``values`` (skipped when ``first``), minus ``message @ mu`` unless
    ``potts``; then ``scale[kernel] Q`` is splatted into ``rows`` (chunk c as
    ``spans[kernel][c]``, ``lattice_numba._chunk_spans``), or ``Q`` written to ``q`` (K, P)
    when ``last``."""
    num, chunks = logp.shape[1], spans[0].shape[0]
    for c in numba.prange(chunks):
        lo, hi = c * num // chunks, (c + 1) * num // chunks
        args = (vertex, weight, values, rows, spans, scale, first, last, potts, mu, poly, q)
        _pass_chunk(logp, c, lo, hi, *args)


@kernel()
def _pass_chunk(
    logp, c, lo, hi, vertex, weight, values, rows, spans, scale, first, last, potts, mu, poly, q
):  # pragma: no cover
    """``_point_pass`` on the points lo..hi-1 (chunk c), splatting into its rows; a row's
    operations are ``rows.py``'s vector ones."""
    k = logp.shape[0]
    own = np.zeros(len(rows), np.int64)
    base = np.zeros(len(rows), np.int64)
    if not last:
        for kernel in range(len(rows)):
            own[kernel], base[kernel] = _clear_chunk(rows[kernel], spans[kernel][c])
    x = np.empty((_BLOCK, k), logp.dtype)
    message = np.empty(k, logp.dtype)
    bits = np.empty(_BLOCK * k, np.int32)
    for start in range(lo, hi, _BLOCK):
        n = min(_BLOCK, hi - start)
        if first:
            for j in range(k):
                for b in range(n):
                    x[b, j] = logp[j, start + b]
        elif potts:
            # The message straight into x, the scores added after the block: a point's
            # masked vector store read back at once by scalar loads waited for it (perf).
            for b in range(n):
                slice_point(values, vertex, weight, start + b, x[b])
            for j in range(k):
                for b in range(n):
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
        _softmax_block(x[:n], bits, poly)
        if last:
            for j in range(k):
                for b in range(n):
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
                    x[b],
                    scale[kernel],
                )
