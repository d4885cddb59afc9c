"""Differentiable dense CRF: the lattice filter's adjoint, gradcheck of ``dense_crf`` and
``DenseCRFLayer`` in float64, gradients against the exact O(N^2) reference, the routing of
tensors that require grad, batching, and a layer that learns."""

import pytest
import torch
from frames import noisy_regions_tensors as toy
from torch.autograd import gradcheck
from torch.func import functional_call

from permutocrf import (
    PROB_FLOOR,
    DenseCRFLayer,
    bilateral_kernel,
    dense_crf,
    gaussian_kernel,
    mean_field,
)
from permutocrf.differentiable import _Filter, adjoint
from permutocrf.reference import dense_crf_exact

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(iterations=3, pos_xy_std=2.0, bi_xy_std=4.0, bi_rgb_std=60.0)
"""Kernels narrow enough that positions and colours both matter on a 5x6 image."""


def tiny(seed: int = 0, h: int = 5, w: int = 6, k: int = 3):
    """A random (H, W, 3) uint8 image, float64 marginals (K, H, W) well above the floor and a
    random symmetric (K, K) compat."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
    probs = torch.softmax(torch.randn(k, h, w, generator=g, dtype=torch.float64), 0)
    compat = torch.rand(k, k, generator=g, dtype=torch.float64)
    return img, probs, compat + compat.T


def leaf(x: float | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64).clone().requires_grad_()


def test_filter_backward_is_the_transposed_filter():
    img, _, _ = tiny()
    lat = bilateral_kernel(img, 4.0, 60.0, dtype=torch.float64, backend="torch")
    eye = torch.eye(lat.num_points, dtype=torch.float64)
    matrix = lat.filter(eye)
    # The blur's axis passes do not commute on a sparse lattice, so the filter is not
    # symmetric and its own transpose would be a wrong backward.
    assert (matrix - matrix.T).abs().max() > 1e-2
    torch.testing.assert_close(adjoint(lat).filter(eye), matrix.T, atol=1e-12, rtol=0)
    values = leaf(torch.rand(lat.num_points, 2, dtype=torch.float64))
    assert gradcheck(lambda v: _Filter.apply(v, lat, adjoint(lat)), (values,))


@pytest.mark.slow  # ~5 s: two hundred lattice builds
@pytest.mark.parametrize("potts", [True, False])
def test_gradcheck_dense_crf(potts):
    img, probs, compat = tiny()
    inputs = [leaf(probs), leaf(3.0), leaf(10.0)] + ([] if potts else [leaf(compat)])

    def crf(p, pos_weight, bi_weight, compat=None):
        return dense_crf(img, p, pos_weight=pos_weight, bi_weight=bi_weight, compat=compat, **SMALL)

    assert gradcheck(crf, inputs)


@pytest.mark.slow  # ~5 s: two hundred lattice builds
@pytest.mark.parametrize("image", ["uint8", "float"])
def test_gradcheck_layer(image):
    img, probs, compat = tiny()
    layer = DenseCRFLayer(3, **SMALL).double()
    images = img.permute(2, 0, 1)[None]
    images = images if image == "uint8" else images / 255.0
    params = {"log_weights": leaf([0.5, 1.0]), "compat": leaf(compat + 0.3 * torch.eye(3))}

    def crf(scores, log_weights, compat):
        state = {"log_weights": log_weights, "compat": compat}
        return functional_call(layer, state, (images, scores))

    assert gradcheck(crf, (leaf(probs.log()[None]), *params.values()))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0).item()


@pytest.mark.parametrize("potts", [True, False])
@pytest.mark.parametrize(
    "params", [{}, dict(pos_xy_std=1.0, bi_xy_std=5.0, bi_rgb_std=20.0, bi_weight=4.0)]
)
def test_gradients_match_exact_kernels(params, potts):
    img, p = toy()
    k = p.shape[0]
    g = torch.Generator().manual_seed(1)
    compat = None if potts else torch.rand(k, k, generator=g, dtype=torch.float64)
    compat = None if potts else compat + compat.T
    target = torch.rand(p.shape, generator=g, dtype=torch.float64)
    results = []
    for crf in (dense_crf, dense_crf_exact):
        inputs = [leaf(p), leaf(params.get("pos_weight", 3.0)), leaf(params.get("bi_weight", 10.0))]
        inputs += [] if potts else [leaf(compat)]
        kwargs = {**params, "pos_weight": inputs[1], "bi_weight": inputs[2]}
        q = crf(img, inputs[0], compat=None if potts else inputs[3], **kwargs)
        results.append((q.detach(), torch.autograd.grad((q * target).sum(), inputs)))
    (ours, grads), (exact, exact_grads) = results
    # Forward: the tolerances of test_densecrf's lattice-vs-exact test.
    assert (ours.argmax(0) == exact.argmax(0)).float().mean() >= 0.93
    assert (ours - exact).abs().mean() < 0.04
    # Backward, within the lattice's approximation of the Gaussian (measured: unaries cosine
    # 0.989-0.9992, relative error 0.04-0.15; the two weights 0.97-1.0, 0.05-0.4; compat
    # 0.9998, 0.05; dense_crf symmetrises compat, so its gradient is the symmetric part).
    assert _cosine(grads[0], exact_grads[0]) > 0.98
    assert (grads[0] - exact_grads[0]).norm() < 0.25 * exact_grads[0].norm()
    weights, exact_weights = torch.stack(grads[1:3]), torch.stack(exact_grads[1:3])
    assert _cosine(weights, exact_weights) > 0.9
    assert (weights - exact_weights).norm() < 0.5 * exact_weights.norm()
    if not potts:
        exact_compat = (exact_grads[3] + exact_grads[3].T) / 2
        assert _cosine(grads[3], exact_compat) > 0.99
        assert (grads[3] - exact_compat).norm() < 0.15 * exact_compat.norm()


def test_grad_inputs_route_through_the_torch_lattice():
    img, p = toy()
    fast = dense_crf(img, p)  # numba
    tracked = p.clone().requires_grad_()
    out = dense_crf(img, tracked)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), fast, atol=1e-5, rtol=0)
    out[0].sum().backward()
    assert tracked.grad is not None and tracked.grad.abs().sum() > 0
    weight = torch.tensor(10.0, requires_grad=True)
    assert dense_crf(img, p, bi_weight=weight).requires_grad
    with torch.no_grad():
        assert not dense_crf(img, tracked).requires_grad
    with pytest.raises(ValueError, match="numba backend has no gradients"):
        dense_crf(img, tracked, backend="numba")


def test_mean_field_building_block_has_gradients():
    img, p, _ = tiny()
    k, h, w = p.shape
    scores = leaf(p.clamp(min=PROB_FLOOR).log().reshape(k, -1))
    for backend in ("numba", "torch"):
        kernels = [
            gaussian_kernel(h, w, SMALL["pos_xy_std"], dtype=torch.float64, backend=backend),
            bilateral_kernel(
                img, SMALL["bi_xy_std"], SMALL["bi_rgb_std"], dtype=torch.float64, backend=backend
            ),
        ]
        if backend == "numba":
            with pytest.raises(ValueError, match="numba backend has no gradients"):
                mean_field(scores, kernels, [3.0, 10.0], SMALL["iterations"])
    q = mean_field(scores, kernels, [3.0, 10.0], SMALL["iterations"])
    (grad,) = torch.autograd.grad(q[0].sum(), scores)
    tracked = leaf(p)
    (expected,) = torch.autograd.grad(dense_crf(img, tracked, **SMALL)[0].sum(), tracked)
    torch.testing.assert_close(
        grad.reshape(k, h, w) * tracked.clamp(min=PROB_FLOOR).reciprocal(), expected
    )


def test_layer_starts_as_dense_crf_and_batches():
    pairs = [toy(seed=s) for s in range(2)]
    images = torch.stack([i for i, _ in pairs])
    probs = torch.stack([p for _, p in pairs])
    layer = DenseCRFLayer(probs.shape[1])
    scores = probs.clamp(min=PROB_FLOOR).log()
    out = layer(images, scores)
    assert out.shape == probs.shape and out.requires_grad
    torch.testing.assert_close(out.detach(), dense_crf(images, probs), atol=1e-5, rtol=0)
    layer64 = layer.double()
    batched = layer64(images.permute(0, 3, 1, 2), scores.double())
    for b in range(2):
        single = layer64(images[b : b + 1], scores[b : b + 1].double())
        torch.testing.assert_close(batched[b], single[0], atol=1e-12, rtol=0)
    with torch.no_grad():  # numba, and the scores are left as they were
        kept = scores.clone()
        torch.testing.assert_close(
            layer(images / 255.0, scores.double()), batched, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(scores, kept, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"scores must be \(B, 4, H, W\)"):
        layer(images, scores[:, :3])


def test_layer_learns_on_a_synthetic_task():
    """Noisy unaries on a three-region image: the CRF's weights and compat move, and the
    pixel-wise cross-entropy of its marginals against the regions goes down."""
    img, _ = toy(h=16, w=20, k=3)
    labels = torch.zeros(16, 20, dtype=torch.int64)
    labels[:, 10:] = 1
    labels[8:, 5:15] = 2
    g = torch.Generator().manual_seed(0)
    scores = torch.nn.functional.one_hot(labels, 3).permute(2, 0, 1).float() * 1.0
    scores = (scores + 1.2 * torch.randn(scores.shape, generator=g))[None]
    layer = DenseCRFLayer(
        3, iterations=3, pos_weight=0.3, bi_xy_std=10.0, bi_rgb_std=30.0, bi_weight=0.3
    )
    start = [p.detach().clone() for p in layer.parameters()]
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.1)
    losses = []
    for _ in range(15):
        q = layer(img[None], scores)
        loss = torch.nn.functional.nll_loss(q.clamp(min=1e-8).log(), labels[None])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]  # measured 0.77 -> 0.009
    assert (layer.log_weights > start[0]).all()  # the smoothing grew: 0.3 -> ~1.3 each
    assert all((p - s).abs().max() > 0.1 for p, s in zip(layer.parameters(), start, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_layer_on_cuda_matches_cpu():
    img, p = toy()
    layer = DenseCRFLayer(p.shape[1])
    scores = p.clamp(min=PROB_FLOOR).log()[None]
    expected = layer(img[None], scores)
    expected.sum().backward()
    cpu_grads = [q.grad.clone() for q in layer.parameters()]
    layer.zero_grad()
    cuda = layer.cuda()
    out = cuda(img[None].cuda(), scores.cuda())
    out.sum().backward()
    torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=0)
    for q, grad in zip(cuda.parameters(), cpu_grads, strict=True):
        torch.testing.assert_close(q.grad.cpu(), grad, atol=1e-3, rtol=1e-3)
