"""Permutohedral lattice (Adams, Baek and Davis 2010) in PyTorch, as pydensecrf uses it: the
dense CRF's lattice for CUDA tensors (``lattice_numba.py`` holds the same lattice in numba for
CPU ones).

For features ``f`` (P, d) the lattice filter approximates ``c * sum_j exp(-|f_i - f_j|^2 / 2)
v_j`` with a constant ``c`` that symmetric normalisation cancels.

Speed. Every point lies in one lattice simplex, and real images put many points (pixels) in
the same simplex: for a 480x360 CamVid frame the bilateral kernel (d = 5) has ~173k points but
only a few ten thousand simplices and ~10k vertices. So the build hashes one key per *point*
(its simplex) and the (d+1)-fold vertex keys only once per *simplex*. The lattice then works on
the points *sorted by simplex*: the splat is one sparse product whose vertex rows read runs of
consecutive points, and the slice one product whose rows are the sorted points and whose
columns are vertices (a small, cache-resident array). Reading values in that order instead of
the image's made the splat ~6x and the slice ~2.5x faster (CPU, measured). Several kernels are
re-expressed in one point order and stacked (``stack``), so a mean-field step permutes nothing
and costs two sparse products in all.

Keys. Simplices and vertices are told apart by int64 mixed-radix codes of their coordinates,
whose blur neighbours are ``code +- step``. Where those would overflow (many feature
dimensions), codes are built from ranks instead (``_code``; exact), and neighbours are matched
by the ranks of row prefixes and suffixes (``_row_neighbours``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch

from permutocrf import arithmetic
from permutocrf.arithmetic import check_features, fits


@dataclass(frozen=True)
class Embedding:
    """Where P points land on a d-dimensional lattice: their enclosing simplex.

    Coordinates come first (d+1, P) so that per-coordinate work runs on contiguous rows.
    """

    rem0: torch.Tensor  # (d+1, P) int64: the nearest remainder-0 lattice point
    rank: torch.Tensor  # (d+1, P) int64: rank of each coordinate's residual (0 = largest)
    weights: torch.Tensor  # (d+1, P): barycentric weight of simplex vertex r (remainder r)


def elevation_scale(d: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """``arithmetic.elevation_scale`` as a (d,) tensor of ``dtype``."""
    return torch.from_numpy(arithmetic.elevation_scale(d)).to(device=device, dtype=dtype)


def embed(f: torch.Tensor) -> Embedding:
    """Find the enclosing simplex and barycentric weights of every feature vector ``f`` (P, d).

    Follows Adams et al. (2010) as pydensecrf's ``Permutohedral::init`` does (same elevation,
    rounding half to even, rank tie-breaking), so both build the same lattice.
    """
    num, d = f.shape
    d1 = d + 1
    i = torch.arange(d, device=f.device, dtype=f.dtype)[:, None]
    cf = f.T * elevation_scale(d, f.dtype, f.device)[:, None]
    elevated = torch.zeros(d1, num, dtype=f.dtype, device=f.device)
    # sum_{k >= j} cf_k added one feature at a time in f's precision, as pydensecrf and
    # lattice_numba.py do: a float32 cumsum accumulates in double on CPU, and at tied points
    # that put up to 1.5 % of a volume's points in another simplex than pydensecrf's.
    running = torch.zeros(num, dtype=f.dtype, device=f.device)
    for j in range(d - 1, -1, -1):
        running = running + cf[j]
        elevated[j] = running
    elevated[1:] -= (i + 1) * cf

    down = torch.round(elevated * (1.0 / d1))
    rem0 = down * d1
    resid = elevated - rem0
    # rank[a] = #{b: resid_b > resid_a} + #{b < a: resid_b == resid_a}: ties rank the lower
    # index higher, as pydensecrf. d+1 row-vs-all passes in int8 (measured 3x faster than
    # int64 pair passes, 2x faster than one (d+1, d+1, P) comparison or a sort along d+1).
    small = torch.int8 if 2 * d1 < 128 else torch.int16  # the rank stays within +-2(d+1)
    rank = torch.zeros(d1, num, dtype=small, device=f.device)
    for b in range(d1):
        rank += resid[b] > resid
        rank[b + 1 :] += resid[b] == resid[b + 1 :]
    rank += down.sum(0).to(small)  # |sum| <= d + 1: the elevated point sums to 0
    # A point off the sum-0 plane is brought back by moving its extreme coordinates.
    wrap = (rank < 0).to(small) - (rank > d).to(small)
    rank += wrap * d1
    rank = rank.to(torch.int64)
    rem0 = rem0.to(torch.int64) + wrap * d1

    # Barycentric weights: with y[d - rank_a] = v_a (rank is a permutation, so one scatter),
    # vertex r gets y[r] - y[r - 1], and vertex 0 gets 1 + y[0] - y[d] (Adams et al.).
    v = (elevated - rem0.to(f.dtype)) * (1.0 / d1)
    y = torch.empty_like(v).scatter_(0, d - rank, v)
    bary = torch.empty_like(v)
    torch.sub(y[1:], y[:-1], out=bary[1:])
    torch.sub(y[0], y[d], out=bary[0]).add_(1.0)
    return Embedding(rem0, rank, bary)


def _rank(x: torch.Tensor) -> torch.Tensor:
    """The rank of every entry of ``x`` among its distinct values."""
    return torch.unique(x, return_inverse=True)[1]


def _code(digits: Iterable[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """One int64 code per column of digit rows ``(digit, radix)``, most significant first,
    ``0 <= digit < radix``: equal codes for equal columns only. Mixed radix while it fits in
    int64; where the next digit would overflow it, the code so far is first replaced by its
    rank among the distinct codes (exact, below the number of columns), and so is the digit
    if that is still too wide."""
    code, bound = None, 1
    for digit, radix in digits:
        if code is None:
            code, bound = digit.clone(), radix
            continue
        if bound * radix >= 2**62:
            code, bound = _rank(code), code.numel()
            if bound * radix >= 2**62:
                digit, radix = _rank(digit), digit.numel()
        code.mul_(radix).add_(digit)
        bound *= radix
    return code


def _box(rem0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per coordinate (d,) of the d+1 in ``rem0`` (d+1, S): the lowest value and the radix of
    a box holding every vertex of these simplices and their blur neighbours (2(d+1) of
    headroom each side, so that neighbours' codes never alias)."""
    d1 = rem0.shape[0]
    lo = rem0[: d1 - 1].amin(1) - 2 * d1
    return lo, rem0[: d1 - 1].amax(1) + 2 * d1 - lo + 1


