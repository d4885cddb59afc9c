"""Permutohedral lattice (Adams, Baek and Davis 2010) in PyTorch, as pydensecrf uses it.

For features ``f`` (P, d) the lattice filter approximates ``c * sum_j exp(-|f_i - f_j|^2 / 2)
v_j`` with a constant ``c`` that symmetric normalisation cancels. Splatting and slicing are
sparse matrices (CSR), blurring is a gather along each of the d+1 lattice axes.

The lattices of several kernels and of every image in a batch are merged into one index space
so that a single splat / blur / slice pass filters all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    rank = torch.zeros(d1, num, dtype=torch.int64, device=f.device)
    for a in range(d1):
        for b in range(a + 1, d1):
            less = resid[a] < resid[b]  # ties rank the lower index higher, as pydensecrf
            rank[a] += less
            rank[b] += ~less
    rank += down.sum(0).to(torch.int64)
    # A point off the sum-0 plane is brought back by moving its extreme coordinates.
    wrap = (rank < 0).to(torch.int64) - (rank > d).to(torch.int64)
    rank += wrap * d1
    rem0 = rem0.to(torch.int64) + wrap * d1

    v = (elevated - rem0.to(f.dtype)) * (1.0 / d1)
    bary = torch.zeros(d1 + 1, num, dtype=f.dtype, device=f.device)
    bary.scatter_add_(0, d - rank, v)
    bary.scatter_add_(0, d - rank + 1, -v)
    bary[0] += 1.0 + bary[d1]
    return Embedding(rem0, rank, bary[:d1])


def _codes(emb: Embedding, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed-radix int64 codes (P, d+1) of the simplex vertices, tagged with the image ``group``.

    Vertex r has coordinates ``rem0 + r - (d+1) [rank > d - r]`` (only the first d are kept:
    they sum to 0). Every coordinate has 2(d+1) of headroom so that blur neighbours' codes are
    ``code + step @ strides`` and never alias. Returns the codes and the strides (d,).
    """
    d1, num = emb.rem0.shape
    d = d1 - 1
    rem0 = emb.rem0[:d]
    lo = rem0.amin(1) - 2 * d1
    radix = rem0.amax(1) + 2 * d1 - lo + 1
    groups = int(group[-1]) + 1
    if math.prod(radix.tolist()) * groups >= 2**62:
        raise ValueError(
            "dense CRF lattice too large to hash: a standard deviation is tiny compared with the "
            "image size or colour range; use larger stds or split the batch"
        )
    strides = torch.cumprod(torch.cat([radix.new_ones(1), radix[:-1]]), 0)
    base = ((rem0 - lo[:, None]) * strides[:, None]).sum(0) + group * radix.prod()
    # sum_i strides_i [rank_i > d - r] for every r, via a suffix sum over rank values.
    by_rank = torch.zeros(d1 + 1, num, dtype=torch.int64, device=rem0.device)
    by_rank.scatter_add_(0, emb.rank[:d], strides[:, None].expand(d, num))
    above = by_rank.flip(0).cumsum(0)[:d1]  # above[r] = sum over ranks >= d + 1 - r
    r = torch.arange(d1, device=rem0.device)[:, None]
    codes = base + r * strides.sum() - d1 * above
    return codes.T.contiguous(), strides


@dataclass(frozen=True)
class _Hashed:
    vertex: torch.Tensor  # (P, d+1) vertex index of every simplex corner
    order: torch.Tensor  # (P*(d+1),) corners sorted by vertex
    counts: torch.Tensor  # (M,) corners per vertex
    neighbours: torch.Tensor  # (d+1, 2, M) in [0, M]; M = no such vertex


def _hash(emb: Embedding, group: torch.Tensor) -> _Hashed:
    """Number the distinct lattice vertices (one sort) and find their blur neighbours."""
    d1, num = emb.rem0.shape
    d = d1 - 1
    codes, strides = _codes(emb, group)
    sorted_codes, order = torch.sort(codes.view(-1))
    new = torch.ones_like(sorted_codes, dtype=torch.bool)
    new[1:] = sorted_codes[1:] != sorted_codes[:-1]
    uniq = sorted_codes[new]
    m = uniq.numel()
    vertex = torch.empty_like(order)
    vertex[order] = new.cumsum(0) - 1
    counts = torch.bincount(vertex, minlength=m)

    # Along axis j a vertex's neighbours are key - 1 with coordinate j at +d, and the mirror
    # image; axis d is the implicit last coordinate (keys sum to 0), so all others move by -1.
    eye = torch.eye(d1, d, dtype=torch.int64, device=codes.device)
    step = ((eye * d1 - 1) * strides).sum(1)
    both = torch.stack([uniq + step[:, None], uniq - step[:, None]], 1)  # (d+1, 2, M)
    pos = torch.searchsorted(uniq, both).clamp_(max=m - 1)
    neighbours = torch.where(uniq[pos] == both, pos, m)
    return _Hashed(vertex.view(num, d1), order, counts, neighbours)


