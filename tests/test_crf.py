"""mean_field and piecewise_nll against hand-computed values, brute force, and the grid fast path."""

import itertools
import math

import pytest
import torch

from piecewise_crf.crf import (
    centre_interactions,
    full_interactions,
    grid_mean_field,
    grid_to_edge_list,
    marginal_loss,
    mean_field,
    piecewise_nll,
    ring,
    ring_weight,
)
from piecewise_crf.relations import AboveBelow, Surrounding, offset_slices


def softmax(values):
    m = max(values)
    e = [math.exp(v - m) for v in values]
    return [x / sum(e) for x in e]


def two_node_graph():
    unary = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # (B=1, N=2, K=2)
    edges = torch.tensor([[0, 1]])
    pairwise = torch.tensor([[[[2.0, 0.5], [-1.0, 3.0]]]])  # z(y_0 = i, y_1 = j)
    return unary, edges, pairwise


def test_mean_field_zero_iterations_is_softmax():
    unary, edges, pairwise = two_node_graph()
    torch.testing.assert_close(mean_field(unary, edges, pairwise, iterations=0), unary.softmax(-1))


def test_mean_field_two_nodes_by_hand():
    unary, edges, pairwise = two_node_graph()
    z = [[2.0, 0.5], [-1.0, 3.0]]
    q0 = softmax([0.0, 1.0])
    q1 = softmax([1.0, 0.0])
    # node 0 is p of the edge: sum_j z(i, j) Q_1(j); node 1 is q: sum_i z(i, j) Q_0(i)
    new0 = softmax(
        [0.0 + z[0][0] * q1[0] + z[0][1] * q1[1], 1.0 + z[1][0] * q1[0] + z[1][1] * q1[1]]
    )
    new1 = softmax(
        [1.0 + z[0][0] * q0[0] + z[1][0] * q0[1], 0.0 + z[0][1] * q0[0] + z[1][1] * q0[1]]
    )
    out = mean_field(unary, edges, pairwise, iterations=1)
    torch.testing.assert_close(out[0], torch.tensor([new0, new1]), rtol=0, atol=1e-6)


def random_graph(b=2, n=6, k=3, e=9, seed=0, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    unary = torch.randn(b, n, k, generator=g, dtype=dtype)
    pairs = list(itertools.permutations(range(n), 2))
    pick = torch.randperm(len(pairs), generator=g)[:e]
    edges = torch.tensor([pairs[i] for i in pick.tolist()])
    pairwise = scale * torch.randn(b, e, k, k, generator=g, dtype=dtype)
    return unary, edges, pairwise


def test_mean_field_satisfies_fixed_point_equations():
    unary, edges, pairwise = random_graph(scale=0.2)
    q = mean_field(unary, edges, pairwise, iterations=200)
    b, n, k = unary.shape
    for bi in range(b):
        for node in range(n):
            logits = unary[bi, node].clone()
            for e, (p, r) in enumerate(edges.tolist()):
                if p == node:
                    logits += pairwise[bi, e] @ q[bi, r]
                if r == node:
                    logits += pairwise[bi, e].T @ q[bi, p]
            torch.testing.assert_close(q[bi, node], logits.softmax(0), rtol=0, atol=1e-8)


def exact_marginals(unary, edges, pairwise):
    """Brute-force marginals by enumerating every labelling of a tiny graph."""
    _, n, k = unary.shape
    marg = torch.zeros(n, k, dtype=unary.dtype)
    total = 0.0
    for labels in itertools.product(range(k), repeat=n):
        score = sum(unary[0, i, y] for i, y in enumerate(labels))
        score = score + sum(
            pairwise[0, e, labels[p], labels[q]] for e, (p, q) in enumerate(edges.tolist())
        )
        w = torch.exp(score)
        total = total + w
        for i, y in enumerate(labels):
            marg[i, y] += w
    return marg / total


def test_mean_field_is_exact_without_interactions():
    # Scores that depend on y_p only factorise, so mean-field is exact: compare to enumeration.
    unary, edges, _ = random_graph(b=1, n=4, k=3, e=5)
    row = torch.randn(1, 5, 3, 1, dtype=unary.dtype)
    pairwise = row.expand(1, 5, 3, 3).contiguous()
    torch.testing.assert_close(
        mean_field(unary, edges, pairwise, 2)[0], exact_marginals(unary, edges, pairwise)
    )


def test_mean_field_close_to_exact_for_weak_coupling():
    unary, edges, pairwise = random_graph(b=1, n=4, k=3, e=5, scale=0.05)
    approx = mean_field(unary, edges, pairwise, iterations=50)[0]
    assert (approx - exact_marginals(unary, edges, pairwise)).abs().max() < 5e-3


def test_mean_field_gradcheck():
    unary, edges, pairwise = random_graph(b=1, n=4, k=2, e=4)
    unary.requires_grad_(True)
    pairwise.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u, z: mean_field(u, edges, z, 2), (unary, pairwise))


