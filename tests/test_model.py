"""The model's loss and prediction, checked against the general edge-list CRF functions."""

import pytest
import torch

from piecewise_crf import grid_numba
from piecewise_crf.backbones.tiny import TinyBackbone
from piecewise_crf.crf import grid_mean_field, grid_to_edge_list, mean_field, piecewise_nll
from piecewise_crf.featmap import FeatMapNet
from piecewise_crf.model import DeepStructuredModel, GridScores
from piecewise_crf.relations import build_relations


def tiny_model(k=4, scales=(1.0, 0.5), node_labels="nearest", max_edges=32768):
    torch.manual_seed(0)
    featmap = FeatMapNet(TinyBackbone(8), scales=scales, block6_channels=8, pool_windows=(3,))
    relations = build_relations(["surrounding", "above_below"], fraction=0.5)
    return DeepStructuredModel(
        featmap, k, relations, hidden=16, node_labels=node_labels, max_edges=max_edges
    )


def grid_pairwise(potentials):
    """The pairwise scores as `grid_mean_field` and `grid_to_edge_list` take them."""
    return grid_pairwise_of(potentials.scores)


def grid_pairwise_of(scores):
    return [(offset, z) for _, offset, z in scores.pairwise]


def batch(k=4, b=2, h=80, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=g)
    labels = torch.randint(0, k, (b, h, w), generator=g)
    labels[:, :10] = 255
    return images, labels


def test_gradients_reach_every_parameter():
    model = tiny_model()
    images, labels = batch()
    model.loss(images, labels).total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_loss_equals_general_piecewise_nll():
    model = tiny_model().double()
    images, labels = batch()
    terms = model.loss(images.double(), labels)
    potentials = model(images.double())
    h, w = potentials.unary.shape[-2:]
    edges, scores = grid_to_edge_list(grid_pairwise(potentials), h, w)
    nodes = model.node_labels(labels, (h, w)).flatten(1)
    unary = potentials.unary.flatten(2).transpose(1, 2)
    expected_unary, expected_pair = piecewise_nll(unary, edges, scores, nodes)
    torch.testing.assert_close(terms.unary, expected_unary)
    torch.testing.assert_close(terms.pairwise, expected_pair)
    torch.testing.assert_close(terms.total, expected_unary + expected_pair)


def test_class_weighted_loss_by_hand():
    model = tiny_model().double()
    images, labels = batch()
    w = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    terms = model.loss(images.double(), labels, class_weights=w)
    potentials = model(images.double())
    h, w_grid = potentials.unary.shape[-2:]
    edges, scores = grid_to_edge_list(grid_pairwise(potentials), h, w_grid)
    nodes = model.node_labels(labels, (h, w_grid)).flatten(1)
    valid = nodes != 255
    safe = nodes.masked_fill(~valid, 0)
    node_w = w[safe] * valid
    unary = potentials.unary.flatten(2).transpose(1, 2).log_softmax(-1)
    unary_terms = -unary.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    p, q = edges[:, 0], edges[:, 1]
    edge_w = (node_w[:, p] * node_w[:, q]).sqrt()
    pair = scores.flatten(2).log_softmax(-1)
    pair_terms = -pair.gather(-1, (safe[:, p] * 4 + safe[:, q]).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(terms.unary, (unary_terms * node_w).sum() / node_w.sum())
    torch.testing.assert_close(terms.pairwise, (pair_terms * edge_w).sum() / edge_w.sum())
    ones = model.loss(images.double(), labels, class_weights=torch.ones(4, dtype=torch.float64))
    plain = model.loss(images.double(), labels)
    torch.testing.assert_close(ones.total, plain.total)
    with pytest.raises(ValueError, match="one entry per class"):
        model.loss(images.double(), labels, class_weights=torch.ones(3))


def test_detached_pairwise_trains_featmap_on_the_unary_alone():
    """detach_pairwise: FeatMap-Net's gradient is the unary NLL's, the Pairwise-Nets' gradient
    is the shared model's, the loss value is unchanged."""
    images, labels = batch()
    runs = {}
    for name, detach in [("shared", False), ("detached", True), ("unary", False)]:
        model = tiny_model()
        terms = model.loss(images, labels, detach_pairwise=detach)
        (terms.unary if name == "unary" else terms.total).backward()
        runs[name] = ({n: p.grad for n, p in model.named_parameters()}, terms.total.detach())
    (shared, total), (detached, detached_total), (unary, _) = runs.values()
    torch.testing.assert_close(detached_total, total)
    for name, grad in detached.items():
        want = shared[name] if name.startswith("pairwise_nets.") else unary[name]
        torch.testing.assert_close(grad, want, msg=name)
    block6 = "featmap.block6.0.2.weight"
    assert not torch.allclose(shared[block6], detached[block6])


def test_chunking_and_checkpointing_do_not_change_loss_or_gradients():
    # On the 5x6 grid, max_edges=50 splits surrounding into 2 chunks and above_below into 4.
    # Backward of the pairwise term alone: every gradient checked comes from the chunks.
    reached = [
        f"pairwise_nets.{r}.{layer}.weight"
        for r in ("surrounding", "above_below")
        for layer in ("fc1", "fc2")
    ] + ["featmap.block6.0.2.weight", "featmap.block6.1.0.weight"]  # block 6, both scales
    images, labels = batch()
    results = []
    for max_edges, memory_efficient in [(32768, False), (50, False), (50, True)]:
        model = tiny_model(max_edges=max_edges)
        terms = model.loss(images, labels, memory_efficient=memory_efficient)
        terms.pairwise.backward()
        grads = dict(model.named_parameters())
        results.append((terms.total.detach(), {name: grads[name].grad for name in reached}))
    for name, grad in results[0][1].items():
        assert grad.abs().sum() > 0, name
    for total, grads in results[1:]:
        torch.testing.assert_close(total, results[0][0])
        torch.testing.assert_close(grads, results[0][1])  # a failure names the parameter


def test_edge_sampling_is_unbiased():
    model = tiny_model().eval()
    images, labels = batch()
    with torch.no_grad():
        full = model.loss(images, labels).pairwise
        torch.manual_seed(1)
        draws = torch.stack(
            [model.loss(images, labels, edge_fraction=0.3).pairwise for _ in range(300)]
        )
    assert not torch.allclose(draws[0], draws[1])
    assert abs(draws.mean() - full) < 4 * draws.std() / 300**0.5


def test_grid_marginals_are_the_general_mean_field():
    model = tiny_model().double().eval()
    images, _ = batch(h=77, w=61)
    images = images.double()
    with torch.no_grad():
        potentials = model(images)
        h, w = potentials.unary.shape[-2:]
        edges, scores = grid_to_edge_list(grid_pairwise(potentials), h, w)
        general = mean_field(potentials.unary.flatten(2).transpose(1, 2), edges, scores, 2)
        grid = potentials.scores.mean_field(iterations=2)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), general)