@dataclass(frozen=True)
class Lattice:
    """Several permutohedral lattices (one per kernel and image) merged into one index space.

    Point p touches E vertices ``vertex[p]`` with barycentric weights ``weights[p]``; columns
    ``columns[k]`` belong to kernel k, whose filter carries the constant ``alphas[k]``.
    Vertices are numbered kernel by kernel in order of increasing dimension; vertex M
    (``num_vertices``) stands for missing neighbours and stays zero. ``neighbours[j]``
    (2, M - starts[j]) holds both blur neighbours along axis j of vertices ``starts[j]:M``
    (lower-dimensional kernels have fewer axes). ``splat_order`` lists the flattened (P, E)
    entries grouped by vertex, ``splat_crow`` delimits the groups.
    """

    vertex: torch.Tensor
    weights: torch.Tensor
    columns: tuple[slice, ...]
    alphas: tuple[float, ...]
    neighbours: tuple[torch.Tensor, ...]
    starts: tuple[int, ...]
    splat_order: torch.Tensor
    splat_crow: torch.Tensor

    @property
    def num_vertices(self) -> int:
        return self.splat_crow.numel() - 2

    def blur(self, values: torch.Tensor) -> torch.Tensor:
        """Convolve (M+1, C) vertex values with ``[1/2, 1, 1/2]`` along every lattice axis."""
        half = values.new_tensor(0.5)
        for nbr, start in zip(self.neighbours, self.starts, strict=True):
            ends = values.index_select(0, nbr.view(-1)).view(2, -1, values.shape[1])
            blurred = torch.addcmul(values[start:-1], ends[0] + ends[1], half)
            values = torch.cat([values[:start], blurred, values[-1:]])
        return values

    def operators(
        self, splat_scale: torch.Tensor, slice_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse splat (M+1, P) and slice (P, M+1) matrices, entries scaled by (P, E) factors.

        The slice includes each kernel's constant alpha = 1 / (1 + 2^-d), as pydensecrf's.
        """
        num, e = self.vertex.shape
        m1 = self.num_vertices + 1
        alpha = torch.empty(e, dtype=self.weights.dtype, device=self.weights.device)
        for c, a in zip(self.columns, self.alphas, strict=True):
            alpha[c] = a
        slice_values = (self.weights * alpha * slice_scale).view(-1)
        crow = torch.arange(0, num * e + 1, e, device=self.vertex.device)
        slice_ = torch.sparse_csr_tensor(crow, self.vertex.view(-1), slice_values, (num, m1))
        splat_values = (self.weights * splat_scale).view(-1)[self.splat_order]
        points = torch.div(self.splat_order, e, rounding_mode="floor")
        splat = torch.sparse_csr_tensor(self.splat_crow, points, splat_values, (m1, num))
        return splat, slice_

    def filter_each(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Unnormalised filter of (P, C) values by each kernel separately."""
        ones = torch.ones_like(self.weights)
        splat, _ = self.operators(ones, ones)
        blurred = self.blur(splat @ values)
        return [
            a * (self.weights[:, c, None] * blurred[self.vertex[:, c]]).sum(1)
            for c, a in zip(self.columns, self.alphas, strict=True)
        ]


def build(features: list[torch.Tensor], group: torch.Tensor) -> Lattice:
    """Build the merged lattice of several kernels over the same P points.

    ``features[k]`` (P, d_k) are kernel k's features, already divided by their stds;
    ``group`` (P,) sorted image index of each point (lattices never connect two images).
    """
    num = group.numel()
    dims = [f.shape[1] for f in features]
    kernels = sorted(range(len(features)), key=dims.__getitem__)
    e = sum(d + 1 for d in dims)
    starts_k, col = {}, 0
    for k in range(len(features)):
        starts_k[k] = col
        col += dims[k] + 1

    vertex = torch.empty(num, e, dtype=torch.int64, device=group.device)
    weights = torch.empty(num, e, dtype=features[0].dtype, device=group.device)
    offsets, hashed = [], []
    m = 0
    for k in kernels:
        emb = embed(features[k])
        h = _hash(emb, group)
        c = slice(starts_k[k], starts_k[k] + dims[k] + 1)
        vertex[:, c] = h.vertex + m
        weights[:, c] = emb.weights.T
        offsets.append(m)
        hashed.append(h)
        m += h.counts.numel()

    orders, counts, axes, starts = [], [], [], []
    for k, h in zip(kernels, hashed, strict=True):
        d1 = dims[k] + 1
        # Corner (p, r) of kernel k is entry p * E + start_k + r of the merged (P, E) layout.
        orders.append(
            torch.div(h.order, d1, rounding_mode="floor") * e + starts_k[k] + h.order % d1
        )
        counts.append(h.counts)
    counts.append(counts[0].new_zeros(1))  # the always-zero vertex M
    crow = torch.cat([counts[0].new_zeros(1), torch.cat(counts).cumsum(0)])
    for j in range(max(dims) + 1):
        live = [i for i, k in enumerate(kernels) if dims[k] + 1 > j]
        parts = []
        for i in live:
            nbr = hashed[i].neighbours[j]
            size = hashed[i].counts.numel()
            parts.append(torch.where(nbr == size, m, nbr + offsets[i]))
        axes.append(torch.cat(parts, 1).contiguous())
        starts.append(offsets[live[0]])
    return Lattice(
        vertex=vertex,
        weights=weights,
        columns=tuple(slice(starts_k[k], starts_k[k] + dims[k] + 1) for k in range(len(dims))),
        alphas=tuple(1.0 / (1.0 + 2.0**-d) for d in dims),
        neighbours=tuple(axes),
        starts=tuple(starts),
        splat_order=torch.cat(orders),
        splat_crow=crow,
    )