def test_mean_field_rejects_bad_shapes():
    unary, edges, pairwise = two_node_graph()
    with pytest.raises(ValueError, match="pairwise must be"):
        mean_field(unary, edges, pairwise[:, :, :1])
    with pytest.raises(ValueError, match="outside"):
        mean_field(unary, torch.tensor([[0, 2]]), pairwise)


def test_piecewise_nll_by_hand_with_ignore():
    unary = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])
    edges = torch.tensor([[0, 1], [1, 2], [2, 0]])
    z = [[[1.0, 0.0], [0.0, 2.0]], [[0.5, 0.5], [1.0, -1.0]], [[3.0, 0.0], [0.0, 0.0]]]
    pairwise = torch.tensor([z])
    labels = torch.tensor([[1, 0, 255]])
    un, pw = piecewise_nll(unary, edges, pairwise, labels)
    expected_unary = (-math.log(softmax([0.0, 1.0])[1]) - math.log(softmax([2.0, 0.0])[0])) / 2
    # only edge (0, 1) has both ends labelled: y_0 = 1, y_1 = 0 -> index 1 * 2 + 0 = 2
    expected_pair = -math.log(softmax([1.0, 0.0, 0.0, 2.0])[2])
    assert un.item() == pytest.approx(expected_unary, abs=1e-6)
    assert pw.item() == pytest.approx(expected_pair, abs=1e-6)


def test_piecewise_nll_zero_when_nothing_counts():
    unary, edges, pairwise = two_node_graph()
    un, pw = piecewise_nll(unary, edges, pairwise, torch.tensor([[255, 255]]))
    assert un.item() == 0.0 and pw.item() == 0.0


def test_piecewise_nll_rejects_out_of_range_labels():
    unary, edges, pairwise = two_node_graph()
    with pytest.raises(ValueError, match=r"\[7\]"):
        piecewise_nll(unary, edges, pairwise, torch.tensor([[0, 7]]))


def random_grid(b=2, k=3, h=5, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    unary = torch.randn(b, k, h, w, generator=g, dtype=torch.float64)
    offsets = Surrounding(fraction=0.5).offsets(h, w) + AboveBelow(fraction=0.5).offsets(h, w)
    pairwise = []
    for dy, dx in offsets:
        (pr, pc), _ = offset_slices(h, w, dy, dx)
        region = (pr.stop - pr.start, pc.stop - pc.start)
        if min(region) > 0:
            pairwise.append(
                ((dy, dx), torch.randn(b, k, k, *region, generator=g, dtype=torch.float64))
            )
    return unary, pairwise


def test_grid_fast_path_equals_general_form():
    unary, pairwise = random_grid()
    b, k, h, w = unary.shape
    edges, scores = grid_to_edge_list(pairwise, h, w)
    general = mean_field(unary.flatten(2).transpose(1, 2), edges, scores, iterations=3)
    fast = grid_mean_field(unary, pairwise, iterations=3)
    torch.testing.assert_close(fast.flatten(2).transpose(1, 2), general)


def test_full_interactions_by_hand():
    kept = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None]  # (B=1, K-1, K-1), K = 3
    expected = torch.tensor([[1.0, 2.0, -3.0], [3.0, 4.0, -7.0], [-4.0, -6.0, 10.0]])[None]
    torch.testing.assert_close(full_interactions(kept), expected, rtol=0, atol=0)
    z = torch.randn(2, 5, 5, 3, 4, dtype=torch.float64)
    centred = centre_interactions(z)
    torch.testing.assert_close(full_interactions(centred[:, :-1, :-1]), centred)


