"""Permutohedral lattice (Adams, Baek and Davis 2010) in PyTorch, as used by pydensecrf.

A lattice is built once from per-point features ``f`` (P, d) and then filters any number of
value maps. ``filter(v) ~ alpha * sum_j exp(-|f_i - f_j|^2 / 2) v_j`` up to the lattice's
approximation error and a constant scale ``c`` that symmetric normalisation cancels.

Several lattices (e.g. the Gaussian and bilateral kernels of every image in a batch) are merged
into one :class:`Lattice` so that one splat / blur / slice pass filters them all at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Embedding:
    """Where each of P points lands on one lattice of dimension d."""

    keys: torch.Tensor  # (P, d+1, d) int64: integer coordinates of the enclosing simplex' vertices
    weights: torch.Tensor  # (P, d+1) barycentric weights of those vertices


def embed(f: torch.Tensor) -> Embedding:
    """Find the enclosing simplex and barycentric weights of every feature vector ``f`` (P, d).

    Follows Adams et al. (2010) exactly as pydensecrf's ``Permutohedral::init`` does (same
    elevation, rounding half to even, rank tie-breaking), so the lattices coincide.
    """
    num, d = f.shape
    d1 = d + 1
    i = torch.arange(d, device=f.device, dtype=f.dtype)
    # Elevation E f onto the hyperplane sum = 0, scaled so the blur has std 1 in feature space.
    scale = math.sqrt(2.0 / 3.0) * d1 / torch.sqrt((i + 2) * (i + 1))
    cf = f * scale
    tail = cf.flip(1).cumsum(1).flip(1)  # tail[:, j] = sum_{k >= j} cf[:, k]
    elevated = torch.cat([tail, torch.zeros_like(tail[:, :1])], 1)
    elevated[:, 1:] -= torch.arange(1, d1, device=f.device, dtype=f.dtype) * cf

    # Nearest remainder-0 lattice point, then the permutation (rank) of the residual.
    down = torch.round(elevated * (1.0 / d1))
    rem0 = down * d1
    total = down.sum(1, keepdim=True).to(torch.int64)
    resid = elevated - rem0
    less = resid[:, :, None] < resid[:, None, :]  # less[p, a, b] = resid_a < resid_b
    upper = torch.ones(d1, d1, dtype=torch.bool, device=f.device).triu(1)
    # rank_a = #{b > a : r_a < r_b} + #{b < a : not r_b < r_a}; ties go to the lower index.
    rank = (less & upper).sum(2) + (~less & upper).sum(1) + total
    wrap = (rank < 0).to(torch.int64) - (rank > d).to(torch.int64)
    rank += wrap * d1
    rem0 = rem0.to(torch.int64) + wrap * d1

    v = (elevated - rem0.to(f.dtype)) * (1.0 / d1)
    bary = torch.zeros(num, d1 + 1, dtype=f.dtype, device=f.device)
    bary.scatter_add_(1, d - rank, v)
    bary.scatter_add_(1, d - rank + 1, -v)
    bary[:, 0] += 1.0 + bary[:, d1]

    # Vertex r of the simplex: rem0 + r, minus d+1 where the coordinate ranks above d - r.
    r = torch.arange(d1, device=f.device)
    keys = rem0[:, None, :d] + r[None, :, None]
    keys -= d1 * (rank[:, None, :d] > d - r[None, :, None]).to(torch.int64)
    return Embedding(keys, bary[:, :d1])


def _codes(keys: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed-radix int64 codes of integer keys (P, d+1, d) tagged with their image ``group`` (P,).

    Every coordinate gets d+1 of headroom so a blur neighbour's code is ``code +- step @
    strides`` and never aliases another image or coordinate. Returns codes and strides.
    """
    d1 = keys.shape[1]
    flat = keys.reshape(-1, keys.shape[-1])
    lo = flat.amin(0) - d1
    radix = flat.amax(0) + d1 - lo + 1
    num_groups = int(group.max()) + 1
    if math.prod(radix.tolist()) * num_groups >= 2**62:
        raise ValueError(
            "dense CRF lattice too large to hash: a standard deviation is tiny compared with the "
            "image size or colour range; use larger stds or split the batch"
        )
    strides = torch.cumprod(torch.cat([radix.new_ones(1), radix[:-1]]), 0)
    codes = ((keys - lo) * strides).sum(-1) + (group * radix.prod())[:, None]
    return codes, strides