def _codes(rem0, rank, group, groups: int, lo: torch.Tensor, radix: torch.Tensor):
    """Mixed-radix int64 codes (d+1, S) of the vertices of S simplices, tagged with the image,
    in the box ``lo``, ``radix`` (``_box``; the product of the radices must ``fit``).

    Vertex r has coordinates ``rem0 + r - (d+1) [rank > d - r]`` (only the first d are kept:
    they sum to 0). Blur neighbours' codes are then ``code + step @ strides``. Returns the
    codes and the strides (d,).
    """
    d1, num = rem0.shape
    d = d1 - 1
    rem0 = rem0[:d]
    strides = torch.cumprod(torch.cat([radix.new_ones(1), radix[:-1]]), 0)
    base = ((rem0 - lo[:, None]) * strides[:, None]).sum(0) + group * radix.prod()
    # sum_i strides_i [rank_i > d - r] for every r, via a suffix sum over rank values.
    by_rank = torch.zeros(d1 + 1, num, dtype=torch.int64, device=rem0.device)
    by_rank.scatter_add_(0, rank[:d], strides[:, None].expand(d, num))
    above = by_rank.flip(0).cumsum(0)[:d1]  # above[r] = sum over ranks >= d + 1 - r
    r = torch.arange(d1, device=rem0.device)[:, None]
    return base + r * strides.sum() - d1 * above, strides


