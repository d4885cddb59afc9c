"""Dense CRF: lattice vs exact kernels, input handling, and agreement with pydensecrf."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from piecewise_crf.densecrf import dense_crf
from piecewise_crf.densecrf.dense import (
    PROB_FLOOR,
    _bilateral_lattice,
    _gaussian_lattice,
    _softmax_rows,
)
from piecewise_crf.densecrf.lattice import stack
from piecewise_crf.densecrf.reference import dense_crf_exact

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
DEEPLAB = dict(pos_xy_std=1.0, pos_weight=3.0, bi_xy_std=67.0, bi_rgb_std=3.0, bi_weight=4.0)


def toy(h=20, w=24, k=4, seed=0):
    """A three-region noisy RGB image and random marginals."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(h, w, 3)
    img[:, : w // 2] = torch.tensor([200.0, 40, 40])
    img[:, w // 2 :] = torch.tensor([30.0, 60, 220])
    img[h // 2 :, w // 4 : 3 * w // 4] = torch.tensor([40.0, 200, 60])
    img = (img + 8 * torch.randn(h, w, 3, generator=g)).clamp(0, 255).to(torch.uint8)
    return img, torch.softmax(1.5 * torch.randn(k, h, w, generator=g), 0)


@pytest.mark.parametrize(
    "params",
    [{}, dict(pos_xy_std=1.0, bi_xy_std=5.0, bi_rgb_std=20.0, bi_weight=4.0)],
)
def test_lattice_matches_exact_kernels(params):
    img, p = toy()
    ours = dense_crf(img, p, **params)
    exact = dense_crf_exact(img, p, **params).float()
    # The lattice approximates the Gaussian filter, so labels mostly agree and marginals are close.
    assert (ours.argmax(0) == exact.argmax(0)).float().mean() >= 0.93
    assert (ours - exact).abs().mean() < 0.04
    # ...and the CRF does something: the result is far from the input.
    assert (ours - p).abs().mean() > 0.1


def test_batch_equals_per_image():
    pairs = [toy(seed=s) for s in range(3)]
    images = torch.stack([i for i, _ in pairs])
    probs = torch.stack([p for _, p in pairs])
    batched = dense_crf(images, probs)
    channels_first = dense_crf(images.permute(0, 3, 1, 2), probs)
    for b, (img, p) in enumerate(pairs):
        torch.testing.assert_close(batched[b], dense_crf(img, p), atol=1e-5, rtol=0)
    torch.testing.assert_close(channels_first, batched)


def test_numpy_and_torch_agree_and_keep_kind():
    img, p = toy()
    out_t = dense_crf(img, p)
    out_n = dense_crf(img.numpy(), p.numpy())
    assert isinstance(out_n, np.ndarray) and out_n.dtype == np.float32
    assert isinstance(out_t, torch.Tensor) and out_t.shape == p.shape
    np.testing.assert_allclose(out_n, out_t.numpy(), atol=1e-6)
    np.testing.assert_allclose(out_n.sum(0), 1.0, atol=1e-5)


def test_float64_path():
    img, p = toy()
    out64 = dense_crf(img, p.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), dense_crf(img, p), atol=1e-4, rtol=0)
    out_np = dense_crf(img.numpy(), p.double().numpy())
    assert out_np.dtype == np.float64


def test_read_only_inputs():
    img, p = toy()
    img_n, p_n = img.numpy().copy(), p.numpy().copy()
    img_n.flags.writeable = False
    p_n.flags.writeable = False
    np.testing.assert_allclose(dense_crf(img_n, p_n), dense_crf(img, p).numpy(), atol=1e-6)


def test_zero_iterations_returns_normalised_input():
    img, p = toy()
    p = 3.0 * p  # unnormalised on purpose
    expected = p.clamp(min=PROB_FLOOR)
    torch.testing.assert_close(dense_crf(img, p, iterations=0), expected / expected.sum(0))


def test_potts_as_compat_matrix():
    img, p = toy()
    k = p.shape[0]
    potts = dense_crf(img, p)
    torch.testing.assert_close(dense_crf(img, p, compat=1 - np.eye(k)), potts, atol=1e-5, rtol=0)
    torch.testing.assert_close(dense_crf(img, p, compat=-torch.eye(k)), potts, atol=1e-5, rtol=0)
    # A compat matrix that rewards label 0 next to label 1 changes the result.
    mu = 1 - torch.eye(k)
    mu[0, 1] = mu[1, 0] = -1.0
    assert (dense_crf(img, p, compat=mu) - potts).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(probs=torch.rand(4, 20)), "probs must be"),
        (dict(probs=torch.rand(4, 20, 24).half()), "probs must be"),
        (dict(probs=[[0.5]]), "probs must be a numpy array or a torch tensor"),
        (dict(image=torch.zeros(20, 24, 3)), "uint8"),
        (dict(image=torch.zeros(24, 20, 3, dtype=torch.uint8)), "matching probs"),
        (dict(image=torch.zeros(20, 24, 4, dtype=torch.uint8)), "matching probs"),
        (dict(pos_xy_std=-1.0), "pos_xy_std must be a positive"),
        (dict(bi_rgb_std=0.0), "bi_rgb_std must be a positive"),
        (dict(bi_weight=float("nan")), "bi_weight must be a finite"),
        (dict(iterations=-1), "iterations"),
        (dict(iterations=2.5), "iterations"),
        (dict(compat=np.eye(3)), "compat must be"),
    ],
)
def test_validation_errors(kwargs, match):
    img, p = toy()
    args = dict(image=img, probs=p) | kwargs
    with pytest.raises(ValueError, match=match):
        dense_crf(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    pairs = [toy(seed=s) for s in range(2)]
    images = torch.stack([i for i, _ in pairs])
    probs = torch.stack([p for _, p in pairs])
    out = dense_crf(images.cuda(), probs.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), dense_crf(images, probs), atol=1e-4, rtol=0)


