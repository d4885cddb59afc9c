"""Permutohedral lattice (Adams, Baek and Davis 2010) in PyTorch, as pydensecrf uses it.

For features ``f`` (P, d) the lattice filter approximates ``c * sum_j exp(-|f_i - f_j|^2 / 2)
v_j`` with a constant ``c`` that symmetric normalisation cancels.

Speed. Every point lies in one lattice simplex, and real images put many points (pixels) in
the same simplex: for a 480x360 CamVid frame the bilateral kernel (d = 5) has ~173k points but
only a few ten thousand simplices and ~10k vertices. So the build hashes one key per *point*
(its simplex) and the (d+1)-fold vertex keys only once per *simplex*; and splatting runs in
two sparse products, points -> (simplex, corner) rows, whose columns are the points sorted by
simplex (memory-friendly, no sort of the P (d+1) corners), then (simplex, corner) -> vertex.
Slicing is one sparse product from the (simplex, corner) rows back to the points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Embedding:
    """Where P points land on a d-dimensional lattice: their enclosing simplex.

    Coordinates come first (d+1, P) so that per-coordinate work runs on contiguous rows.
    """

    rem0: torch.Tensor  # (d+1, P) int64: the nearest remainder-0 lattice point
    rank: torch.Tensor  # (d+1, P) int64: rank of each coordinate's residual (0 = largest)
    weights: torch.Tensor  # (d+1, P): barycentric weight of simplex vertex r (remainder r)


def embed(f: torch.Tensor) -> Embedding:
    """Find the enclosing simplex and barycentric weights of every feature vector ``f`` (P, d).

    Follows Adams et al. (2010) as pydensecrf's ``Permutohedral::init`` does (same elevation,
    rounding half to even, rank tie-breaking), so both build the same lattice.
    """
    num, d = f.shape
    d1 = d + 1
    i = torch.arange(d, device=f.device, dtype=f.dtype)[:, None]
    # Elevation onto the hyperplane sum = 0, scaled so the blur has std 1 in feature space.
    cf = f.T * (math.sqrt(2.0 / 3.0) * d1 / torch.sqrt((i + 2) * (i + 1)))
    elevated = torch.zeros(d1, num, dtype=f.dtype, device=f.device)
    elevated[:d] = cf.flip(0).cumsum(0).flip(0)  # sum_{k >= j} cf_k
    elevated[1:] -= (i + 1) * cf

    down = torch.round(elevated * (1.0 / d1))
    rem0 = down * d1
    resid = elevated - rem0
    # rank[a] = #{b: resid_b > resid_a} + #{b < a: resid_b == resid_a}: ties rank the lower
    # index higher, as pydensecrf. d+1 row-vs-all passes in int8 (measured 3x faster than
    # int64 pair passes, 2x faster than one (d+1, d+1, P) comparison or a sort along d+1).
    rank = torch.zeros(d1, num, dtype=torch.int8, device=f.device)
    for b in range(d1):
        rank += resid[b] > resid
        rank[b + 1 :] += resid[b] == resid[b + 1 :]
    rank += down.sum(0).to(torch.int8)  # |sum| <= d + 1: the elevated point sums to 0
    # A point off the sum-0 plane is brought back by moving its extreme coordinates.
    wrap = (rank < 0).to(torch.int8) - (rank > d).to(torch.int8)
    rank += wrap * d1
    rank = rank.to(torch.int64)
    rem0 = rem0.to(torch.int64) + wrap * d1

    v = (elevated - rem0.to(f.dtype)) * (1.0 / d1)
    bary = torch.zeros(d1 + 1, num, dtype=f.dtype, device=f.device)
    bary.scatter_add_(0, d - rank, v)
    bary.scatter_add_(0, d - rank + 1, -v)
    bary[0] += 1.0 + bary[d1]
    return Embedding(rem0, rank, bary[:d1])


def _check_size(cells: int, groups: int) -> None:
    if cells * groups >= 2**62:
        raise ValueError(
            "dense CRF lattice too large to hash: a standard deviation is tiny compared with the "
            "image size or colour range; use larger stds or split the batch"
        )


def _codes(rem0: torch.Tensor, rank: torch.Tensor, group: torch.Tensor, groups: int):
    """Mixed-radix int64 codes (d+1, S) of the vertices of S simplices, tagged with the image.

    Vertex r has coordinates ``rem0 + r - (d+1) [rank > d - r]`` (only the first d are kept:
    they sum to 0). Every coordinate has 2(d+1) of headroom so that blur neighbours' codes are
    ``code + step @ strides`` and never alias. Returns the codes and the strides (d,).
    """
    d1, num = rem0.shape
    d = d1 - 1
    rem0 = rem0[:d]
    lo = rem0.amin(1) - 2 * d1
    radix = rem0.amax(1) + 2 * d1 - lo + 1
    _check_size(math.prod(radix.tolist()), groups)
    strides = torch.cumprod(torch.cat([radix.new_ones(1), radix[:-1]]), 0)
    base = ((rem0 - lo[:, None]) * strides[:, None]).sum(0) + group * radix.prod()
    # sum_i strides_i [rank_i > d - r] for every r, via a suffix sum over rank values.
    by_rank = torch.zeros(d1 + 1, num, dtype=torch.int64, device=rem0.device)
    by_rank.scatter_add_(0, rank[:d], strides[:, None].expand(d, num))
    above = by_rank.flip(0).cumsum(0)[:d1]  # above[r] = sum over ranks >= d + 1 - r
    r = torch.arange(d1, device=rem0.device)[:, None]
    return base + r * strides.sum() - d1 * above, strides


def _simplices(emb: Embedding, group: torch.Tensor, groups: int):
    """Sort the points by enclosing simplex (one int64 key per point).

    Returns the order, the simplex index of every point (P,), the points per simplex (S,) and
    one representative point per simplex (S,).
    """
    d1, num = emb.rank.shape
    d = d1 - 1
    cell = torch.div(emb.rem0[:d], d1, rounding_mode="floor")  # rem0 is a multiple of d + 1
    lo = cell.amin(1)
    radix = cell.amax(1) - lo + 1
    # The rank is a permutation of 0..d, so its first d entries in base d+1 identify it.
    sizes = radix.tolist() + [d1] * d
    _check_size(math.prod(sizes), groups)
    strides = [math.prod(sizes[:j]) for j in range(2 * d)]
    offset = sum(int(lo_j) * st for lo_j, st in zip(lo.tolist(), strides, strict=False))
    digits = torch.cat([cell, emb.rank[:d]])
    key = (digits * digits.new_tensor(strides)[:, None]).sum(0)
    key += group * math.prod(sizes) - offset
    sorted_key, order = torch.sort(key)
    new = torch.ones_like(sorted_key, dtype=torch.bool)
    new[1:] = sorted_key[1:] != sorted_key[:-1]
    first = new.nonzero().squeeze(1)
    counts = torch.diff(first, append=first.new_tensor([num]))
    simplex = torch.empty_like(order)
    simplex[order] = new.cumsum(0) - 1
    return order, simplex, counts, order[first]


def _csr(crow, col, values, shape) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


@dataclass(frozen=True)
class Lattice:
    """One kernel's permutohedral lattice over P points (one image or several).

    With S simplices, E = d+1 corners each and M vertices (index M is a zero "missing" vertex):
    ``splat_points`` (E*S, P) sums each simplex's barycentric-weighted points per corner
    (row r*S + s); ``splat_vertices`` (M+1, E*S) adds the corners into their vertices;
    ``corner_vertex`` (E*S,) is the vertex of each corner; ``slice_`` (P, E*S) interpolates
    corner values back to the points; ``neighbours`` (d+1, 2, M) in [0, M] are the blur
    neighbours along each lattice axis. ``alpha = 1 / (1 + 2^-d)`` is pydensecrf's constant.
    """

    splat_points: torch.Tensor
    splat_vertices: torch.Tensor
    corner_vertex: torch.Tensor
    slice_: torch.Tensor
    neighbours: torch.Tensor
    alpha: float

    @property
    def num_vertices(self) -> int:
        return self.neighbours.shape[2]

    def blur(self, values: torch.Tensor) -> torch.Tensor:
        """Convolve (M+1, C) vertex values in place with ``[1/2, 1, 1/2]`` along every axis."""
        inner = values[:-1]
        for nbr in self.neighbours:
            # index_select copies, so the in-place update reads the pre-axis values.
            ends = values.index_select(0, nbr.view(-1)).view(2, -1, values.shape[1])
            inner.add_(ends[0] + ends[1], alpha=0.5)
        return values

    def filter(self, values: torch.Tensor, scale: float = 1.0, out=None) -> torch.Tensor:
        """``out + scale * alpha * (slice . blur . splat)(values)`` for (P, C) values."""
        vertex = self.blur(self.splat_vertices @ (self.splat_points @ values))
        corners = vertex.index_select(0, self.corner_vertex)
        if out is None:
            return self.slice_ @ corners.mul_(scale * self.alpha)
        return out.addmm_(self.slice_, corners, alpha=scale * self.alpha)

    def normalised(self) -> Lattice:
        """pydensecrf's symmetric normalisation: ``n_i = (sum_j k(f_i, f_j))^-1/2`` applied to
        the splat (each point's values) and to the slice (each point's result)."""
        num = self.slice_.shape[0]
        ones = torch.ones(num, 1, dtype=self.slice_.dtype, device=self.slice_.device)
        norm = (self.filter(ones)[:, 0] + 1e-20).rsqrt()
        cols = self.splat_points.col_indices()
        e = self.slice_.values().numel() // num
        # The splat's columns are the same sorted points repeated for every corner.
        sorted_norm = norm.index_select(0, cols[:num])
        splat = _csr(
            self.splat_points.crow_indices(),
            cols,
            (self.splat_points.values().view(e, num) * sorted_norm).view(-1),
            self.splat_points.shape,
        )
        slice_ = _csr(
            self.slice_.crow_indices(),
            self.slice_.col_indices(),
            (self.slice_.values().view(num, e) * norm[:, None]).view(-1),
            self.slice_.shape,
        )
        return replace(self, splat_points=splat, slice_=slice_)


def build(f: torch.Tensor, group: torch.Tensor | None = None, groups: int = 1) -> Lattice:
    """Build the (unnormalised) lattice of features ``f`` (P, d), already divided by the stds.

    ``group`` (P,) is the image index of every point (lattices never connect two images),
    ``groups`` the number of images; None means a single image.
    """
    num, d = f.shape
    d1 = d + 1
    if group is None:
        group = torch.zeros(num, dtype=torch.int64, device=f.device)
    emb = embed(f)
    order, simplex, counts, rep = _simplices(emb, group, groups)
    s = counts.numel()

    codes, strides = _codes(
        emb.rem0.index_select(1, rep), emb.rank.index_select(1, rep), group[rep], groups
    )
    sorted_codes, corner_order = torch.sort(codes.view(-1))  # (r, s) corners, r-major
    new = torch.ones_like(sorted_codes, dtype=torch.bool)
    new[1:] = sorted_codes[1:] != sorted_codes[:-1]
    uniq = sorted_codes[new]
    m = uniq.numel()
    corner_vertex = torch.empty_like(corner_order)
    corner_vertex[corner_order] = new.cumsum(0) - 1

    # Along axis j a vertex's neighbours are key - 1 with coordinate j at +d, and the mirror
    # image; axis d is the implicit last coordinate (keys sum to 0), so all others move by -1.
    eye = torch.eye(d1, d, dtype=torch.int64, device=f.device)
    step = ((eye * d1 - 1) * strides).sum(1)
    both = torch.stack([uniq + step[:, None], uniq - step[:, None]], 1)  # (d+1, 2, M)
    pos = torch.searchsorted(uniq, both).clamp_(max=m - 1)
    neighbours = torch.where(uniq[pos] == both, pos, m)

    e = torch.arange(d1, device=f.device)
    ends = counts.cumsum(0)
    splat_crow = torch.cat([ends.new_zeros(1), (ends + e[:, None] * num).view(-1)])
    splat_points = _csr(
        splat_crow, order.repeat(d1), emb.weights.index_select(1, order).view(-1), (d1 * s, num)
    )
    per_vertex = torch.bincount(corner_vertex, minlength=m + 1)
    vertex_crow = torch.cat([per_vertex.new_zeros(1), per_vertex.cumsum(0)])
    splat_vertices = _csr(vertex_crow, corner_order, f.new_ones(d1 * s), (m + 1, d1 * s))
    slice_cols = (simplex[:, None] + e * s).view(-1)
    slice_crow = torch.arange(0, num * d1 + 1, d1, device=f.device)
    slice_ = _csr(slice_crow, slice_cols, emb.weights.T.reshape(-1), (num, d1 * s))
    return Lattice(
        splat_points=splat_points,
        splat_vertices=splat_vertices,
        corner_vertex=corner_vertex,
        slice_=slice_,
        neighbours=neighbours,
        alpha=1.0 / (1.0 + 2.0**-d),
    )