def _row_codes(rem0, rank, group, groups: int, lo, radix) -> torch.Tensor:
    """``_codes`` where mixed radix overflows: codes (d+1, S) from the vertices' coordinate
    rows by ``_code``, equal for equal vertices only (exact, not linear in the coordinates)."""
    d1 = rem0.shape[0]
    r = torch.arange(d1, device=rem0.device)[:, None]
    digits = [(group.expand(d1, -1), groups)]
    digits += [
        (rem0[k] + r - d1 * (rank[k] > d1 - 1 - r) - lo[k], int(radix[k])) for k in range(d1 - 1)
    ]
    return _code(digits)


def _row_neighbours(rem0, rank, group, corner) -> torch.Tensor:
    """The blur neighbours (d+1, 2, M) in [0, M] of the M vertices that are ``corner`` (M,)
    (index r S + s: vertex r of simplex s), where mixed-radix codes overflow.

    On all d+1 coordinates (they sum to 0), x's neighbour along axis j, u = x - 1 + (d+1) e_j,
    is the vertex whose u + 1 equals x off coordinate j (the sum fixes that one). So per axis,
    rows of x and of u + 1 without coordinate j are matched by the ranks of their prefix and
    suffix (O(d M) work where coding each neighbour's row would be O(d^2 M)); the other side
    is the inverse map.
    """
    d1, num = rem0.shape
    m = corner.numel()
    r, simplex = corner // num, corner % num
    x = rem0.index_select(1, simplex) + r - d1 * (rank.index_select(1, simplex) > d1 - 1 - r)
    rows = torch.cat([x, x + 1], 1)  # (d+1, 2M): the vertices, then the vertices + 1
    rows -= rows.amin(1, keepdim=True)
    radix = (rows.amax(1) + 1).tolist()
    pair = 2 * m  # ranks are below 2M
    suffix = [torch.zeros_like(rows[0])]  # suffix[j]: the rank of coordinates j+1..d
    for k in range(d1 - 1, 0, -1):
        suffix.insert(0, _rank(_code([(rows[k], radix[k]), (suffix[0], pair)])))
    prefix = _rank(group.index_select(0, simplex).repeat(2))  # coordinates 0..j-1, the image
    plus = torch.empty(d1, m, dtype=torch.int64, device=rem0.device)
    for j in range(d1):
        key = _code([(prefix, pair), (suffix[j], pair)])
        targets, vertex = torch.sort(key[m:])
        found = torch.searchsorted(targets, key[:m]).clamp_(max=m - 1)
        plus[j] = torch.where(targets[found] == key[:m], vertex[found], m)
        prefix = _rank(_code([(prefix, pair), (rows[j], radix[j])]))
    minus = torch.full((d1, m + 1), m, dtype=torch.int64, device=rem0.device)
    minus.scatter_(1, plus, torch.arange(m, device=rem0.device).expand(d1, m))
    return torch.stack([plus, minus[:, :m]], 1)


