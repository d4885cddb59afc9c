"""Unary-Net and Pairwise-Net: the CNN potentials of the CRF, as scores (higher = more likely).

Both are two fully connected layers applied per node (per edge), written as 1x1 convolutions.
The Pairwise-Net's first layer on the ordered concatenation [f_p, f_q] is evaluated factorised,
W [f_p; f_q] + b = (W_a f_p + b) + W_b f_q, so the two halves are computed once per image as 1x1
convs and each grid offset only adds two shifted maps; edge features are never concatenated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from piecewise_crf.crf import GridPairwise, centre_interactions
from piecewise_crf.relations import Offset, offset_slices, offset_span


class UnaryNet(nn.Module):
    """Node features (B, C, h, w) -> unary scores z_p (B, K, h, w)."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(features)))


def offset_chunks(
    offsets: Sequence[Offset], grid_h: int, grid_w: int, max_edges: int
) -> Iterator[list[Offset]]:
    """Group offsets so each group holds at most `max_edges` edges per image (one offset at least)."""
    chunk: list[Offset] = []
    edges = 0
    for dy, dx in offsets:
        n = max(0, grid_h - abs(dy)) * max(0, grid_w - abs(dx))
        if n == 0:
            continue
        if chunk and edges + n > max_edges:
            yield chunk
            chunk, edges = [], 0
        chunk.append((dy, dx))
        edges += n
    if chunk:
        yield chunk