def _hash(emb: Embedding, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Number the lattice vertices of an embedding; find their blur neighbours.

    Returns ``vertex`` (P, d+1) in [0, M) and ``neighbours`` (d+1, 2, M) in [0, M], where M
    marks a neighbour that no point touches (its value is always zero).
    """
    num, d1, d = emb.keys.shape
    codes, strides = _codes(emb.keys, group)
    flat = codes.view(-1)
    uniq, inverse = torch.unique(flat, return_inverse=True)
    m = uniq.numel()
    # Number vertices by first use in pixel order so that nearby pixels touch nearby memory.
    first = torch.full_like(uniq, flat.numel()).scatter_reduce_(
        0, inverse, torch.arange(flat.numel(), device=flat.device), "amin"
    )
    order = torch.argsort(first)
    renumber = torch.empty_like(order)
    renumber[order] = torch.arange(m, device=order.device)
    renumber = torch.cat([renumber, renumber.new_full((1,), m)])

    # Along axis j a vertex's neighbours are key - 1 with coordinate j at +d, and the mirror
    # image; axis d is the implicit last coordinate (sum of a key is 0), so all move by -1.
    step = ((torch.eye(d1, d, dtype=torch.int64, device=flat.device) * d1 - 1) * strides).sum(1)
    vcodes = uniq[order]
    both = torch.stack([vcodes + step[:, None], vcodes - step[:, None]], 1)  # (d+1, 2, M)
    pos = torch.searchsorted(uniq, both).clamp_(max=m - 1)
    pos = torch.where(uniq[pos] == both, pos, m)
    return renumber[inverse].view(num, d1), renumber[pos]


@dataclass(frozen=True)
class Lattice:
    """Several permutohedral lattices (one per kernel and image) merged into one index space.

    Point p has E vertices ``vertex[p]`` with barycentric weights ``weights[p]``; columns
    ``columns[k]`` of those belong to kernel k. Vertices are numbered kernel by kernel in
    order of increasing dimension; index M (``num_vertices``) is a vertex that stays zero.
    ``neighbours[j]`` (2, M - starts[j]) lists both blur neighbours along axis j of vertices
    ``starts[j]:M`` (lower-dimensional kernels have fewer axes).
    """

    vertex: torch.Tensor
    weights: torch.Tensor
    columns: tuple[slice, ...]
    alphas: tuple[float, ...]
    neighbours: tuple[torch.Tensor, ...]
    starts: tuple[int, ...]
    num_vertices: int

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
        """Sparse splat (M+1, P) and slice (P, M+1) matrices with per-entry scales (P, E).

        The slice already includes each kernel's magic constant alpha = 1 / (1 + 2^-d).
        """
        num, e = self.vertex.shape
        alpha = torch.cat(
            [
                self.weights.new_full((c.stop - c.start,), a)
                for c, a in zip(self.columns, self.alphas, strict=True)
            ]
        )
        m1 = self.num_vertices + 1
        cols = self.vertex.reshape(-1)
        crow = torch.arange(0, num * e + 1, e, device=cols.device)
        slice_ = torch.sparse_csr_tensor(
            crow, cols, (self.weights * alpha * slice_scale).reshape(-1), (num, m1)
        )
        order = torch.argsort(cols, stable=True)
        counts = torch.bincount(cols, minlength=m1)
        splat_crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        points = torch.arange(num, device=cols.device).repeat_interleave(e)[order]
        splat = torch.sparse_csr_tensor(
            splat_crow, points, (self.weights * splat_scale).reshape(-1)[order], (m1, num)
        )
        return splat, slice_

    def filter_each(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Unnormalised filter of (P, C) values by each kernel separately (for normalisation)."""
        ones = torch.ones_like(self.weights)
        splat, _ = self.operators(ones, ones)
        blurred = self.blur(splat @ values)
        out = []
        for c, a in zip(self.columns, self.alphas, strict=True):
            gathered = blurred[self.vertex[:, c]]  # (P, d+1, C)
            out.append(a * (self.weights[:, c, None] * gathered).sum(1))
        return out


def build(features: list[torch.Tensor], group: torch.Tensor) -> Lattice:
    """Build the merged lattice of several kernels over the same P points.

    ``features[k]`` (P, d_k) are the kernel-k features (already divided by their stds);
    ``group`` (P,) says which image each point belongs to (lattices never mix images).
    """
    dims = [f.shape[1] for f in features]
    order = sorted(range(len(features)), key=dims.__getitem__)
    vertex, weights, columns, alphas, neighbours, sizes = [], [], [], [], [], []
    col = 0
    for k in order:
        emb = embed(features[k])
        v, nbr = _hash(emb, group)
        vertex.append(v)
        weights.append(emb.weights)
        columns.append(slice(col, col + dims[k] + 1))
        alphas.append(1.0 / (1.0 + 2.0 ** -dims[k]))
        neighbours.append(nbr)
        sizes.append(nbr.shape[-1])
        col += dims[k] + 1
    m = sum(sizes)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    for i, (off, size) in enumerate(zip(offsets, sizes, strict=True)):
        vertex[i] = vertex[i] + off
        nb = neighbours[i]
        neighbours[i] = torch.where(nb == size, m, nb + off)
    axes, starts = [], []
    for j in range(max(dims) + 1):
        live = [i for i in range(len(order)) if dims[order[i]] + 1 > j]
        axes.append(torch.cat([neighbours[i][j] for i in live], 1).contiguous())
        starts.append(offsets[live[0]])
    # Undo the sort so columns follow the callers' kernel order.
    inv = [order.index(k) for k in range(len(features))]
    return Lattice(
        vertex=torch.cat(vertex, 1).contiguous(),
        weights=torch.cat(weights, 1).contiguous(),
        columns=tuple(columns[i] for i in inv),
        alphas=tuple(alphas[i] for i in inv),
        neighbours=tuple(axes),
        starts=tuple(starts),
        num_vertices=m,
    )