def _simplices(emb: Embedding, group: torch.Tensor, groups: int):
    """Sort the points by enclosing simplex (one int64 key per point, ``_code``).

    Returns the order (sorted position -> point), the simplex of every sorted point (P,),
    nondecreasing, the points per simplex (S,) and one representative point per simplex (S,).
    """
    d1, num = emb.rank.shape
    d = d1 - 1
    cell = torch.div(emb.rem0[:d], d1, rounding_mode="floor")  # rem0 is a multiple of d + 1
    lo = cell.amin(1, keepdim=True)
    radix = (cell.amax(1, keepdim=True) - lo + 1).view(-1).tolist()
    cell -= lo
    # The rank is a permutation of 0..d, so its first d entries identify it.
    digits = [(group, groups)] + [(emb.rank[j], d1) for j in range(d - 1, -1, -1)]
    key = _code(digits + [(cell[j], radix[j]) for j in range(d - 1, -1, -1)])
    sorted_key, order = torch.sort(key)
    new = torch.ones_like(sorted_key, dtype=torch.bool)
    new[1:] = sorted_key[1:] != sorted_key[:-1]
    first = new.nonzero().squeeze(1)
    counts = torch.diff(first, append=first.new_tensor([num]))
    return order, new.cumsum(0) - 1, counts, order[first]


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """``inverse[order[i]] == i``."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return inverse


def _csr(crow, col, values, shape) -> torch.Tensor:
    """A CSR matrix, with int32 indices when they fit: MKL's sparse products take int32, and
    int64 indices would be converted on every product (measured ~1 ms each on a CamVid frame)."""
    if values.numel() < 2**31 and max(shape) < 2**31:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    with warnings.catch_warnings():  # torch calls sparse CSR "beta"; users need not hear it
        warnings.filterwarnings("ignore", ".*[Ss]parse.*", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


@dataclass(frozen=True)
class Lattice:
    """One kernel's permutohedral lattice over P points (one image or several).

    It works on the points in ``order`` (sorted by simplex): ``filter`` takes and returns values
    in that order (``values[i]`` belongs to point ``order[i]``). With M vertices (index M is a
    zero "missing" vertex): ``splat`` (M+1, P) sums the barycentric-weighted points into the
    vertices, ``slice_`` (P, M+1) interpolates vertex values back to the points, and
    ``neighbours`` (d+1, 2, M) in [0, M] are the blur neighbours along each lattice axis.
    ``alpha = 1 / (1 + 2^-d)`` is pydensecrf's constant.
    """

    order: torch.Tensor
    splat: torch.Tensor
    slice_: torch.Tensor
    neighbours: torch.Tensor
    alpha: float

    @property
    def num_vertices(self) -> int:
        return self.neighbours.shape[2]

    @property
    def num_points(self) -> int:
        return self.order.numel()

    @property
    def num_corners(self) -> int:
        """Point-vertex pairs, (d+1) P: the work of one splat or slice."""
        return self.slice_.values().numel()

    def blur(self, values: torch.Tensor) -> torch.Tensor:
        """Convolve (M+1, C) vertex values in place with ``[1/2, 1, 1/2]`` along every axis."""
        inner = values[:-1]
        for nbr in self.neighbours:
            # index_select copies, so the in-place update reads the pre-axis values.
            ends = values.index_select(0, nbr.view(-1)).view(2, -1, values.shape[1])
            inner.add_(ends[0] + ends[1], alpha=0.5)
        return values

    def filter(self, values: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``scale * alpha * (slice . blur . splat)(values)`` for (P, C) values, both in
        ``order`` (sorted points)."""
        return self.slice_ @ self.blur(self.splat @ values).mul_(scale * self.alpha)

    def reordered(self, order: torch.Tensor) -> Lattice:
        """The same lattice working on the points in another ``order``: two kernels' lattices can
        then filter one array without permuting it for each (splat columns and slice rows move;
        the splat then reads points out of order, which costs less than permuting them)."""
        num = order.numel()
        position = inverse_permutation(order)
        rows = inverse_permutation(self.order).index_select(0, order)  # our row of each point
        splat = _csr(
            self.splat.crow_indices(),
            position.index_select(0, self.order.index_select(0, self.splat.col_indices())),
            self.splat.values(),
            self.splat.shape,
        )
        slice_ = _csr(
            self.slice_.crow_indices(),
            self.slice_.col_indices().view(num, -1).index_select(0, rows).view(-1),
            self.slice_.values().view(num, -1).index_select(0, rows).view(-1),
            self.slice_.shape,
        )
        return replace(self, order=order, splat=splat, slice_=slice_)

    def normalised(self) -> Lattice:
        """pydensecrf's symmetric normalisation: ``n_i = (sum_j k(f_i, f_j))^-1/2`` applied to
        the splat (each point's values) and to the slice (each point's result)."""
        num = self.slice_.shape[0]
        ones = torch.ones(num, 1, dtype=self.slice_.dtype, device=self.slice_.device)
        norm = (self.filter(ones)[:, 0] + 1e-20).rsqrt()  # in sorted order, like both matrices
        cols = self.splat.col_indices()
        splat = _csr(
            self.splat.crow_indices(),
            cols,
            self.splat.values() * norm.index_select(0, cols),
            self.splat.shape,
        )
        slice_ = _csr(
            self.slice_.crow_indices(),
            self.slice_.col_indices(),
            (self.slice_.values().view(num, -1) * norm[:, None]).view(-1),
            self.slice_.shape,
        )
        return replace(self, splat=splat, slice_=slice_)