def camvid_frames(count: int, k: int = 11):
    """CamVid val frames with noisy unaries: softmax of a smoothed one-hot label plus noise."""
    if not (CAMVID / "val.txt").exists():
        pytest.skip(f"CamVid not found at {CAMVID}")
    rng = np.random.default_rng(0)
    for line in (CAMVID / "val.txt").read_text().split("\n")[:count]:
        image_path, label_path = line.split()
        image = np.array(Image.open(CAMVID / image_path).convert("RGB"))
        label = torch.from_numpy(np.minimum(np.array(Image.open(CAMVID / label_path)), k - 1))
        onehot = torch.nn.functional.one_hot(label.long(), k).permute(2, 0, 1)[None].float()
        smooth = torch.nn.functional.avg_pool2d(3.0 * onehot, 9, 1, 4)[0]
        logits = smooth + torch.from_numpy(rng.normal(0, 1.5, smooth.shape)).float()
        yield image, torch.softmax(logits, 0).numpy()


@pytest.mark.parametrize("params", [{}, DEEPLAB], ids=["defaults", "deeplab"])
def test_agrees_with_pydensecrf_on_camvid(params):
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is not installed")
    full = dict(pos_xy_std=3.0, pos_weight=3.0, bi_xy_std=80.0, bi_rgb_std=13.0, bi_weight=10.0)
    full |= params
    for image, probs in camvid_frames(2):
        k, h, w = probs.shape
        crf = dcrf.DenseCRF2D(w, h, k)
        crf.setUnaryEnergy(
            np.ascontiguousarray(-np.log(np.maximum(probs, PROB_FLOOR)).reshape(k, -1))
        )
        crf.addPairwiseGaussian(sxy=full["pos_xy_std"], compat=full["pos_weight"])
        crf.addPairwiseBilateral(
            sxy=full["bi_xy_std"], srgb=full["bi_rgb_std"], rgbim=image, compat=full["bi_weight"]
        )
        ref = np.asarray(crf.inference(5)).reshape(k, h, w)
        ours = dense_crf(image, probs, 5, **full)
        assert (ref.argmax(0) == probs.argmax(0)).mean() < 0.9  # the CRF changes many labels
        assert (ours.argmax(0) == ref.argmax(0)).mean() >= 0.99
        assert np.abs(ours - ref).max() < 1e-3


def test_stacked_reordered_lattices_filter_like_each_alone():
    img, _ = toy()
    h, w, _ = img.shape
    bilateral = _bilateral_lattice(img[None], 5.0, 20.0, torch.float64)
    gauss = _gaussian_lattice(1, h, w, 1.5, torch.float64, torch.device("cpu"))
    values = torch.rand(h * w, 3, dtype=torch.float64)

    def alone(lattice):  # filter in the lattice's own order, back to pixel order
        out = lattice.filter(values[lattice.order])
        return torch.empty_like(out).index_copy_(0, lattice.order, out)

    expected = 2.0 * alone(gauss) + 0.5 * alone(bilateral)
    kernels = stack([bilateral, gauss.reordered(bilateral.order)])
    got = kernels.filter(values[bilateral.order], [0.5, 2.0])
    torch.testing.assert_close(torch.empty_like(got).index_copy_(0, bilateral.order, got), expected)
    with pytest.raises(ValueError, match="share one point order"):
        stack([bilateral, gauss])


def test_softmax_rows_matches_torch_and_survives_underflow():
    x = torch.randn(50, 7) * 4
    torch.testing.assert_close(_softmax_rows(x), torch.softmax(x, 1))
    x[0] -= 500.0  # this row's exp underflows after the global shift: the fallback handles it
    out = _softmax_rows(x)
    torch.testing.assert_close(out, torch.softmax(x, 1))
    assert torch.isfinite(out).all()