def test_centre_interactions_removes_row_and_column_means():
    z = torch.randn(2, 4, 4, 3, 3)
    c = centre_interactions(z)
    torch.testing.assert_close(c.mean(1), torch.zeros(2, 4, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(c.mean(2), torch.zeros(2, 4, 3, 3), atol=1e-6, rtol=0)
    # a score of the form u(i) + v(j) + const has no interaction at all
    u, v = torch.randn(4), torch.randn(4)
    additive = (u[:, None] + v[None, :] + 1.5).view(1, 4, 4)
    torch.testing.assert_close(
        centre_interactions(additive), torch.zeros(1, 4, 4), atol=1e-6, rtol=0
    )


def test_offset_weights_equal_scaled_scores_and_have_exact_gradients():
    unary, pairwise = random_grid()
    weights = [0.1 * (i % 5) + 0.05 for i in range(len(pairwise))]
    scaled = [(o, w * z) for w, (o, z) in zip(weights, pairwise, strict=True)]
    torch.testing.assert_close(
        grid_mean_field(unary, pairwise, 3, weights), grid_mean_field(unary, scaled, 3)
    )
    # d/dw of a loss through mean-field, against central differences
    w = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def loss(weight):
        return grid_mean_field(unary, pairwise, 3, [weight] * len(pairwise))[:, 0].log().sum()

    loss(w).backward()
    eps = 1e-6
    numeric = (loss(w.detach() + eps) - loss(w.detach() - eps)) / (2 * eps)
    assert abs(float(w.grad) - float(numeric)) < 1e-6 * max(1.0, abs(float(numeric)))
    with pytest.raises(ValueError, match="one entry per offset"):
        grid_mean_field(unary, pairwise, 3, weights[:-1])


def test_centred_mean_field_is_mean_field_on_the_centred_scores():
    """The row and column means enter as a unary correction: the same marginals as mean-field
    on `centre_interactions(z)`, with and without weights, in the general edge-list form too."""
    unary, pairwise = random_grid(seed=3)
    centred = [(o, centre_interactions(z)) for o, z in pairwise]
    weights = [0.2 * (i % 4) + 0.1 for i in range(len(pairwise))]
    for w in (None, weights):
        torch.testing.assert_close(
            grid_mean_field(unary, pairwise, 4, w, centred=True),
            grid_mean_field(unary, centred, 4, w),
        )
    b, k, h, w = unary.shape
    edges, scores = grid_to_edge_list(centred, h, w)
    general = mean_field(unary.flatten(2).transpose(1, 2), edges, scores, iterations=4)
    fast = grid_mean_field(unary, pairwise, 4, centred=True)
    torch.testing.assert_close(fast.flatten(2).transpose(1, 2), general)
    # zero iterations: the unary's softmax, whatever the correction
    torch.testing.assert_close(grid_mean_field(unary, pairwise, 0, centred=True), unary.softmax(1))


def test_marginal_loss_by_hand():
    q = torch.tensor([[0.7, 0.2], [0.3, 0.8]]).view(1, 2, 1, 2)  # node 0: 0.7/0.3, node 1: 0.2/0.8
    nodes = torch.tensor([[[0, 255]]])
    assert float(marginal_loss(q, nodes)) == pytest.approx(-math.log(0.7))
    nodes = torch.tensor([[[0, 1]]])
    weights = torch.tensor([1.0, 3.0])
    expected = (-math.log(0.7) - 3 * math.log(0.8)) / 4
    assert float(marginal_loss(q, nodes, class_weights=weights)) == pytest.approx(expected)
    assert float(marginal_loss(q, nodes, objective="error")) == pytest.approx((0.3 + 0.2) / 2)
    with pytest.raises(ValueError, match="objective must be one of nll, error"):
        marginal_loss(q, nodes, objective="hinge")


def test_ring_weight_by_hand():
    assert [ring(o) for o in [(0, 1), (1, 1), (-2, 1), (0, -3)]] == [1, 1, 2, 3]
    assert ring_weight([], (5, 0)) == 1.0
    assert ring_weight([0.5], (4, 4)) == 0.5
    assert [ring_weight([0.5, 0.2], o) for o in [(1, 0), (2, 1), (7, 0)]] == [0.5, 0.2, 0.2]
