"""The permutohedral lattice on CPU, compiled with numba (its fused mean-field is
``meanfield_numba.py``'s).

The same lattice as ``lattice_torch.py`` (same embedding arithmetic, vertices, blur and symmetric
normalisation, so both agree to float rounding) in another layout: the points keep their own
order and each stores its d+1 vertex indices and weights. The vertices are found by hashing
one int64 code per point and corner into an open-addressing table, skipped for the corners a
point shares with the point before it (most, along image rows). A code is the vertex's
coordinates in mixed radix. Where that overflows int64 (many feature dimensions: 8-channel
bilateral features, d = 10, already do), a code is a linear hash of the coordinates instead and
the table also holds the coordinate rows, compared in full on every hit (exact, as pydensecrf's
table of full keys).

The splat runs in parallel chunks of points into one array of rows: each chunk writes the
vertices it reaches first in their own rows and keeps copies of those an earlier chunk reached,
added to them before the blur (``_chunk_spans``). Vertices are numbered in the order points
first use them, so the copies are few whatever the thread count, where a copy of every vertex
per thread grew with it, and the splat needs no second pass over the lattice.

Functions compile on first use (~14 s for float32 on this 2-core machine; cached on disk and
announced as ``jit.py`` says). Parallel functions are thin
``prange`` loops over serial chunk functions, run on ``jit.threads()`` threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ParamSpec, TypeVar

import numba
import numpy as np

from permutocrf.arithmetic import check_features, elevation_scale, fits
from permutocrf.jit import entry_point, kernel, prefetch, threads
from permutocrf.rows import blur_row, slice_point, splat_rows
from permutocrf.scratch import scratch

P = ParamSpec("P")
R = TypeVar("R")
_BLOCK = 64  # points per block: loops over a block vectorise and its scratch stays in L1
_AHEAD = 16  # vertices the blur prefetches ahead (``jit.prefetch``; of 4-64, 16 was fastest)


@dataclass(frozen=True)
class CpuLattice:
    """One kernel's permutohedral lattice over P points (one image or several), in point order.

    ``vertex`` (P, d+1) int32 and ``weight`` (P, d+1) are every point's simplex corners and
    barycentric weights (times the point's normalisation once ``normalised``); ``neighbours``
    (d+1, M, 2) int32 in [0, M] are the blur neighbours along each lattice axis, M meaning none
    (axis-major: a blur pass along one axis reads them in one stream; vertex-major, every pass
    read all of them, 8 MB on a CamVid frame's fine bilateral lattice).
    ``alpha = 1 / (1 + 2^-d)`` is pydensecrf's constant.
    """

    vertex: np.ndarray
    weight: np.ndarray
    neighbours: np.ndarray
    alpha: float

    @property
    def num_vertices(self) -> int:
        return self.neighbours.shape[1]

    @property
    def num_points(self) -> int:
        return self.vertex.shape[0]

    @entry_point
    def filter(self, values: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """``scale * alpha * (slice . blur . splat)(values)`` for (P, C) values."""
        values = np.ascontiguousarray(values, dtype=self.weight.dtype)
        m = self.num_vertices
        spans = _chunk_spans(self.vertex, threads(), m)
        rows = scratch("filter.rows", (span_rows(spans, m), values.shape[1]), values.dtype)
        _splat(self.vertex, self.weight, values, rows, spans, values.dtype.type(scale * self.alpha))
        _reduce(rows, spans)
        spare = scratch("filter.spare", (m + 1, values.shape[1]), values.dtype)
        _blur(rows, spare, self.neighbours)
        out = np.empty_like(values)
        _slice(self.vertex, self.weight, blurred(rows, spare, self.neighbours), out)
        return out

    def normalised(self, *, in_place: bool = False) -> CpuLattice:
        """pydensecrf's symmetric normalisation ``n_i = (sum_j k(f_i, f_j))^-1/2``, folded into
        the weights (the splat reads and the slice writes each point through them); into this
        lattice's own if ``in_place`` (a ``temporary`` build's)."""
        total = self.filter(np.ones((self.vertex.shape[0], 1), self.weight.dtype))
        weight = self.weight if in_place else np.empty_like(self.weight)
        _normalise(self.weight, total[:, 0], weight)
        return self if in_place else replace(self, weight=weight)


@kernel(parallel=True)
def _normalise(weight, total, out):  # pragma: no cover - compiled
    """``out = weight / sqrt(total + 1e-20)`` point by point (``out`` may be ``weight``), in
    ``weight``'s dtype, as numpy's three passes over the weights computed it (the lattice
    build then took 0.95-0.98x, 2 threads, interleaved)."""
    t = weight.dtype.type
    for i in numba.prange(weight.shape[0]):
        norm = t(1.0) / np.sqrt(total[i] + t(1e-20))
        for r in range(weight.shape[1]):
            out[i, r] = weight[i, r] * norm


@entry_point
def build(
    f: np.ndarray, group: np.ndarray | None = None, groups: int = 1, *, temporary: bool = False
) -> CpuLattice:
    """The (unnormalised) lattice of features ``f`` (P, d) float32/float64, already divided by
    the stds; ``group`` (P,) int64 is each point's image (None: one image), as
    ``lattice_torch.build``. A ``temporary`` lattice's arrays are this thread's scratch
    (``scratch.py``): for a lattice that is dead before the next temporary one is built, as
    ``dense_crf``'s bilateral kernel of each image (its arrays fresh cost this VM 4,800 page
    faults a CamVid frame)."""
    f = np.ascontiguousarray(f)
    num, d = f.shape
    d1 = d + 1
    if num * d1 >= 2**31:
        raise ValueError("dense CRF input too large: more than 2^31 point-vertex pairs")
    check_features(_extent(f, 4 * threads()).tolist(), float(np.finfo(f.dtype).eps))
    # check_features keeps |rem0| below 2^21 for float32 features: int32 halves the traffic.
    rem0 = scratch("build.rem0", (num, d1), np.int32 if f.dtype == np.float32 else np.int64)
    rank = scratch("build.rank", (num, d1), np.int8 if d1 <= 128 else np.int16)
    bary = _output(temporary, "weight", (num, d1), f.dtype)
    scale = elevation_scale(d).astype(f.dtype)
    chunks = max(1, min(num, 4 * threads()))
    low = np.full((chunks, d1), np.iinfo(np.int64).max)
    high = np.full((chunks, d1), np.iinfo(np.int64).min)
    _embed(f, scale, rem0, rank, bary, low, high)
    lo = low[:, :d].min(0) - 2 * d1
    radix = high[:, :d].max(0) + 2 * d1 - lo + 1
    cells = math.prod(radix.tolist())
    group = np.zeros(num, np.int64) if group is None else np.asarray(group, np.int64)
    vertex = _output(temporary, "vertex", (num, d1), np.int32)
    if fits(cells, groups):
        strides = np.cumprod(np.concatenate([[1], radix[:-1]])).astype(np.int64)
        found = scratch("build.found", (num * d1,), np.int64)
        number = scratch("build.number", (num * d1,), np.int32)
        codes, keys, slots = _hash_vertices(
            rem0, rank, group, lo, strides, cells, vertex, found, number, threads()
        )
        steps = d1 * np.eye(d1, d, dtype=np.int64) @ strides - strides.sum()
        neighbours = _output(temporary, "neighbours", (d1, codes.shape[0], 2), np.int32)
        _neighbours(codes, keys, slots, steps, neighbours)
    else:
        mult = np.random.default_rng(0).integers(0, 2**64, d1, np.uint64, endpoint=False) | 1
        rows, codes, keys, slots = _number_rows(rem0, rank, group, mult, vertex)
        steps = np.uint64(d1) * np.eye(d1, d, dtype=np.uint64) @ mult[:d] - mult[:d].sum()
        neighbours = _output(temporary, "neighbours", (d1, rows.shape[0], 2), np.int32)
        _neighbour_rows(rows, codes, keys, slots, steps, neighbours)
    return CpuLattice(vertex, bary, neighbours, 1.0 / (1.0 + 2.0**-d))


def _output(temporary: bool, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An array of the lattice being built: scratch ``build.<name>`` if ``temporary``, else
    its own."""
    return scratch(f"build.{name}", shape, dtype) if temporary else np.empty(shape, dtype)


