"""The factorised, chunked Pairwise-Net equals the direct network on explicit edge features."""

import torch

from piecewise_crf.potentials import PairwiseNet, UnaryNet, offset_chunks
from piecewise_crf.relations import AboveBelow, Surrounding, offset_slices


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
