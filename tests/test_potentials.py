"""The factorised, chunked Pairwise-Net equals the direct network on explicit edge features."""

import torch

from piecewise_crf.crf import centre_interactions
from piecewise_crf.potentials import PairwiseNet, UnaryNet, offset_chunks
from piecewise_crf.relations import AboveBelow, Surrounding, offset_slices, offset_span


def test_unary_net_shapes():
    net = UnaryNet(8, 5, hidden=16)
    assert net(torch.randn(2, 8, 3, 4)).shape == (2, 5, 3, 4)


def test_factorised_scores_equal_direct_concatenation():
    torch.manual_seed(0)
    b, c, k, h, w = 2, 6, 3, 5, 7
    net = PairwiseNet(c, k, hidden=10).double()
    features = torch.randn(b, c, h, w, dtype=torch.float64)
    offsets = Surrounding(fraction=0.6).offsets(h, w) + AboveBelow(fraction=0.6).offsets(h, w)
    got = dict(net.grid_scores(features, offsets, max_edges=20))
    assert set(got) == {o for o in offsets if (h - abs(o[0])) * (w - abs(o[1])) > 0}
    for (dy, dx), z in got.items():
        (pr, pc), (qr, qc) = offset_slices(h, w, dy, dx)
        direct = net(features[:, :, pr, pc], features[:, :, qr, qc])
        torch.testing.assert_close(z, direct)


def test_pair_order_matters():
    torch.manual_seed(0)
    net = PairwiseNet(4, 2, hidden=8)
    f_p, f_q = torch.randn(1, 4, 1, 1), torch.randn(1, 4, 1, 1)
    assert not torch.allclose(net(f_p, f_q), net(f_q, f_p))


def test_chunks_respect_edge_budget():
    offsets = [(0, 1), (1, 0), (1, 1), (2, 2), (9, 0)]
    chunks = list(offset_chunks(offsets, 4, 4, max_edges=12))
    assert chunks == [[(0, 1)], [(1, 0)], [(1, 1)], [(2, 2)]]  # (9, 0) has no edge on a 4x4 grid
    assert list(offset_chunks(offsets, 4, 4, max_edges=100)) == [[(0, 1), (1, 0), (1, 1), (2, 2)]]


def test_span_scores_are_the_flat_scores_with_non_edges_zero():
    torch.manual_seed(0)
    net = PairwiseNet(in_channels=6, num_classes=3, hidden=10)
    h, w = 7, 9
    offsets = [(0, 1), (0, 4), (1, -3), (2, 2), (3, 0), (6, -8)]
    with torch.no_grad():
        maps = net.first_layer_maps(torch.randn(2, 6, h, w))
        spans = net.span_scores(maps, offsets)
        flat = net.flat_scores(maps, offsets)
    span_views = net.span_views(spans, offsets, h, w)
    for span_view, flat_view in zip(span_views, net.offset_views(flat, offsets, h, w), strict=True):
        torch.testing.assert_close(span_view, flat_view)
    column = 0
    for dy, dx in offsets:
        first, shift, n = offset_span(h, w, dy, dx)
        (pr, pc), (qr, qc) = offset_slices(h, w, dy, dx)
        assert first == pr.start * w + pc.start and shift == (qr.start - pr.start) * w + dx
        edge = (torch.arange(n) % w) < pc.stop - pc.start  # run positions that are edges
        block = spans[:, 9 * column : 9 * (column + n)].view(2, 9, n)  # K*K = 9 rows of n
        assert (block[:, :, ~edge] == 0).all()
        column += n
    assert 9 * column == spans.shape[-1]


def test_interaction_span_scores_are_the_centred_scores_first_labels():
    """The interaction layer's scores are `centre_interactions` of the K*K scores (computed on
    them, not on the layer), for i, j < K - 1, non-edges 0 as in the full layout."""
    torch.manual_seed(1)
    k, h, w = 4, 6, 8
    net = PairwiseNet(in_channels=5, num_classes=k, hidden=12)
    offsets = [(0, 1), (1, -2), (2, 3), (5, 0)]
    with torch.no_grad():
        maps = net.first_layer_maps(torch.randn(2, 5, h, w))
        spans = net.span_scores(maps, offsets, interaction=True)
        raw = net.offset_views(net.flat_scores(maps, offsets), offsets, h, w)
    assert spans.shape[-1] == (k - 1) ** 2 * sum(offset_span(h, w, *o)[2] for o in offsets)
    views = net.span_views(spans, offsets, h, w, interaction=True)
    for view, z in zip(views, raw, strict=True):
        torch.testing.assert_close(view, centre_interactions(z)[:, :-1, :-1], rtol=0, atol=1e-5)
    column = 0
    for dy, dx in offsets:
        first, _, n = offset_span(h, w, dy, dx)
        width = w - abs(dx)
        edge = (torch.arange(n) % w) < width
        block = spans[:, 9 * column : 9 * (column + n)].view(2, 9, n)
        assert (block[:, :, ~edge] == 0).all() and (block[:, :, edge] != 0).all()
        column += n