@dataclass(frozen=True)
class Stacked:
    """Several kernels' lattices over the same points in the same ``order``, filtered together:
    one splat product into all their vertices (stacked), a blur per lattice, and one slice
    product that also sums the kernels (two products per step instead of two per kernel)."""

    order: torch.Tensor
    splat: torch.Tensor  # (sum (M_k + 1), P)
    slice_: torch.Tensor  # (P, sum (M_k + 1))
    lattices: tuple[Lattice, ...]
    starts: tuple[int, ...]  # first stacked vertex row of each lattice

    def filter(self, values: torch.Tensor, scales: list[float]) -> torch.Tensor:
        """``sum_k scales[k] * lattice_k.filter(values)`` for (P, C) values in ``order``."""
        vertex = self.splat @ values
        for lattice, start, scale in zip(self.lattices, self.starts, scales, strict=True):
            block = vertex[start : start + lattice.num_vertices + 1]
            lattice.blur(block).mul_(scale * lattice.alpha)
        return self.slice_ @ vertex


def stack(lattices: list[Lattice]) -> Stacked:
    """Stack lattices that share one point ``order`` (see ``Lattice.reordered``)."""
    order = lattices[0].order
    if any(lat.order is not order and not torch.equal(lat.order, order) for lat in lattices):
        raise ValueError("stacked lattices must share one point order; reorder them first")
    num = order.numel()
    sizes = [lat.num_vertices + 1 for lat in lattices]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    crows, nnz = [lattices[0].splat.crow_indices()], lattices[0].splat.values().numel()
    for lat in lattices[1:]:
        crows.append(lat.splat.crow_indices()[1:] + nnz)
        nnz += lat.splat.values().numel()
    splat = _csr(
        torch.cat(crows),
        torch.cat([lat.splat.col_indices() for lat in lattices]),
        torch.cat([lat.splat.values() for lat in lattices]),
        (sum(sizes), num),
    )
    corners = sum(lat.num_corners // num for lat in lattices)
    slice_ = _csr(
        torch.arange(0, num * corners + 1, corners, device=order.device),
        torch.cat(
            [
                lat.slice_.col_indices().view(num, -1) + start
                for lat, start in zip(lattices, starts, strict=True)
            ],
            1,
        ).view(-1),
        torch.cat([lat.slice_.values().view(num, -1) for lat in lattices], 1).view(-1),
        (num, sum(sizes)),
    )
    return Stacked(order, splat, slice_, tuple(lattices), tuple(starts))


def build(f: torch.Tensor, group: torch.Tensor | None = None, groups: int = 1) -> Lattice:
    """Build the (unnormalised) lattice of features ``f`` (P, d), already divided by the stds.

    ``group`` (P,) is the image index of every point (lattices never connect two images),
    ``groups`` the number of images; None means a single image.
    """
    num, d = f.shape
    d1 = d + 1
    if group is None:
        group = torch.zeros(num, dtype=torch.int64, device=f.device)
    check_features(f.abs().amax(0).tolist(), torch.finfo(f.dtype).eps)
    emb = embed(f)
    order, simplex, counts, rep = _simplices(emb, group, groups)  # simplex: of sorted points
    s = counts.numel()

    rem0, rank, rep_group = emb.rem0.index_select(1, rep), emb.rank.index_select(1, rep), group[rep]
    lo, radix = _box(rem0)
    exact = fits(math.prod(radix.tolist()), groups)
    if exact:
        codes, strides = _codes(rem0, rank, rep_group, groups, lo, radix)
    else:
        codes = _row_codes(rem0, rank, rep_group, groups, lo, radix)
    sorted_codes, corner_order = torch.sort(codes.view(-1))  # (r, s) corners, r-major
    new = torch.ones_like(sorted_codes, dtype=torch.bool)
    new[1:] = sorted_codes[1:] != sorted_codes[:-1]
    uniq = sorted_codes[new]
    m = uniq.numel()
    vertex_of_sorted = new.cumsum(0) - 1
    corner_vertex = torch.empty_like(corner_order)  # vertex of corner r*S + s
    corner_vertex[corner_order] = vertex_of_sorted

    # Along axis j a vertex's neighbours are key - 1 with coordinate j at +d, and the mirror
    # image; axis d is the implicit last coordinate (keys sum to 0), so all others move by -1.
    if exact:
        eye = torch.eye(d1, d, dtype=torch.int64, device=f.device)
        step = ((eye * d1 - 1) * strides).sum(1)
        both = torch.stack([uniq + step[:, None], uniq - step[:, None]], 1)  # (d+1, 2, M)
        pos = torch.searchsorted(uniq, both).clamp_(max=m - 1)
        neighbours = torch.where(uniq[pos] == both, pos, m)
    else:
        neighbours = _row_neighbours(rem0, rank, rep_group, corner_order[new])

    # Splat: vertex rows, each the runs of sorted points of the simplices that have it as a
    # corner (corners taken in vertex order), weighted by the barycentric weight of that corner.
    # Entry (r, i) goes to its corner's run start plus i's place in its simplex (a counting
    # sort: one scatter, no sort of the (d+1) P entries).
    weights = emb.weights.index_select(1, order)  # (d+1, P), sorted points
    lengths = counts[corner_order % s]
    run_start = torch.empty_like(corner_order)
    run_start[corner_order] = lengths.cumsum(0) - lengths
    first = counts.cumsum(0) - counts
    place = torch.arange(num, device=f.device) - first.index_select(0, simplex)
    dest = (run_start.view(d1, s).index_select(1, simplex) + place).view(-1)
    splat_cols = torch.empty_like(dest)
    splat_cols[dest] = torch.arange(num, device=f.device).repeat(d1)
    splat_values = torch.empty_like(weights).view(-1)
    splat_values[dest] = weights.view(-1)
    per_vertex = torch.zeros(m + 1, dtype=torch.int64, device=f.device)
    per_vertex.index_add_(0, vertex_of_sorted, lengths)
    splat = _csr(
        torch.cat([per_vertex.new_zeros(1), per_vertex.cumsum(0)]),
        splat_cols,
        splat_values,
        (m + 1, num),
    )
    # Slice: each sorted point reads the d+1 vertices of its simplex.
    slice_cols = corner_vertex.view(d1, s).T.contiguous().index_select(0, simplex).view(-1)
    slice_crow = torch.arange(0, num * d1 + 1, d1, device=f.device)
    slice_ = _csr(slice_crow, slice_cols, weights.T.reshape(-1), (num, m + 1))
    return Lattice(
        order=order,
        splat=splat,
        slice_=slice_,
        neighbours=neighbours,
        alpha=1.0 / (1.0 + 2.0**-d),
    )