@kernel(parallel=True)
def _extent(f, chunks):  # pragma: no cover - compiled
    """The largest |f| of every column of ``f`` (P, d), as float64 (numpy's measured 20x
    slower); NaN if a column has one. In parallel ``chunks`` of rows, then over the chunks."""
    num, d = f.shape
    chunks = max(1, min(num, chunks))
    parts = np.zeros((chunks, d))
    for c in numba.prange(chunks):
        part = parts[c]
        for i in range(c * num // chunks, (c + 1) * num // chunks):
            for j in range(d):
                v = abs(f[i, j])
                if v > part[j] or v != v:  # once NaN, always NaN
                    part[j] = v
    out = np.zeros(d)
    for c in range(chunks):
        for j in range(d):
            v = parts[c, j]
            if v > out[j] or v != v:
                out[j] = v
    return out


@kernel(parallel=True)
def _embed(f, scale, rem0, rank, bary, low, high):  # pragma: no cover - compiled
    """Enclosing simplex (rem0, rank) and barycentric weights of every row of ``f``, with the
    float operations of ``lattice_torch.embed`` in the same order (so both find the same simplex);
    ``low``/``high`` (chunks, d+1): each chunk's smallest and largest rem0."""
    num, chunks = f.shape[0], low.shape[0]
    for c in numba.prange(chunks):
        lo, hi = c * num // chunks, (c + 1) * num // chunks
        _embed_chunk(f[lo:hi], scale, rem0[lo:hi], rank[lo:hi], bary[lo:hi], low[c], high[c])


@kernel()
def _embed_chunk(f, scale, rem0, rank, bary, low, high):  # pragma: no cover - compiled
    """``_embed`` on some points, by blocks laid out coordinate-major so that every step
    vectorises over the block (measured 3.7x faster than point by point, where the rank's
    comparisons branch)."""
    num, d = f.shape
    d1 = d + 1
    t = f.dtype.type
    inv, d1f, one = t(1.0 / d1), t(d1), t(1.0)
    cf = np.empty((d, _BLOCK), f.dtype)
    el = np.empty((d1, _BLOCK), f.dtype)
    res = np.empty((d1, _BLOCK), f.dtype)
    r0 = np.empty((d1, _BLOCK), np.int64)
    rk = np.empty((d1, _BLOCK), np.int64)
    y = np.empty((d1, _BLOCK), f.dtype)
    lowest, highest = low.copy(), high.copy()  # written back once: no false sharing
    for start in range(0, num, _BLOCK):
        n = min(_BLOCK, num - start)
        for j in range(d):
            for b in range(n):
                cf[j, b] = f[start + b, j] * scale[j]
        # Elevation: el_j = sum_{k >= j} cf_k - j cf_{j-1} (a suffix sum, then a subtraction).
        el[d, :n] = 0.0
        el[d - 1, :n] = cf[d - 1, :n]
        for j in range(d - 2, -1, -1):
            for b in range(n):
                el[j, b] = el[j + 1, b] + cf[j, b]
        for j in range(d):
            for b in range(n):
                el[j + 1, b] -= t(j + 1) * cf[j, b]
        # Nearest remainder-0 point (rounding half to even), residuals, and the rank:
        # rank_a = sum(down) + #{b: res_b > res_a} + #{b < a: res_b == res_a}.
        rk[0, :n] = 0
        for j in range(d1):
            for b in range(n):
                down = np.rint(el[j, b] * inv)
                rem = down * d1f
                res[j, b] = el[j, b] - rem
                r0[j, b] = np.int64(rem)
                rk[0, b] += np.int64(down)
        for a in range(1, d1):
            rk[a, :n] = rk[0, :n]
        for other in range(d1):
            for a in range(d1):
                for b in range(n):
                    rk[a, b] += np.int64(res[other, b] > res[a, b])
            for a in range(other + 1, d1):
                for b in range(n):
                    rk[a, b] += np.int64(res[other, b] == res[a, b])
        # A point off the sum-0 plane is brought back by moving its extreme coordinates.
        for a in range(d1):
            for b in range(n):
                wrap = d1 if rk[a, b] < 0 else (-d1 if rk[a, b] > d else 0)
                rk[a, b] += wrap
                r0[a, b] += wrap
        # Barycentric weights: y[d - rank_a] = v_a; vertex r gets y[r] - y[r - 1], vertex 0
        # gets 1 + y[0] - y[d] (Adams et al.).
        for b in range(n):
            i = start + b
            for a in range(d1):
                rem0[i, a] = r0[a, b]
                rank[i, a] = rk[a, b]
                lowest[a] = min(lowest[a], r0[a, b])
                highest[a] = max(highest[a], r0[a, b])
                y[d - rk[a, b], b] = (el[a, b] - t(r0[a, b])) * inv
            bary[i, 0] = (y[0, b] - y[d, b]) + one
            for r in range(1, d1):
                bary[i, r] = y[r, b] - y[r - 1, b]
    low[:], high[:] = lowest, highest


@kernel()
def _slot(table, code):  # pragma: no cover - compiled
    """The first slot to probe for ``code`` (an int64 >= 0 or a uint64) in a table of 2^n slots
    (``table`` any of its arrays): Fibonacci hashing, for ``_find`` and the full-row tables."""
    shift = np.uint64(64 - int(np.log2(table.shape[0])))
    return np.int64((np.uint64(code) * np.uint64(0x9E3779B97F4A7C15)) >> shift)


@kernel()
def _find(keys, code):  # pragma: no cover - compiled
    """The slot of ``code`` in an open-addressing table (linear probing from ``_slot``, -1
    empty), or the empty slot where it belongs."""
    mask = keys.shape[0] - 1
    h = _slot(keys, code)
    while keys[h] != code and keys[h] != -1:
        h = (h + 1) & mask
    return h


@kernel()
def _table(codes, size):  # pragma: no cover - compiled
    """A table of ``size`` slots (a power of two) holding ``codes``: keys, and slots (M,) the
    index into ``codes`` of each key."""
    keys = np.full(size, -1, np.int64)
    slots = np.empty(size, np.int32)
    for v in range(codes.shape[0]):
        h = _find(keys, codes[v])
        keys[h], slots[h] = codes[v], v
    return keys, slots


@kernel(parallel=True)
def _hash_vertices(
    rem0, rank, group, lo, strides, cells, vertex, found, number, chunks
):  # pragma: no cover - compiled
    """Number the lattice vertices of every point's simplex into ``vertex`` (P, d+1); return
    the vertex codes (M,) and their table (keys, slots). ``found`` (P (d+1),) int64 and
    ``number`` (P (d+1),) int32 are scratch.

    Chunks of points number their vertices in parallel, each with its own table, writing their
    codes to ``found`` (chunk c's from its first point * (d+1)); the codes are then merged into
    one table (a few times M insertions) and the chunks' numbers mapped to it through
    ``number`` (laid out as ``found``).
    """
    num, d1 = rank.shape
    if chunks == 1:  # its numbers and table are the lattice's: no merge
        m, keys, slots = _number_chunk(rem0, rank, group, lo, strides, cells, vertex, found)
        return found[:m].copy(), keys, slots
    counts = np.empty(chunks, np.int64)
    for c in numba.prange(chunks):
        a, b = c * num // chunks, (c + 1) * num // chunks
        counts[c] = _number_chunk(
            rem0[a:b], rank[a:b], group[a:b], lo, strides, cells, vertex[a:b], found[a * d1 :]
        )[0]
    size = 1 << int(np.ceil(np.log2(2 * counts.sum() + 2)))
    keys = np.full(size, -1, np.int64)
    slots = np.empty(size, np.int32)
    codes = np.empty(counts.sum(), np.int64)
    m = 0
    for c in range(chunks):
        start = c * num // chunks * d1
        for v in range(start, start + counts[c]):
            h = _find(keys, found[v])
            if keys[h] == -1:
                keys[h], slots[h], codes[m] = found[v], m, found[v]
                m += 1
            number[v] = slots[h]
    for c in numba.prange(chunks):
        a, b = c * num // chunks, (c + 1) * num // chunks
        for i in range(a, b):
            for r in range(d1):
                vertex[i, r] = number[a * d1 + vertex[i, r]]
    return codes[:m].copy(), keys, slots


@kernel()
def _number_chunk(rem0, rank, group, lo, strides, cells, vertex, found):  # pragma: no cover
    """Number the vertices of these points' simplices in order of first use into ``vertex``,
    writing their codes to ``found``; returns how many, and their table (keys, slots).

    Vertex r of a simplex has coordinates ``rem0 + r - (d+1) [rank > d - r]``, coded in mixed
    radix (``strides``, one block of ``cells`` codes per image) as ``lattice_torch._codes``. A
    vertex is corner r of every simplex that has it, and neighbouring points share most corners,
    so each corner is first compared with the previous point's corner r (on a CamVid frame this
    skips 56% of the table look-ups for the bilateral lattice, 76% for the Gaussian one).
    """
    num, d1 = rank.shape
    d = d1 - 1
    stride_sum = strides.sum()
    keys, slots = _table(found[:0], 1 << 12)
    m = 0
    above = np.zeros(d1 + 1, np.int64)
    previous = np.full(d1, -1, np.int64)
    for i in range(num):
        if 2 * (m + d1) > keys.shape[0]:  # keep the table at most half full
            keys, slots = _table(found[:m], 2 * keys.shape[0])
        base = group[i] * cells
        above[:] = 0
        for j in range(d):
            base += (rem0[i, j] - lo[j]) * strides[j]
            above[d + 1 - rank[i, j]] += strides[j]
        shift = 0
        for r in range(d1):
            shift += above[r]  # sum of strides_j over the j with rank_j > d - r
            code = base + r * stride_sum - d1 * shift
            if code == previous[r]:
                vertex[i, r] = vertex[i - 1, r]
                continue
            previous[r] = code
            h = _find(keys, code)
            if keys[h] == -1:
                keys[h], slots[h], found[m] = code, m, code
                m += 1
            vertex[i, r] = slots[h]
    return m, keys, slots


@kernel(parallel=True)
def _neighbours(codes, keys, slots, steps, out):  # pragma: no cover - compiled
    """``out[j, v]``: the vertices at ``code_v + steps_j`` and ``code_v - steps_j`` (M if none).

    Each pair is looked up once, from its lower end: u = v + step_j gives both ``out[j, v, 0]
    = u`` and ``out[j, u, 1] = v`` (no other vertex writes that one), half the table's look-ups
    (CamVid frame, fine bilateral kernel: 11-14 -> 7 ms on 2 threads, 24 -> 14 ms on 1)."""
    m = codes.shape[0]
    for v in numba.prange(m):
        for j in range(steps.shape[0]):
            out[j, v, 1] = m
    for v in numba.prange(m):
        ahead = min(v + _AHEAD, m - 1)
        for j in range(steps.shape[0]):
            s = _slot(keys, codes[ahead] + steps[j])
            prefetch(keys, s)
            prefetch(slots, s)
        for j in range(steps.shape[0]):
            h = _find(keys, codes[v] + steps[j])
            _link(out, j, v, m if keys[h] == -1 else slots[h])


@kernel()
def _link(out, j, v, u):  # pragma: no cover - compiled
    """Record vertex u = v + step_j (u = M: none) as v's upper neighbour along axis j, and v as
    u's lower one (the pair's one look-up, ``_neighbours``)."""
    out[j, v, 0] = u
    if u < out.shape[1]:
        out[j, u, 1] = v


@kernel()
def _is_corner(row, rem0, rank, r, group):  # pragma: no cover - compiled
    """Whether ``row`` (d+1,) is vertex r of the simplex ``rem0``, ``rank`` in image ``group``."""
    d = row.shape[0] - 1
    j = 0
    while j < d and row[j] == rem0[j] + r - (d + 1 if rank[j] > d - r else 0):
        j += 1
    return j == d and row[d] == group


@kernel()
def _is_step(row, origin, axis):  # pragma: no cover - compiled
    """Whether ``row`` is ``origin + (d+1) e_axis - 1``, the image column kept."""
    d = row.shape[0] - 1
    j = 0
    while j < d and row[j] == origin[j] + (d if j == axis else -1):
        j += 1
    return j == d and row[d] == origin[d]


@kernel()
def _code_table(codes, size):  # pragma: no cover - compiled
    """A table of ``size`` slots (a power of two) for the vertices with ``codes`` (M,): keys
    (their codes) and slots (vertex indices, -1 empty)."""
    keys = np.zeros(size, np.uint64)
    slots = np.full(size, -1, np.int32)
    for v in range(codes.shape[0]):
        s = _slot(slots, codes[v])
        while slots[s] != -1:
            s = (s + 1) & (size - 1)
        keys[s], slots[s] = codes[v], v
    return keys, slots


@kernel()
def _number_rows(rem0, rank, group, mult, vertex):  # pragma: no cover - compiled
    """``_hash_vertices`` where mixed-radix codes overflow: number the vertices of every
    point's simplex into ``vertex`` (P, d+1); return their coordinate rows (M, d+1) (the last
    column the image), their codes (M,) and the table (keys, slots).

    A code is the linear hash ``mult @ row`` (uint64, wrapping), so blur neighbours' codes
    are ``code + step`` as in ``_number_chunk``; a table hit also compares the rows in full.
    Serial: pydensecrf's build is too.
    """
    num, d1 = rank.shape
    d = d1 - 1
    total = np.uint64(0)
    for j in range(d):
        total += mult[j]
    rows = np.empty((1024, d1), rem0.dtype)
    codes = np.empty(1024, np.uint64)
    keys, slots = _code_table(codes[:0], 1 << 12)
    above = np.zeros(d1 + 1, np.uint64)
    previous = np.zeros(d1, np.uint64)
    m = 0
    for i in range(num):
        base = mult[d] * np.uint64(group[i])
        above[:] = 0
        for j in range(d):
            base += mult[j] * np.uint64(rem0[i, j])
            above[d + 1 - rank[i, j]] += mult[j]
        shift = np.uint64(0)
        for r in range(d1):
            shift += above[r]  # sum of mult_j over the j with rank_j > d - r
            code = base + np.uint64(r) * total - np.uint64(d1) * shift
            if (
                i > 0
                and code == previous[r]
                and _is_corner(rows[vertex[i - 1, r]], rem0[i], rank[i], r, group[i])
            ):
                vertex[i, r] = vertex[i - 1, r]
                continue
            previous[r] = code
            s = _slot(slots, code)
            while slots[s] != -1 and not (
                keys[s] == code and _is_corner(rows[slots[s]], rem0[i], rank[i], r, group[i])
            ):
                s = (s + 1) & (slots.shape[0] - 1)
            if slots[s] == -1:
                if m == rows.shape[0]:
                    rows = np.concatenate((rows, np.empty_like(rows)))
                    codes = np.concatenate((codes, np.empty_like(codes)))
                for j in range(d):
                    rows[m, j] = rem0[i, j] + r - (d1 if rank[i, j] > d - r else 0)
                rows[m, d] = group[i]
                codes[m], keys[s], slots[s] = code, code, m
                m += 1
            vertex[i, r] = slots[s]
            if 2 * m > slots.shape[0]:  # keep the table at most half full
                keys, slots = _code_table(codes[:m], 2 * slots.shape[0])
    return rows[:m].copy(), codes[:m].copy(), keys, slots


@kernel(parallel=True)
def _neighbour_rows(rows, codes, keys, slots, steps, out):  # pragma: no cover - compiled
    """``_neighbours`` for ``_number_rows``' vertices: ``out[j, v]`` the vertices at
    ``row_v + step_j`` and ``row_v - step_j`` (M if none), step_j = (d+1) e_j - 1 (all -1 for
    j = d), found by code ``codes_v + steps_j`` and compared in full, each pair once from its
    lower end as there."""
    m = rows.shape[0]
    mask = slots.shape[0] - 1
    for v in numba.prange(m):
        for j in range(steps.shape[0]):
            out[j, v, 1] = m
    for v in numba.prange(m):
        for j in range(steps.shape[0]):
            code = codes[v] + steps[j]
            s = _slot(slots, code)
            while slots[s] != -1 and not (keys[s] == code and _is_step(rows[slots[s]], rows[v], j)):
                s = (s + 1) & mask
            _link(out, j, v, m if slots[s] == -1 else slots[s])


@kernel(parallel=True)
def _splat(vertex, weight, values, rows, spans, scale):  # pragma: no cover - compiled
    """``scale`` times the points' values splatted into ``rows``: chunk c of the points into
    its own vertices' rows and its copies of shared ones (``_chunk_spans``; ``_reduce`` adds
    those)."""
    num = vertex.shape[0]
    chunks = spans.shape[0]
    for c in numba.prange(chunks):
        own, base = _clear_chunk(rows, spans[c])
        for i in range(c * num // chunks, (c + 1) * num // chunks):
            splat_rows(rows, own, base, vertex[i], weight[i], values[i], scale)


@kernel()
def _clear_chunk(rows, span):  # pragma: no cover - compiled
    """Zero a chunk's rows (its own vertices', its copies of shared ones); return the
    ``own`` and ``base`` of its splat (``rows.splat_rows``)."""
    own, end, shared, base = span[0], span[1], span[2], span[3]
    rows[own:end] = 0.0
    rows[base + shared : base + own] = 0.0
    return own, base


def span_rows(spans: np.ndarray, m: int) -> int:
    """Rows that ``_chunk_spans``' chunks splat into for a lattice of ``m`` vertices: a row per
    vertex, the missing vertex's, and the chunks' copies of shared vertices after them."""
    return int(m + 1 + (spans[:, 0] - spans[:, 2]).sum())


@kernel(parallel=True)
def _chunk_spans(vertex, chunks, m):  # pragma: no cover - compiled
    """How chunk c of the points (points c P // chunks up to (c + 1) P // chunks, as the splats
    split them) splats into one array of rows: (own, end, shared, base) per chunk.

    Chunk c writes its own vertices, ``own..end-1``, in their rows (row v for vertex v); the
    vertices below ``own`` that it reaches, ``shared..own-1``, belong to earlier chunks, and it
    writes those in rows of its own, ``base + v`` (after the M + 1 vertex rows). ``own`` is the
    end of the earlier chunks' reach (the last chunk owns up to M), so no two chunks write one
    row, and a vertex's owner is the first chunk that reaches it: ``_reduce`` adding the copies
    to it in chunk order sums as one pass over the points in order. Vertices numbered in
    order of first use, as ``build`` numbers them, make the shared vertices few: those of
    points near a chunk's start, and colours seen before (measured on a CamVid frame, 2
    chunks: 0.3% of the Gaussian lattice, 20% of the fine bilateral one)."""
    num = vertex.shape[0]
    reach = np.zeros((chunks, 2), np.int64)  # the lowest and one past the highest vertex
    for c in numba.prange(chunks):
        a, b = c * num // chunks, (c + 1) * num // chunks
        if a < b:
            lo, hi = vertex[a, 0], vertex[a, 0]
            for i in range(a, b):
                for r in range(vertex.shape[1]):
                    lo, hi = min(lo, vertex[i, r]), max(hi, vertex[i, r])
            reach[c, 0], reach[c, 1] = lo, hi + 1
    spans = np.zeros((chunks, 4), np.int64)
    own, base = 0, m + 1
    for c in range(chunks):
        shared = min(reach[c, 0], own) if reach[c, 1] > reach[c, 0] else own
        spans[c, 0], spans[c, 2], spans[c, 3] = own, shared, base - shared
        base += own - shared
        own = max(own, reach[c, 1])
        spans[c, 1] = own
    spans[chunks - 1, 1] = m
    return spans


@kernel(parallel=True)
def _reduce(rows, spans):  # pragma: no cover - compiled
    """Add every chunk's copies of shared vertices to their rows, in chunk order
    (``_chunk_spans``)."""
    chunks = spans.shape[0]
    lo, hi = rows.shape[0], 0  # the rows some chunk shares
    for c in range(chunks):
        if spans[c, 2] < spans[c, 0]:
            lo, hi = min(lo, spans[c, 2]), max(hi, spans[c, 0])
    for v in numba.prange(lo, hi):
        total = rows[v]
        for c in range(chunks):
            if spans[c, 2] <= v < spans[c, 0]:
                copy = rows[spans[c, 3] + v]
                for j in range(total.shape[0]):
                    total[j] += copy[j]


@kernel(parallel=True)
def _blur(values, spare, neighbours):  # pragma: no cover - compiled
    """Convolve the vertex values (the first M + 1 rows of ``values``) with ``[1/2, 1, 1/2]``
    along every lattice axis, passing between ``values`` and ``spare`` (as many rows or
    more): the result is in ``values`` after an even number of axes, in ``spare`` after an odd
    one (``blurred``). Row M, the missing vertex, is zero in both."""
    axes, m, _ = neighbours.shape
    half = values.dtype.type(0.5)
    last = values.shape[1] - 1
    src, dst = values, spare
    src[m] = 0.0
    dst[m] = 0.0
    for axis in range(axes):
        for v in numba.prange(m):  # 2 threads: 38 -> 20 ms a CamVid frame's step, both kernels
            ahead = min(v + _AHEAD, m - 1)
            for side in range(2):
                u = neighbours[axis, ahead, side]
                prefetch(src, (u, 0))
                prefetch(src, (u, last))  # a row may straddle two cache lines
            blur_row(src, dst, v, neighbours[axis, v, 0], neighbours[axis, v, 1], half)
        src, dst = dst, src


def blurred(values: np.ndarray, spare: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Which of ``_blur``'s two arrays holds its result."""
    return spare if neighbours.shape[0] % 2 else values


@kernel(parallel=True)
def _slice(vertex, weight, values, out):  # pragma: no cover - compiled
    """``out[i] = sum_r weight[i, r] values[vertex[i, r]]``."""
    for i in numba.prange(vertex.shape[0]):
        slice_point((values,), (vertex,), (weight,), i, out[i])
