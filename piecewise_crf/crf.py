"""CRF maths: mean-field inference and the piecewise likelihood.

Sign convention: every potential here is a **score** (a log-potential; higher = more likely):
P(y | x) = exp(sum_p z_p(y_p) + sum_(p,q) z_pq(y_p, y_q)) / Z(x). Energies are the negatives.

Two forms of the same maths:
- the general edge-list form (`mean_field`, `piecewise_nll`), the public API for any graph;
- the grid fast path (`grid_mean_field`) used by the model, where pairwise
  scores come per grid offset as compact maps and messages are computed with shifted slices
  instead of gathers. Tests check that both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from piecewise_crf.relations import Offset, offset_edges, offset_slices

# Pairwise scores of one offset on the grid: (dy, dx) and a tensor (B, K, K, h', w') over the nodes p
# whose partner q = p + (dy, dx) lies inside the grid (the region given by `offset_slices`).
GridPairwise = tuple[Offset, Tensor]


def _check_graph(unary: Tensor, edges: Tensor, pairwise: Tensor) -> None:
    if unary.dim() != 3:
        raise ValueError(f"unary must be (B, N, K), got shape {tuple(unary.shape)}")
    b, n, k = unary.shape
    if edges.dim() != 2 or edges.shape[1] != 2:
        raise ValueError(f"edges must be (E, 2) rows (p, q), got shape {tuple(edges.shape)}")
    if edges.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"edges must be an integer tensor, got {edges.dtype}")
    e = edges.shape[0]
    if pairwise.shape != (b, e, k, k):
        raise ValueError(
            f"pairwise must be (B, E, K, K) = {(b, e, k, k)} for unary {tuple(unary.shape)} and "
            f"{e} edges, got {tuple(pairwise.shape)}"
        )
    if e and (int(edges.min()) < 0 or int(edges.max()) >= n):
        raise ValueError(f"edges index nodes outside [0, {n})")


def mean_field(unary: Tensor, edges: Tensor, pairwise: Tensor, iterations: int = 3) -> Tensor:
    """Parallel mean-field marginals (B, N, K) of the pairwise CRF given by scores.

    unary (B, N, K); edges (E, 2) int rows (p, q); pairwise (B, E, K, K) with pairwise[b, e, i, j]
    the score of y_p = i, y_q = j. Q0 = softmax(unary), then every node at once:
    Q_p(i) ∝ exp(z_p(i) + sum_{e=(p,q)} sum_j z_e(i, j) Q_q(j) + sum_{e=(q,p)} sum_j z_e(j, i) Q_q(j)).
    """
    _check_graph(unary, edges, pairwise)
    p, q = edges[:, 0].long(), edges[:, 1].long()
    marginals = unary.softmax(-1)
    for _ in range(iterations):
        to_p = torch.einsum("beij,bej->bei", pairwise, marginals[:, q])
        to_q = torch.einsum("beij,bei->bej", pairwise, marginals[:, p])
        messages = torch.zeros_like(unary).index_add(1, p, to_p).index_add(1, q, to_q)
        marginals = (unary + messages).softmax(-1)
    return marginals


def _check_labels(labels: Tensor, num_classes: int, ignore_index: int) -> None:
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        values = torch.unique(labels[bad]).tolist()[:10]
        raise ValueError(
            f"labels hold values {values} outside 0..{num_classes - 1} that are not the ignore "
            f"index {ignore_index}; remap void labels to {ignore_index} or fix num_classes"
        )


def piecewise_nll(
    unary: Tensor, edges: Tensor, pairwise: Tensor, labels: Tensor, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Negative log of the piecewise likelihood, as (unary_nll, pairwise_nll).

    unary_nll: mean over labelled nodes of -log softmax_K(z_p)[y_p].
    pairwise_nll: mean over edges with both ends labelled of -log softmax_{K*K}(z_pq)[y_p * K + y_q].
    Each is 0 when no term counts. labels (B, N) int64, `ignore_index` never counts.
    """
    _check_graph(unary, edges, pairwise)
    b, n, k = unary.shape
    if labels.shape != (b, n):
        raise ValueError(f"labels must be (B, N) = {(b, n)}, got {tuple(labels.shape)}")
    _check_labels(labels, k, ignore_index)
    valid = labels != ignore_index
    safe = labels.masked_fill(~valid, 0)

    unary_terms = -unary.log_softmax(-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    unary_nll = (unary_terms * valid).sum() / valid.sum().clamp(min=1)

    p, q = edges[:, 0].long(), edges[:, 1].long()
    edge_valid = valid[:, p] & valid[:, q]
    target = safe[:, p] * k + safe[:, q]
    log_probs = pairwise.reshape(b, -1, k * k).log_softmax(-1)
    pair_terms = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    pairwise_nll = (pair_terms * edge_valid).sum() / edge_valid.sum().clamp(min=1)
    return unary_nll, pairwise_nll


OBJECTIVES = ("nll", "error")  # what `marginal_loss` measures of the marginals at labelled nodes


def marginal_loss(
    q: Tensor,
    nodes: Tensor,
    *,
    objective: str = "nll",
    class_weights: Tensor | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """Class-weighted mean over labelled nodes of -log Q_p(y_p) ("nll") or 1 - Q_p(y_p)
    ("error", the expected error: bounded, so a few confidently wrong nodes do not decide).

    q (B, K, h, w) marginals, nodes (B, h, w) labels with `ignore_index` where unlabelled; node
    p weighs class_weights[y_p] when given.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "nll":
        return F.nll_loss(
            q.clamp(min=1e-8).log(), nodes, weight=class_weights, ignore_index=ignore_index
        )
    valid = nodes != ignore_index
    safe = nodes.masked_fill(~valid, 0)
    correct = q.gather(1, safe[:, None])[:, 0]
    weight = valid.to(q.dtype) if class_weights is None else class_weights[safe] * valid
    return ((1 - correct) * weight).sum() / weight.sum().clamp(min=1e-12)


def centre_interactions(scores: Tensor, dims: tuple[int, int] = (1, 2)) -> Tensor:
    """Interaction-only part of pairwise scores: z - mean_j z - mean_i z + mean_ij z.

    Piecewise training makes each Pairwise-Net a full predictor of the pair, so its raw scores also
    carry unary-like row and column evidence; summed over dozens of edges per node that evidence is
    over-counted in mean-field. Double-centring keeps only how the two labels interact.
    """
    i, j = dims
    return (
        scores
        - scores.mean(j, keepdim=True)
        - scores.mean(i, keepdim=True)
        + scores.mean((i, j), keepdim=True)
    )


def full_interactions(kept: Tensor, dims: tuple[int, int] = (1, 2)) -> Tensor:
    """Double-centred scores (`centre_interactions`) with K labels on the axes `dims` from
    their first K - 1 rows and columns `kept`: every row and every column of a centred (K, K)
    matrix sums to 0, so the last row and column are minus the sums of the others."""
    i, j = dims
    rows = torch.cat([kept, -kept.sum(j, keepdim=True)], j)
    return torch.cat([rows, -rows.sum(i, keepdim=True)], i)


def grid_mean_field(
    unary: Tensor,
    pairwise: Sequence[GridPairwise],
    iterations: int = 3,
    weights: Sequence[float | Tensor] | None = None,
    *,
    centred: bool = False,
    tolerance: float = 0.0,
) -> Tensor:
    """`mean_field` on a grid: unary (B, K, h, w) scores, pairwise as compact per-offset maps.

    `weights` (one number or 0-d tensor per offset) multiply that offset's scores, applied to
    its messages: the same as scaling z, without a scaled copy of z, so a gradient with respect
    to the weights (`piecewise_crf.calibration`) keeps only the message maps. `centred` runs
    mean-field on the scores' interaction part, `centre_interactions(z)`, without computing it:
    a centred score is z minus its row mean r_i, minus its column mean c_j, plus a constant, and
    once the partner's labels are summed out only r_i still depends on the label of p (and c_j
    on that of q); the rest is the same for every label of the receiving node, which the
    softmax ignores. So the means enter once, subtracted from the unary scores the updates add
    their messages to, and the loop runs on the raw scores.

    `tolerance` > 0 stops before `iterations` once an update moves no marginal by more than it
    (`converged`); 0 runs them all, as does a tracer or autograd.

    Returns marginals (B, K, h, w). Same update as `mean_field`, with messages gathered by slicing
    the grid per offset; memory is that of the scores plus a few (B, K, h, w) buffers. The
    products are broadcast multiply-and-sum over the label axis, vectorised over the grid: an
    einsum per offset measured 5x slower (it re-lays out z into tiny batched matrix products).
    Each offset's messages are zero-padded to the grid and added, not added in place into a
    slice: the same sums at the same speed (0.10-0.12 s either way, 3 iterations on CamVid's
    34x45 grid with 337 offsets, one thread), and one Pad per message in an ONNX graph
    (`piecewise_crf.export`), where in-place slice adds became chains of scatter ops: the CamVid
    model's export had not finished after 9 minutes, with Pad it takes 0.5-1.5.
    """
    h, w = map(int, unary.shape[-2:])  # ints under the ONNX tracer too, whose sizes are tensors
    check_weights(weights, len(pairwise))
    regions = []
    start = unary  # what each update adds the messages to
    for i, ((dy, dx), z) in enumerate(pairwise):
        p, q = offset_slices(h, w, dy, dx)
        weight = 1.0 if weights is None else weights[i]
        to_p, to_q = _padding(p, h, w), _padding(q, h, w)
        if centred:
            rows, cols = z.mean(2, dtype=unary.dtype), z.mean(1, dtype=unary.dtype)
            start = start - weight * (F.pad(rows, to_p) + F.pad(cols, to_q))
        regions.append((p, q, to_p, to_q, z, weight))
    marginals = unary.softmax(1)
    for _ in range(iterations):
        messages = torch.zeros_like(unary)
        for (pr, pc), (qr, qc), to_p, to_q, z, weight in regions:
            to_p_sum = (z * marginals[:, None, :, qr, qc]).sum(2)
            to_q_sum = (z * marginals[:, :, None, pr, pc]).sum(1)
            if weights is not None:
                to_p_sum, to_q_sum = to_p_sum * weight, to_q_sum * weight
            messages = messages + F.pad(to_p_sum, to_p)
            messages = messages + F.pad(to_q_sum, to_q)
        marginals, previous = (start + messages).softmax(1), marginals
        if converged(marginals, previous, tolerance):
            break
    return marginals


def converged(marginals: Tensor, previous: Tensor, tolerance: float) -> bool:
    """Whether a mean-field update moved no marginal by more than `tolerance` (> 0), outside a
    tracer or autograd: those run every iteration (a graph of fixed length, a fixed-length
    gradient). On CUDA the test costs a host sync per iteration."""
    if tolerance <= 0 or torch.jit.is_tracing() or marginals.requires_grad:
        return False
    return bool((marginals - previous).abs().max() <= tolerance)


def check_weights(weights: Sequence[float | Tensor] | None, offsets: int) -> None:
    """A ValueError unless `weights` is None or holds one entry per offset."""
    if weights is not None and len(weights) != offsets:
        raise ValueError(f"weights must have one entry per offset ({offsets}), got {len(weights)}")


def ring(offset: Offset) -> int:
    """The offset's ring: its Chebyshev length max(|dy|, |dx|) in nodes (1 = the 8 neighbours)."""
    return max(abs(offset[0]), abs(offset[1]))


def ring_weight(weights: Sequence[float | Tensor], offset: Offset) -> float | Tensor:
    """The weight of `offset` from one weight per ring (1, 2, ...); the last one holds for every
    farther ring, so a single weight covers a whole relation, and no weights mean 1."""
    if len(weights) == 0:
        return 1.0
    return weights[min(ring(offset), len(weights)) - 1]


def _padding(region: tuple[slice, slice], h: int, w: int) -> tuple[int, int, int, int]:
    """`F.pad` widths that put a map of the (rows, cols) `region` back on the (h, w) grid."""
    rows, cols = region
    return (cols.start, w - cols.stop, rows.start, h - rows.stop)


def grid_to_edge_list(
    pairwise: Sequence[GridPairwise], grid_h: int, grid_w: int
) -> tuple[Tensor, Tensor]:
    """Convert grid pairwise maps to the general form: edges (E, 2) and scores (B, E, K, K)."""
    offsets = [offset for offset, _ in pairwise]
    edges = offset_edges(grid_h, grid_w, offsets)
    scores = torch.cat([z.flatten(3).permute(0, 3, 1, 2) for _, z in pairwise], dim=1)
    return edges, scores