@pytest.mark.parametrize("centred", [False, True])
def test_compiled_grid_marginals_equal_the_torch_loop(centred):
    model = tiny_model(max_edges=300).eval()  # several blocks of offsets
    images, _ = batch(h=77, w=61)
    with torch.no_grad():
        scores = model(images).scores
        weights = [0.5 + 0.1 * (i % 3) for i in range(len(scores.pairwise))]
        weights[0] = torch.tensor(0.7)
        assert len(scores.blocks) > 1 and grid_numba.applies(scores.unary, scores.blocks, weights)
        compiled = scores.mean_field(3, weights, centred=centred)
        loop = grid_mean_field(scores.unary, grid_pairwise_of(scores), 3, weights, centred=centred)
    torch.testing.assert_close(compiled, loop, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one entry per offset"):
        scores.mean_field(3, weights[:-1])


def test_interaction_scores_give_the_centred_marginals():
    """Mean-field on the (K - 1)^2 interaction scores equals centred mean-field on the full
    scores (the torch loop), compiled and through the torch fallback, with a stop."""
    model = tiny_model(k=5, max_edges=300).eval()
    images, _ = batch(h=77, w=61)
    with torch.no_grad():
        potentials = model(images)
        full, interactions = potentials.scores, potentials.scores_for("interaction")
        assert interactions.interaction and not full.interaction
        assert potentials.scores_for("raw") is full
        assert potentials.scores_for("interaction") is interactions  # computed once
        assert interactions.offsets() == full.offsets() and len(interactions.blocks) > 1
        assert grid_numba.applies(interactions.unary, interactions.blocks, None)
        weights = [0.5 + 0.3 * (i % 4) for i in range(len(full.pairwise))]
        weights[1] = torch.tensor(2.0)
        for iterations, tolerance in ((1, 0.0), (4, 0.0), (30, 1e-4)):
            loop = grid_mean_field(
                full.unary, grid_pairwise_of(full), iterations, weights, centred=True,
                tolerance=tolerance,
            )  # fmt: skip
            compiled = interactions.mean_field(
                iterations, weights, centred=True, tolerance=tolerance
            )
            torch.testing.assert_close(compiled, loop, rtol=0, atol=1e-5)
        fallback = GridScores(
            interactions.unary.double(), interactions.pairwise, interaction=True
        ).mean_field(4, weights, centred=True)  # float64 unary: the torch loop
        expected = grid_mean_field(
            full.unary.double(), grid_pairwise_of(full), 4, weights, centred=True
        )
        torch.testing.assert_close(fallback, expected, rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="scores_for"):
            interactions.mean_field(3, weights)


def test_interaction_scores_need_the_compiled_path():
    model = tiny_model()
    images, _ = batch()
    potentials = model(images)  # autograd on: the full scores, differentiable
    assert potentials.scores_for("interaction") is potentials.scores


@pytest.mark.parametrize("compiled", [True, False])
def test_tolerance_stops_at_the_first_small_update(compiled):
    """The stop, found independently: run 1, 2, ... fixed iterations and take the first whose
    update moved no marginal by more than the tolerance."""
    model = tiny_model(max_edges=300).eval()
    images, _ = batch(h=77, w=61)
    with torch.no_grad():
        scores = model(images).scores
        weights = [4.0] * len(scores.pairwise)  # strong enough to take several iterations

        def run(iterations, tolerance=0.0):
            if compiled:
                return scores.mean_field(iterations, weights, centred=True, tolerance=tolerance)
            pairwise = grid_pairwise_of(scores)
            return grid_mean_field(
                scores.unary, pairwise, iterations, weights, centred=True, tolerance=tolerance
            )

        fixed = [run(t) for t in range(13)]
    moves = [float((fixed[t] - fixed[t - 1]).abs().max()) for t in range(1, 13)]
    assert moves[0] > moves[4] > moves[8] > 0  # it converges, and not at once
    for tolerance in (moves[2] * 1.001, (moves[5] + moves[6]) / 2, moves[9] * 1.001):
        stop = next(t for t, move in enumerate(moves, 1) if move <= tolerance)
        assert 2 < stop < 12
        torch.testing.assert_close(run(12, tolerance), fixed[stop], rtol=0, atol=1e-6)
    torch.testing.assert_close(run(12, 1.0), fixed[1], rtol=0, atol=1e-6)  # >= 1 update


def test_tolerance_is_ignored_under_autograd():
    model = tiny_model()
    images, _ = batch()
    scores = model(images).scores
    with torch.no_grad():
        fixed = scores.mean_field(3)
    stopped = scores.mean_field(3, tolerance=1.0)  # would stop after one update without grad
    assert stopped.requires_grad
    torch.testing.assert_close(stopped, fixed, rtol=0, atol=1e-6)


def test_compiled_grid_marginals_only_without_autograd():
    model = tiny_model()
    images, _ = batch()
    scores = model(images).scores
    assert not grid_numba.applies(scores.unary, scores.blocks, None)  # grad wanted
    scores.mean_field(2)[:, 0].sum().backward()
    assert model.unary_net.fc2.weight.grad is not None


def test_node_labels_nearest_and_majority_by_hand():
    labels = torch.full((1, 32, 32), 255)
    labels[0, :16, :16] = 1  # node (0, 0): all 1
    labels[0, :16, 16:] = 2
    labels[0, 8, 24] = 3  # the pixel under node (0, 1)'s centre differs from its majority
    labels[0, 16:, :16] = 0
    labels[0, 16:20, :16] = 3  # a quarter of node (1, 0)
    # node (1, 1) stays unlabelled
    near = tiny_model(scales=(1.0,), node_labels="nearest").node_labels(labels, (2, 2))
    major = tiny_model(scales=(1.0,), node_labels="majority").node_labels(labels, (2, 2))
    assert near.tolist() == [[[1, 3], [0, 255]]]
    assert major.tolist() == [[[1, 2], [0, 255]]]


def test_bad_labels_are_reported():
    model = tiny_model()
    images, labels = batch()
    with pytest.raises(ValueError, match="matching images"):
        model.loss(images, labels[:, :-1])
    labels[0, 40, 40:] = 9
    with pytest.raises(ValueError, match=r"\[9\]"):
        model.loss(images, labels)


def test_prediction_box_shrinks_the_relations_and_keeps_their_scores():
    model = tiny_model().eval()
    images, _ = batch(b=1, h=320, w=384)  # a 20x24 grid: trained box side 11
    with torch.no_grad():
        small = model(images, box_fraction=0.1)  # side 3: 4 surrounding, 9 above_below offsets
        full = model(images)
    trained = {r.name: len(r.offsets(20, 24)) for r in model.relations}
    assert {r: len(s.offsets) for r, s in small.pairwise.items()} == {
        "surrounding": 4,
        "above_below": 9,
    }
    assert {r: len(s.offsets) for r, s in full.pairwise.items()} == trained
    torch.testing.assert_close(small.unary, full.unary)
    # the scores of an offset both boxes hold are the same Pairwise-Net outputs
    small_scores, full_scores = dict(grid_pairwise(small)), dict(grid_pairwise(full))
    for offset, z in small_scores.items():
        torch.testing.assert_close(z, full_scores[offset])
    with pytest.raises(ValueError, match=r"in \(0, 1\], got 0"):
        model(images, box_fraction=0.0)