class PairwiseNet(nn.Module):
    """Ordered edge features [f_p, f_q] -> pairwise scores z_pq (K, K), z_pq[i, j] for y_p=i, y_q=j.

    On a grid, scores are produced per offset chunk. Peak memory of one chunk is
    B * max_edges * (hidden + K*K) floats (activations of both layers); the first-layer maps cost
    2 * B * hidden * h * w floats once per image.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc1 = nn.Conv2d(2 * in_channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, num_classes * num_classes, 1)

    def forward(self, f_p: Tensor, f_q: Tensor) -> Tensor:
        """Direct (unfactorised) evaluation on explicit pairs (B, C, ...) -> (B, K, K, ...)."""
        z = self.fc2(F.relu(self.fc1(torch.cat([f_p, f_q], dim=1))))
        k = self.num_classes
        return z.view(z.shape[0], k, k, *z.shape[2:])

    def first_layer_maps(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(W_a F + b, W_b F), each (B, hidden, h, w): the first layer's p- and q-halves."""
        c = features.shape[1]
        weight = self.fc1.weight
        if weight.shape[1] != 2 * c:
            raise ValueError(
                f"features have {c} channels but this Pairwise-Net expects {weight.shape[1] // 2}"
            )
        return F.conv2d(features, weight[:, :c], self.fc1.bias), F.conv2d(features, weight[:, c:])

    def flat_scores(self, maps: tuple[Tensor, Tensor], offsets: Sequence[Offset]) -> Tensor:
        """Scores (B, K*K, S) of all edges of `offsets`, offset-major then row-major over p.

        The offsets' hidden activations are concatenated so the K*K layer runs as one matmul.
        """
        a, b = maps
        hidden, h, w = map(int, a.shape[1:])  # ints under the ONNX tracer too
        parts = []
        for dy, dx in offsets:
            (pr, pc), (qr, qc) = offset_slices(h, w, dy, dx)
            parts.append(F.relu(a[:, :, pr, pc] + b[:, :, qr, qc]).flatten(2))
        flat = torch.cat(parts, dim=2)
        weight, bias = self.second_layer()
        return torch.matmul(weight, flat) + bias

    def second_layer(self, interaction: bool = False) -> tuple[Tensor, Tensor]:
        """The K*K layer as (weight (R, hidden), bias (R, 1)): R = K*K rows, z[i, j] in row
        i * K + j; or, if `interaction`, the rows of the double-centred scores
        `crf.centre_interactions(z)` for i, j < K - 1, R = (K - 1)^2. Centring is linear, so it
        is applied to the layer (in float64) and the scores come out centred; the rows left out
        follow from the kept ones (`full_interactions`)."""
        k, hidden = self.num_classes, self.fc2.in_channels
        weight, bias = self.fc2.weight.view(k, k, hidden), self.fc2.bias.view(k, k, 1)
        if not interaction:
            return weight.reshape(k * k, hidden), bias.reshape(k * k, 1)
        parts = [centre_interactions(x.double(), (0, 1))[:-1, :-1] for x in (weight, bias)]
        return tuple(x.reshape((k - 1) ** 2, -1).to(weight.dtype).contiguous() for x in parts)

    def span_scores(
        self, maps: tuple[Tensor, Tensor], offsets: Sequence[Offset], interaction: bool = False
    ) -> Tensor:
        """Scores (B, R*S) of `offsets` in span order: for each offset in turn an (R, n) block
        over its `offset_span` run of p (n nodes), the run's non-edges (q wrapped to another
        row) scored 0; R = K*K, or (K - 1)^2 interaction rows if `interaction`
        (`second_layer`). The layout the compiled mean-field reads (`grid_numba`). No
        autograd: one offset's hidden activations at a time go through a scratch buffer that
        stays in cache, and the K*K layer writes straight into its contiguous block (into a
        strided slice, addmm computed a temporary and copied it: 68 of 830 ms of the CamVid
        crf+dense stage, 2 threads)."""
        a, b = (m.flatten(2) for m in maps)
        hidden, h, w = map(int, maps[0].shape[1:])
        spans = [offset_span(h, w, dy, dx) for dy, dx in offsets]
        weight, bias = self.second_layer(interaction)
        kk = weight.shape[0]
        out = a.new_empty(a.shape[0], kk * sum(n for _, _, n in spans))
        scratch = a.new_empty(a.shape[0], hidden, max(n for _, _, n in spans))
        start = 0
        for (_, dx), (first, shift, n) in zip(offsets, spans, strict=True):
            act = scratch[:, :, :n]
            torch.add(
                a[:, :, first : first + n], b[:, :, first + shift : first + shift + n], out=act
            )
            act.clamp_(min=0)
            for image in range(a.shape[0]):
                block = out[image, start : start + kk * n].view(kk, n)
                torch.addmm(bias, weight, act[image], out=block)
            width = w - abs(dx)
            gaps = (n - width) // w  # the non-edges: w - width of them after each row but the last
            if gaps:
                shape = (out.shape[0], kk, gaps, w - width)
                strides = (out.stride(0), n, w, 1)
                out.as_strided(shape, strides, out.storage_offset() + start + width).zero_()
            start += kk * n
        return out

    def span_views(
        self, flat: Tensor, offsets: Sequence[Offset], h: int, w: int, interaction: bool = False
    ) -> list[Tensor]:
        """`span_scores`' output on an (h, w) grid as a view (B, k, k, h', w') per offset, as
        `offset_views` gives of `flat_scores`' output; k = K, or K - 1 if `interaction`."""
        k = self.num_classes - 1 if interaction else self.num_classes
        views, start = [], flat.storage_offset()
        for dy, dx in offsets:
            (pr, pc), _ = offset_slices(h, w, dy, dx)
            n = offset_span(h, w, dy, dx)[2]
            shape = (flat.shape[0], k, k, pr.stop - pr.start, pc.stop - pc.start)
            views.append(flat.as_strided(shape, (flat.stride(0), k * n, n, w, 1), start))
            start += k * k * n
        return views

    def chunk_scores(self, maps: tuple[Tensor, Tensor], offsets: Sequence[Offset]) -> list[Tensor]:
        """Scores (B, K, K, h', w') for each offset, over the p region where q is inside the grid."""
        h, w = map(int, maps[0].shape[-2:])  # ints under the ONNX tracer too
        return self.offset_views(self.flat_scores(maps, offsets), offsets, h, w)

    def offset_views(self, flat: Tensor, offsets: Sequence[Offset], h: int, w: int) -> list[Tensor]:
        """`flat_scores`' output (B, K*K, S) on an (h, w) grid as a view (B, K, K, h', w') per
        offset."""
        k = self.num_classes
        shapes = []
        for dy, dx in offsets:
            (pr, pc), _ = offset_slices(h, w, dy, dx)
            shapes.append((pr.stop - pr.start, pc.stop - pc.start))
        pieces = flat.split([hh * ww for hh, ww in shapes], dim=2)
        return [
            piece.view(flat.shape[0], k, k, hh, ww)
            for piece, (hh, ww) in zip(pieces, shapes, strict=True)
        ]

    def grid_scores(
        self, features: Tensor, offsets: Sequence[Offset], max_edges: int = 32768
    ) -> Iterator[GridPairwise]:
        """Lazily yield ((dy, dx), scores (B, K, K, h', w')) for every offset with edges on the grid."""
        maps = self.first_layer_maps(features)
        _, _, h, w = features.shape
        for chunk in offset_chunks(offsets, h, w, max_edges):
            yield from zip(chunk, self.chunk_scores(maps, chunk), strict=True)
