"""permutocrf.compat against pydensecrf (pydensecrf2): results on CamVid and on N-d
cases, step-by-step inference, utils, input checks, and pydensecrf's own tests and examples run
through an import alias (``import pydensecrf.densecrf`` giving the compat module)."""

import itertools
import logging
import sys
import types

import numpy as np
import pytest
from environment import BACKENDS, needs_cuda, needs_torch
from frames import camvid_frames, noisy_regions

import permutocrf.compat as compat
from permutocrf import gaussian_kernel, lattice_numba
from permutocrf.kernels import bilateral_features, positions

README = dict(gauss=dict(sxy=3, compat=3), bilateral=dict(sxy=80, srgb=13, compat=10))
DEEPLAB = dict(gauss=dict(sxy=1, compat=3), bilateral=dict(sxy=67, srgb=3, compat=4))


def labels_equal(q_ref, q_ours) -> float:
    return float((np.argmax(q_ref, 0) == np.argmax(q_ours, 0)).mean())


def rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(a))))


def run(crf, iterations=5, steps=3):
    """``inference(iterations)``, then the KL-divergences of a startInference/stepInference run."""
    q = np.array(crf.inference(iterations))
    q_step, tmp1, tmp2 = crf.startInference()
    kls = []
    for _ in range(steps):
        kls.append(crf.klDivergence(q_step))
        crf.stepInference(q_step, tmp1, tmp2)
    return q, np.array(kls), np.array(q_step)


# ---------------------------------------------------------------------------------------------
# Agreement with pydensecrf


@pytest.mark.parametrize(
    ("params", "frames"), [(README, 2), (DEEPLAB, 1)], ids=["readme", "deeplab"]
)
def test_agrees_on_camvid(ref, ref_utils, params, frames):
    for image, _, probs in camvid_frames(frames):
        k, h, w = probs.shape
        unary = ref_utils.unary_from_softmax(probs)
        results = []
        for module in (ref, compat):
            crf = module.DenseCRF2D(w, h, k)
            crf.setUnaryEnergy(unary)
            crf.addPairwiseGaussian(**params["gauss"])
            crf.addPairwiseBilateral(rgbim=image, **params["bilateral"])
            results.append(run(crf))
        (q_ref, kl_ref, step_ref), (q, kl, step) = results
        assert labels_equal(probs.reshape(k, -1), q_ref) < 0.9  # the CRF changes many labels
        # Measured on 5 (readme) and 3 (deeplab) frames: 100 % of labels, |dQ| <= 2.2e-6 (the
        # torch lattice: 3.5e-4), KL within 5.6e-4 (pydensecrf sums its pairwise KL term in
        # float32: ~1e-4 off a double sum).
        assert labels_equal(q_ref, q) >= 0.999
        assert np.abs(q - q_ref).max() < 1e-3
        assert np.abs(step - step_ref).max() < 1e-3
        assert rel(kl_ref, kl) < 0.01


def volume_case(seed=0, shape=(6, 8, 10), k=4):
    """A 3-D volume with 2 channels: softmax unary, grid Gaussian and bilateral features."""
    rng = np.random.default_rng(seed)
    channels = 40.0 * rng.integers(0, 3, (*shape, 2)) + rng.normal(0, 5, (*shape, 2))
    probs = rng.dirichlet(np.ones(k), size=int(np.prod(shape))).T.astype(np.float32, order="C")
    gauss = compat.create_pairwise_gaussian(sdims=(1.5, 2.0, 2.5), shape=shape)
    bilateral = compat.create_pairwise_bilateral(
        sdims=(3.0, 3.0, 3.0), schan=(20.0, 10.0), img=channels.astype(np.float32), chdim=3
    )
    return compat.unary_from_softmax(probs), gauss, bilateral


COMPATS = {
    "scalar": lambda rng, k: 3.0,
    "vector": lambda rng, k: rng.uniform(-3, 1, k).astype(np.float32),
    "matrix": lambda rng, k: rng.uniform(-1, 3, (k, k)).astype(np.float32),
}


@pytest.mark.parametrize("compat_kind", COMPATS)
def test_agrees_on_volumes_for_every_compat_normalisation_and_kernel(ref, compat_kind):
    unary, gauss, bilateral = volume_case()
    k, n = unary.shape
    mu = COMPATS[compat_kind](np.random.default_rng(1), k)
    equal = []
    for norm, kernel in itertools.product(range(4), range(3)):
        results = []
        for module in (ref, compat):
            crf = module.DenseCRF(n, k)
            crf.setUnaryEnergy(unary)
            normalization, kernel_type = module.NormalizationType(norm), module.KernelType(kernel)
            crf.addPairwiseEnergy(gauss, mu, kernel=kernel_type, normalization=normalization)
            crf.addPairwiseEnergy(bilateral, mu, kernel=kernel_type, normalization=normalization)
            results.append(run(crf))
        (q_ref, kl_ref, _), (q, kl, _) = results
        equal.append(labels_equal(q_ref, q))
        # Measured: KL within 4.1e-7 (relative) in every case.
        assert rel(kl_ref, kl) < 0.01, (norm, kernel)
        assert equal[-1] >= 0.99, (norm, kernel)
    # Measured 100 % in every case, |dQ| < 3e-7 (the torch lattice too on this volume, not on
    # others: see test_numba_and_torch_backends_agree).
    assert np.mean(equal) >= 0.999


@needs_torch
def test_backends_agree_on_tied_volume_features():
    """Grid features put points exactly on simplex boundaries: the torch lattice must make the
    same float32 suffix sums as pydensecrf and lattice_numba.py (a float32 cumsum, which
    accumulates in double, gave |dQ| up to 0.03 on these volumes; measured now 3.6e-7)."""
    for seed in range(8):
        unary, gauss, bilateral = volume_case(seed)
        q = []
        for backend in ("numba", "torch"):
            crf = compat.DenseCRF(unary.shape[1], unary.shape[0], backend=backend)
            crf.setUnaryEnergy(unary)
            crf.addPairwiseEnergy(gauss, compat=3.0)
            crf.addPairwiseEnergy(bilateral, compat=5.0)
            q.append(np.array(crf.inference(5)))
        np.testing.assert_allclose(q[1], q[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", list(compat.NormalizationType), ids=lambda n: n.name)
@pytest.mark.parametrize("compat_kind", COMPATS)
@needs_torch
def test_numba_and_torch_backends_agree(compat_kind, norm):
    """The numba lattice (CPU's default) against the torch one on random 3-d and 5-d features:
    the same compat on both kernels (fused into cpu.mean_field where the normalisation allows),
    then Potts on the first (term by term unless both are Potts). Measured |dQ| <= 4.5e-7, KL
    within 3.1e-6. Tied (grid) features: test_backends_agree_on_tied_volume_features."""
    rng = np.random.default_rng(2)
    k, n = 4, 300
    unary = compat.unary_from_softmax(rng.dirichlet(np.ones(k), n).T.copy())
    gauss = rng.uniform(0, 4, (3, n)).astype(np.float32)
    bilateral = rng.uniform(0, 3, (5, n)).astype(np.float32)
    mu = COMPATS[compat_kind](np.random.default_rng(3), k)
    for first in (mu, 2.0):
        crfs = [compat.DenseCRF(n, k, backend=backend) for backend in ("numba", "torch")]
        for crf in crfs:
            crf.setUnaryEnergy(unary)
            crf.addPairwiseEnergy(gauss, first, normalization=norm)
            crf.addPairwiseEnergy(bilateral, mu, normalization=norm)
        got, expected = run(crfs[0]), run(crfs[1])
        fused = norm in (compat.NO_NORMALIZATION, compat.NORMALIZE_SYMMETRIC) and (
            first is mu or compat_kind == "scalar"
        )
        assert (crfs[0]._plan().fused is not None) == fused
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def clustered_features(rng, d: int, n: int) -> np.ndarray:
    """(d, n) float32 features around 3 centres, so that points share simplices and the
    pairwise term changes the marginals in any dimension."""
    centres = rng.uniform(0, 4, (3, d))
    f = centres[rng.integers(0, 3, n)] + rng.normal(0, 0.3, (n, d))
    return np.ascontiguousarray(f.T, dtype=np.float32)


@pytest.mark.parametrize("d", [*range(2, 17), 130])
def test_every_feature_dimension_agrees_with_pydensecrf(ref, d):
    """pydensecrf hashes any D. From d = 10 here mixed-radix vertex codes overflow int64 and
    both lattices take their exact fallback (rows hashed, rows ranked); d = 130 also needs a
    wider rank. Measured on every
    d: 100 % of labels, |dQ| <= 4.9e-6 on both backends."""
    rng = np.random.default_rng(d)
    k, n = 4, 400 if d <= 16 else 50  # pydensecrf measured 9 s at d = 130 for 400 points
    probs = rng.dirichlet(np.ones(k), n).T.astype(np.float32, order="C")
    unary, feats = compat.unary_from_softmax(probs), clustered_features(rng, d, n)
    results = []
    for module, backend in ((ref, None), *((compat, b) for b in BACKENDS)):
        crf = module.DenseCRF(n, k) if backend is None else module.DenseCRF(n, k, backend=backend)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseEnergy(feats, compat=10.0)
        results.append(np.array(crf.inference(5)))
    q_ref = results[0]
    assert np.abs(q_ref - probs).max() > 0.5  # the pairwise term matters (measured >= 0.72)
    for q in results[1:]:
        assert labels_equal(q_ref, q) == 1.0
        np.testing.assert_allclose(q, q_ref, atol=1e-5, rtol=0)


def test_eight_channel_bilateral_agrees_with_pydensecrf(ref, ref_utils):
    """create_pairwise_bilateral on an 8-channel image: 10-D features (refused before)."""
    rng = np.random.default_rng(0)
    h, w, k = 40, 50, 5
    regions = rng.integers(0, 4, (h // 10, w // 10)).repeat(10, 0).repeat(10, 1)
    image = rng.uniform(0, 200, (4, 8))[regions] + rng.normal(0, 10, (h, w, 8))
    logits = 2.0 * np.eye(k)[regions].transpose(2, 0, 1) + rng.normal(0, 1.5, (k, h, w))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    unary = ref_utils.unary_from_softmax(probs)
    feats = ref_utils.create_pairwise_bilateral((10, 10), (20,) * 8, image, chdim=2)
    assert feats.shape == (10, h * w)
    results = []
    for module, backend in ((ref, None), *((compat, b) for b in BACKENDS)):
        crf = (
            module.DenseCRF2D(w, h, k)
            if backend is None
            else module.DenseCRF2D(w, h, k, backend=backend)
        )
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseEnergy(feats, compat=10)
        results.append(run(crf))
    (q_ref, kl_ref, step_ref) = results[0]
    assert labels_equal(probs.reshape(k, -1), q_ref) < 0.9  # the CRF changes many labels
    # Measured: 100 % of labels, |dQ| <= 2.4e-7 on both backends.
    for q, kl, step in results[1:]:
        assert labels_equal(q_ref, q) == 1.0
        np.testing.assert_allclose(q, q_ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(step, step_ref, atol=1e-5, rtol=0)
        assert rel(kl_ref, kl) < 1e-3


def test_step_inference_matches_pydensecrf_and_inference(ref):
    image, probs = toy()
    k, h, w = probs.shape
    unary = compat.unary_from_softmax(probs)
    states = []
    for module in (ref, compat):
        crf = module.DenseCRF2D(w, h, k)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=2, compat=3)
        crf.addPairwiseBilateral(sxy=5, srgb=20, rgbim=image, compat=5)
        q, tmp1, tmp2 = crf.startInference()
        view = np.asarray(q)  # stepInference updates Q in place: views see every step
        trace = [(view.copy(), crf.klDivergence(q))]
        for _ in range(4):
            crf.stepInference(q, tmp1, tmp2)
            trace.append((view.copy(), crf.klDivergence(q)))
        np.testing.assert_allclose(view, np.array(crf.inference(4)), atol=1e-6)
        assert np.array(tmp1).shape == np.array(tmp2).shape == (0, 0)  # pydensecrf's views
        states.append(trace)
    for (q_ref, kl_ref), (q, kl) in zip(*states, strict=True):
        np.testing.assert_allclose(q, q_ref, atol=1e-5)
        assert abs(kl - kl_ref) <= 1e-4 * abs(kl_ref)


def test_without_unary_like_pydensecrf(ref):
    image, probs = toy()
    k, h, w = probs.shape
    out = []
    for module in (ref, compat):
        crf = module.DenseCRF2D(w, h, k)
        crf.addPairwiseBilateral(sxy=5, srgb=20, rgbim=image, compat=5)
        q, tmp1, tmp2 = crf.startInference()
        start = np.array(q)
        crf.stepInference(q, tmp1, tmp2)
        out.append((start, np.array(q), np.array(crf.inference(2)), crf.klDivergence(q)))
    for got, expected in zip(out[1], out[0], strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-5)
    np.testing.assert_array_equal(out[1][0], 0.0)  # startInference without a unary: zeros


def test_result_type_like_pydensecrf(ref):
    _, probs = toy()
    k, h, w = probs.shape
    for module in (ref, compat):
        crf = module.DenseCRF2D(w, h, k)
        crf.setUnaryEnergy(compat.unary_from_softmax(probs))
        q = crf.inference(2)
        a = np.array(q)
        assert a.shape == (k, h * w) and a.dtype == np.float32 and a.flags.f_contiguous
        assert memoryview(q).shape == (k, h * w) and memoryview(q).format == "f"
        assert np.argmax(q, axis=0).shape == (h * w,)
        assert isinstance(crf.klDivergence(crf.startInference()[0]), float)


def test_constants_and_unary_objects(ref):
    for name in ("CONST_KERNEL", "DIAG_KERNEL", "FULL_KERNEL", "NO_NORMALIZATION"):
        assert int(getattr(compat, name)) == int(getattr(ref, name))
        assert repr(getattr(compat, name)) == repr(getattr(ref, name))
    assert int(compat.NORMALIZE_SYMMETRIC) == int(ref.NORMALIZE_SYMMETRIC) == 3
    rng = np.random.default_rng(0)
    unary = rng.random((3, 20), dtype=np.float32)
    lhs, feats = rng.random((3, 4), dtype=np.float32), rng.random((4, 20), dtype=np.float32)
    for make in (
        lambda m: m.ConstUnary(unary),
        lambda m: m.LogisticUnary(lhs, feats),
        lambda m: m.Unary(),
    ):
        q = []
        for module in (ref, compat):
            crf = module.DenseCRF(20, 3)
            crf.setUnary(make(module))
            q.append(np.array(crf.inference(0)))
        np.testing.assert_allclose(q[1], q[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# utils: exact equality


UTILS_CASES = {
    "labels_unsure": lambda u, x: u.unary_from_labels(x["labels"], 4, gt_prob=0.7),
    "labels_sure": lambda u, x: u.unary_from_labels(x["labels"], 5, 0.6, zero_unsure=False),
    "softmax32": lambda u, x: u.unary_from_softmax(x["sm"]),
    "softmax64": lambda u, x: u.unary_from_softmax(x["sm"].astype(np.float64), scale=0.8),
    "softmax_noclip": lambda u, x: u.unary_from_softmax(x["sm"], clip=None),
    "gaussian2d": lambda u, x: u.create_pairwise_gaussian(sdims=(3, 4), shape=(20, 24)),
    "gaussian3d": lambda u, x: u.create_pairwise_gaussian((1.5, 2, 2.5), (5, 6, 7)),
    "bilateral_rgb": lambda u, x: u.create_pairwise_bilateral((80, 80), (13, 13, 13), x["rgb"], 2),
    "bilateral_gray": lambda u, x: u.create_pairwise_bilateral((2, 2), 5, x["rgb"][..., 0]),
    "bilateral_ch0": lambda u, x: u.create_pairwise_bilateral(
        (2, 3), 7.5, np.moveaxis(x["rgb"], 2, 0), chdim=0
    ),
}


@pytest.mark.parametrize("case", UTILS_CASES)
def test_utils_exactly_equal(ref_utils, case):
    rng = np.random.default_rng(0)
    x = dict(
        labels=rng.integers(0, 5, (20, 24)),
        sm=rng.dirichlet(np.ones(5), size=(20, 24)).transpose(2, 0, 1).astype(np.float32),
        rgb=rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),
    )
    expected, got = UTILS_CASES[case](ref_utils, x), UTILS_CASES[case](compat, x)
    assert got.dtype == expected.dtype and got.flags.c_contiguous == expected.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "call",
    [
        lambda u: u.compute_unary(np.array([[0, 1], [2, 3]]), 3),
        lambda u: u.softmax_to_unary(np.full((2, 3), 0.5), GT_PROB=0.9),
    ],
    ids=["compute_unary", "softmax_to_unary"],
)
def test_deprecated_utils_warn_like_pydensecrf(ref_utils, caplog, call):
    results = []
    for module in (ref_utils, compat):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            results.append(call(module))
        results.append([(r.name, r.levelname, r.getMessage()) for r in caplog.records])
    np.testing.assert_array_equal(results[2], results[0])
    assert results[3] == results[1] and "deprecated" in results[1][0][2]


def test_utils_range_checks(ref_utils):
    labels = np.array([[0, 1], [2, 1]])
    for module in (ref_utils, compat):
        with pytest.raises(AssertionError):
            module.unary_from_labels(labels, 3, gt_prob=1.0)
        with pytest.raises(AssertionError):
            module.unary_from_softmax(np.full((2, 3), 0.5), scale=1.5)
    with pytest.raises(ValueError, match="gt_prob"):  # also a ValueError here
        compat.unary_from_labels(labels, 3, gt_prob=0.0)


# ---------------------------------------------------------------------------------------------
# Input checks


def toy(h=20, w=24, k=4, seed=0):
    """`noisy_regions` as numpy arrays, pydensecrf's inputs."""
    return noisy_regions(h, w, k, seed)


U = np.ones((2, 12), np.float32)
F = np.zeros((2, 12), np.float32)
IMG = np.zeros((3, 4, 3), np.uint8)
BAD_CALLS = {
    "unary_float64": lambda m, d: d.setUnaryEnergy(U.astype(np.float64)),
    "unary_fortran": lambda m, d: d.setUnaryEnergy(np.asfortranarray(U)),
    "unary_shape": lambda m, d: d.setUnaryEnergy(U[:, :6].copy()),
    "unary_transposed": lambda m, d: d.setUnaryEnergy(U.T.copy()),
    "unary_1d": lambda m, d: d.setUnaryEnergy(U.ravel()),
    "unary_3d": lambda m, d: d.setUnaryEnergy(U.reshape(2, 3, 4)),
    "unary_none": lambda m, d: d.setUnaryEnergy(None),
    "unary_list": lambda m, d: d.setUnaryEnergy(U.tolist()),
    "features_float64": lambda m, d: d.addPairwiseEnergy(F.astype(np.float64), compat=1),
    "features_nvar": lambda m, d: d.addPairwiseEnergy(F[:, :11].copy(), compat=1),
    "features_1d": lambda m, d: d.addPairwiseEnergy(F[0].copy(), compat=1),
    "features_none": lambda m, d: d.addPairwiseEnergy(None, compat=1),
    "compat_float64": lambda m, d: d.addPairwiseEnergy(F, compat=np.array([1.0, 2.0])),
    "compat_list": lambda m, d: d.addPairwiseEnergy(F, compat=[1.0, 2.0]),
    "compat_none": lambda m, d: d.addPairwiseEnergy(F, compat=None),
    "compat_3d": lambda m, d: d.addPairwiseEnergy(F, compat=np.ones((2, 2, 2), np.float32)),
    "compat_0d": lambda m, d: d.addPairwiseEnergy(F, compat=np.array(2.0, np.float32)),
    "compat_transposed": lambda m, d: d.addPairwiseEnergy(F, np.ones((3, 2), np.float32).T),
    "rgbim_hw": lambda m, d: d.addPairwiseBilateral(1, 1, np.zeros((4, 3, 3), np.uint8), 1),
    "rgbim_channels": lambda m, d: d.addPairwiseBilateral(1, 1, np.zeros((3, 4, 4), np.uint8), 1),
    "rgbim_float": lambda m, d: d.addPairwiseBilateral(1, 1, IMG.astype(np.float32), 1),
    "rgbim_2d": lambda m, d: d.addPairwiseBilateral(1, 1, IMG[..., 0].copy(), 1),
    "rgbim_strided": lambda m, d: d.addPairwiseBilateral(
        1, 1, np.zeros((3, 8, 3), np.uint8)[:, ::2], 1
    ),
    "rgbim_none": lambda m, d: d.addPairwiseBilateral(1, 1, None, 1),
    "kl_list": lambda m, d: d.klDivergence([[0.5] * 12] * 2),
    "set_unary_array": lambda m, d: d.setUnary(U),
    "const_unary_float64": lambda m, d: m.ConstUnary(U.astype(np.float64)),
    "missing_argument": lambda m, d: m.DenseCRF2D(12, 2),
    "eigen_3d": lambda m, d: m.eigen.matrixXf(np.ones((2, 2, 2), np.float32)),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_input_checks_raise_like_pydensecrf(ref, case):
    errors = []
    for module in (ref, compat):
        crf = module.DenseCRF2D(4, 3, 2)
        with pytest.raises((ValueError, TypeError)) as info:
            BAD_CALLS[case](module, crf)
        errors.append(info)
    assert errors[1].type is errors[0].type or issubclass(errors[1].type, errors[0].type)
    message = str(errors[1].value)
    assert message and "\n" not in message


# Where pydensecrf crashes (sxy=0 segfaults) or silently computes garbage (a compat vector of
# the wrong length reads past it), compat says what to pass.
COMPAT_ONLY_CHECKS = {
    "compat_length": (lambda d: d.addPairwiseGaussian(1, np.ones(3, np.float32)), "(2,)"),
    "compat_matrix": (lambda d: d.addPairwiseGaussian(1, np.ones((3, 3), np.float32)), "2, 2"),
    "sxy_zero": (lambda d: d.addPairwiseGaussian(0, 3), "sxy must be finite and non-zero"),
    "sxy_short": (lambda d: d.addPairwiseGaussian((1,), 3), "sxy must be a number or 2"),
    "srgb_nan": (lambda d: d.addPairwiseBilateral(3, float("nan"), IMG, 3), "srgb"),
    "kernel": (lambda d: d.addPairwiseGaussian(1, 3, kernel=7), "kernel must be one of"),
    "kernel_str": (lambda d: d.addPairwiseGaussian(1, 3, kernel="x"), "CONST_KERNEL"),
    "normalization": (lambda d: d.addPairwiseGaussian(1, 3, normalization=9), "NORMALIZE_"),
    "features_empty": (lambda d: d.addPairwiseEnergy(F[:0], 3), "Need (D, 12)"),
    "set_unary_shape": (lambda d: d.setUnary(compat.ConstUnary(U[:, :6].copy())), "Need"),
    "q_shape": (lambda d: d.klDivergence(np.zeros((2, 6), np.float32)), "Q must have shape"),
    "nvar": (lambda d: compat.DenseCRF(0, 2), "nvar must be a positive integer"),
    "nlabels": (lambda d: compat.DenseCRF(12, 2.5), "nlabels must be a positive integer"),
    "backend": (lambda d: compat.DenseCRF(12, 2, backend="jax"), "backend must be one of"),
    "numba_on_cuda": (
        lambda d: compat.DenseCRF(12, 2, device="cuda", backend="numba"),
        "runs on CPU only",
    ),
}


@pytest.mark.parametrize("case", COMPAT_ONLY_CHECKS)
def test_input_checks_where_pydensecrf_misbehaves(case):
    call, match = COMPAT_ONLY_CHECKS[case]
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")) as info:
        call(compat.DenseCRF2D(4, 3, 2))
    assert "\n" not in str(info.value)


def test_read_only_inputs_accepted():
    image, probs = toy()
    k, h, w = probs.shape
    unary = compat.unary_from_softmax(probs)
    results = []
    for writeable in (True, False):
        u, img = unary.copy(), image.copy()
        u.flags.writeable = img.flags.writeable = writeable
        crf = compat.DenseCRF2D(w, h, k)
        crf.setUnaryEnergy(u)
        crf.addPairwiseBilateral(sxy=5, srgb=20, rgbim=img, compat=5)
        results.append(crf.inference(3))
    np.testing.assert_array_equal(results[0], results[1])


# ---------------------------------------------------------------------------------------------
# Sign convention, batch, device (what pydensecrf never had)


def potts_variants(mu):
    image, probs = toy()
    k, h, w = probs.shape
    crf = compat.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(compat.unary_from_softmax(probs))
    crf.addPairwiseBilateral(sxy=5, srgb=20, rgbim=image, compat=mu)
    return np.array(crf.inference(3)), crf.klDivergence(crf.startInference()[0])


def test_potts_sign_convention():
    k = 4
    q, kl = potts_variants(2.0)  # PottsCompatibility(w): mu(Q) = -w Q
    for same in (-2.0 * np.eye(k, dtype=np.float32), np.full(k, -2.0, np.float32)):
        q2, kl2 = potts_variants(same)
        np.testing.assert_allclose(q2, q, atol=1e-6)
        assert kl2 == pytest.approx(kl, rel=1e-6)
    # The penalty matrix w (1 - I) gives the same marginals (a per-point constant apart)...
    q3, kl3 = potts_variants(2.0 * (1 - np.eye(k, dtype=np.float32)))
    np.testing.assert_allclose(q3, q, atol=1e-5)
    assert kl3 != pytest.approx(kl, rel=1e-3)  # ...but not the same energy
    q4, _ = potts_variants(-2.0)  # a negative weight pushes labels apart
    assert np.abs(q4 - q).max() > 0.05


def test_batch_equals_one_crf_per_image():
    pairs = [toy(seed=s) for s in range(3)]
    k, h, w = pairs[0][1].shape
    unaries = np.stack([compat.unary_from_softmax(p) for _, p in pairs])
    crf = compat.DenseCRF2D(w, h, k, batch=3)
    crf.setUnaryEnergy(unaries)
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=5, srgb=20, rgbim=np.stack([i for i, _ in pairs]), compat=5)
    crf.addPairwiseEnergy(compat.create_pairwise_gaussian((4, 4), (h, w)), compat=1.0)
    q_batch, kl_batch, step_batch = run(crf, steps=2)
    assert q_batch.shape == (3, k, h * w) and kl_batch.shape == (2, 3)
    for b, (image, _) in enumerate(pairs):
        one = compat.DenseCRF2D(w, h, k)
        one.setUnaryEnergy(unaries[b])
        one.addPairwiseGaussian(sxy=3, compat=3)
        one.addPairwiseBilateral(sxy=5, srgb=20, rgbim=image, compat=5)
        one.addPairwiseEnergy(compat.create_pairwise_gaussian((4, 4), (h, w)), compat=1.0)
        q, kl, step = run(one, steps=2)
        np.testing.assert_allclose(q_batch[b], q, atol=1e-5)
        np.testing.assert_allclose(step_batch[b], step, atol=1e-5)
        np.testing.assert_allclose(kl_batch[:, b], kl, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(3, 4, 480\)"):
        crf.setUnaryEnergy(unaries[0])


def test_engine_features_are_pydensecrf_utils_features():
    """kernels.positions / bilateral_features, which both front ends build on, are the utils'
    features to the bit ((y, x) there, (x, y) here)."""
    image, _ = toy()
    h, w, _ = image.shape
    xy = positions(h, w, 2.0, 3.0, np.float32)
    np.testing.assert_array_equal(xy, compat.create_pairwise_gaussian((3.0, 2.0), (h, w))[::-1].T)
    feats = bilateral_features(image[None], 2.0, 3.0, (13.0, 10.0, 15.0), np.float32)
    utils = compat.create_pairwise_bilateral((3.0, 2.0), (13.0, 10.0, 15.0), image, chdim=2)
    np.testing.assert_array_equal(feats, utils[[1, 0, 2, 3, 4]].T)


def test_front_ends_share_the_cached_gaussian_lattice():
    crf = compat.DenseCRF2D(24, 20, 3)
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseGaussian(sxy=3, compat=3, normalization=compat.NO_NORMALIZATION)
    assert crf._terms[0].lattice is gaussian_kernel(20, 24, 3.0)
    assert crf._terms[1].lattice is not crf._terms[0].lattice  # unnormalised: its own entry


@needs_cuda
def test_cuda_matches_cpu():
    image, probs = toy()
    k, h, w = probs.shape
    out = []
    for device in ("cpu", "cuda"):
        crf = compat.DenseCRF2D(w, h, k, device=device)
        crf.setUnaryEnergy(compat.unary_from_softmax(probs))
        crf.addPairwiseGaussian(sxy=3, compat=np.full(k, -3.0, np.float32))
        crf.addPairwiseBilateral(5, 20, image, 5, normalization=compat.NORMALIZE_BEFORE)
        out.append(run(crf))
    for cpu, cuda in zip(*out, strict=True):
        np.testing.assert_allclose(cuda, cpu, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# pydensecrf's own tests and examples, run unchanged through an import alias: each case imports
# pydensecrf as its original does; it runs once on pydensecrf and once with the imports giving
# the compat module, and the two results are compared.


def alias_pydensecrf(monkeypatch) -> None:
    """Make ``import pydensecrf.densecrf`` / ``.utils`` / ``.eigen`` give the compat module."""
    package = types.ModuleType("pydensecrf")
    package.densecrf, package.utils, package.eigen = compat, compat, compat.eigen
    monkeypatch.setitem(sys.modules, "pydensecrf", package)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", compat)
    monkeypatch.setitem(sys.modules, "pydensecrf.utils", compat)
    monkeypatch.setitem(sys.modules, "pydensecrf.eigen", compat.eigen)


def simple_unary():
    """pydensecrf/tests/test_dcrf.py's 10x10 two-label unary: a frame and a centre square."""
    frame = np.zeros((10, 10), np.float32)
    frame[:, [0, -1]] = frame[[0, -1], :] = 1
    square = np.zeros((10, 10), np.float32)
    square[4:7, 4:7] = 1
    unary = np.vstack([frame.flat, square.flat])
    return (unary + 1) / (np.sum(unary, axis=0) + 2)


def simple_img():
    img = np.zeros((10, 10, 3), dtype=np.uint8)
    img[2:8, 2:8, :] = 255
    return img


def case_call_dcrf2d():
    import pydensecrf.densecrf as dcrf

    d = dcrf.DenseCRF2D(10, 10, 2)
    d.setUnaryEnergy(-np.log(simple_unary()))
    d.addPairwiseBilateral(sxy=2, srgb=2, rgbim=simple_img(), compat=3)
    return np.argmax(d.inference(10), axis=0).reshape(10, 10)


def case_call_dcrf():
    import pydensecrf.densecrf as dcrf
    import pydensecrf.utils as utils

    d = dcrf.DenseCRF(100, 2)
    d.setUnaryEnergy(-np.log(simple_unary()))
    feats = utils.create_pairwise_bilateral(sdims=(2, 2), schan=2, img=simple_img(), chdim=2)
    d.addPairwiseEnergy(feats, compat=3)
    return np.argmax(d.inference(10), axis=0).reshape(10, 10)


def case_dcrf_equals_dcrf2d():
    maps = case_call_dcrf(), case_call_dcrf2d()
    assert np.all(maps[0] == maps[1])
    return maps


def case_compat_wrong():
    import pydensecrf.densecrf as dcrf

    d = dcrf.DenseCRF2D(10, 10, 2)
    d.setUnaryEnergy(np.ones((2, 10 * 10), dtype=np.float32))
    with pytest.raises(ValueError):  # a float64 compat vector
        d.addPairwiseBilateral(
            sxy=(3, 3), srgb=(3, 3, 3), rgbim=np.zeros((10, 10, 3), np.uint8), compat=np.ones(2)
        )
    return True


def case_utils_unary():
    import pydensecrf.utils as utils

    m = 3
    uniform, positive, negative = 1.0 / m, 0.8, 0.2 / (m - 1)
    labels = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    u, p, n = uniform, positive, negative
    expected = -np.log(
        np.array([[u, p, n, n, n, n, p, u], [u, n, p, n, n, p, n, u], [u, n, n, p, p, n, n, u]])
    )
    got = utils.compute_unary(labels, m, GT_PROB=positive)
    np.testing.assert_almost_equal(got, expected)
    return got


def case_eigen():
    import pydensecrf.eigen as e

    vector = np.random.default_rng(0).standard_normal(3).astype(np.float32)
    matrix = np.random.default_rng(1).standard_normal((3, 3)).astype(np.float32)
    assert np.all(np.array(e.vectorXf(vector)) == vector)
    assert np.all(np.array(e.matrixXf(matrix)) == matrix)
    with pytest.raises(ValueError):
        e.matrixXf(np.ones((3, 3, 3), np.float32))
    with pytest.raises(ValueError):
        e.matrixXf(matrix.astype(np.float64))
    with pytest.raises(TypeError):
        e.matrixXf(None)
    return np.array(e.matrixXf(matrix))


def case_issue29_wrong_unary_shape():
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    shape, nlabels = (7, 5, 8), 5
    probs = np.random.default_rng(0).random((nlabels, 6, 4)).astype(np.float32)
    probs /= probs.sum(axis=0, keepdims=True)
    d = dcrf.DenseCRF(np.prod(shape), nlabels)
    with pytest.raises(ValueError):
        d.setUnaryEnergy(unary_from_softmax(probs))
    return True


def case_issue26_four_channels():
    """tests/issue26.py at 64x64: a 4-channel image through create_pairwise_bilateral."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import create_pairwise_bilateral, unary_from_softmax

    x, y = np.mgrid[0:64, 0:64]
    probs = np.exp(-((x - 32.0) ** 2 + (y - 32.0) ** 2) / (2 * 16.0**2))
    probs = 0.2 * ((probs - probs.min()) / (probs.max() - probs.min()) - 0.5) + 0.5
    probs = np.stack([probs, 1 - probs])
    d = dcrf.DenseCRF2D(64, 64, 2)
    d.setUnaryEnergy(unary_from_softmax(probs))
    unary_map = np.argmax(d.inference(10), axis=0).reshape(64, 64)
    img = np.zeros((64, 64, 4), np.uint8)
    img[19:45, 19:45, :] = 1
    with pytest.raises(ValueError):
        d.addPairwiseBilateral(sxy=(10, 10), srgb=0.01, rgbim=img, compat=10)
    d.addPairwiseEnergy(create_pairwise_bilateral((10, 10), 0.01, img, chdim=2), compat=10)
    return unary_map, np.argmax(d.inference(100), axis=0).reshape(64, 64)


def case_readme():
    """The README's DenseCRF2D usage and its step-by-step loop, on a toy image."""
    import pydensecrf.densecrf as dcrf

    im, probs = toy(h=48, w=64, k=5)
    d = dcrf.DenseCRF2D(64, 48, 5)  # width, height, nlabels
    U = (-np.log(probs)).reshape((5, -1))
    d.setUnaryEnergy(U)
    d.addPairwiseGaussian(
        sxy=(3, 3), compat=3, kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC
    )
    d.addPairwiseBilateral(
        sxy=(80, 80),
        srgb=(13, 13, 13),
        rgbim=im,
        compat=10,
        kernel=dcrf.DIAG_KERNEL,
        normalization=dcrf.NORMALIZE_SYMMETRIC,
    )
    Q = d.inference(5)  # the README writes n_iterations=5: pydensecrf2 refuses keywords
    labels = np.argmax(Q, axis=0).reshape((48, 64))
    Q, tmp1, tmp2 = d.startInference()
    kls = []
    for _ in range(5):
        kls.append(d.klDivergence(Q))
        d.stepInference(Q, tmp1, tmp2)
    return labels, np.array(kls)


def case_example_inference(use_2d: bool, h: int = 360, w: int = 480):
    """examples/inference.py on a CamVid frame (its top-left h x w) with its label image as the
    annotation (0 = unsure)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import (
        create_pairwise_bilateral,
        create_pairwise_gaussian,
        unary_from_labels,
    )

    img, annotation, _ = next(camvid_frames(1))
    img, annotation = np.ascontiguousarray(img[:h, :w]), annotation[:h, :w]
    colors, labels = np.unique(annotation, return_inverse=True)
    has_unk = 0 in colors
    n_labels = len(set(labels.flat)) - int(has_unk)
    U = unary_from_labels(labels, n_labels, gt_prob=0.7, zero_unsure=has_unk)
    if use_2d:
        d = dcrf.DenseCRF2D(img.shape[1], img.shape[0], n_labels)
        d.setUnaryEnergy(U)
        d.addPairwiseGaussian(sxy=(3, 3), compat=3, kernel=dcrf.DIAG_KERNEL)
        d.addPairwiseBilateral(sxy=(80, 80), srgb=(13, 13, 13), rgbim=img, compat=10)
    else:
        d = dcrf.DenseCRF(img.shape[1] * img.shape[0], n_labels)
        d.setUnaryEnergy(U)
        feats = create_pairwise_gaussian(sdims=(3, 3), shape=img.shape[:2])
        d.addPairwiseEnergy(feats, compat=3, normalization=dcrf.NORMALIZE_SYMMETRIC)
        feats = create_pairwise_bilateral(sdims=(80, 80), schan=(13, 13, 13), img=img, chdim=2)
        d.addPairwiseEnergy(feats, compat=10, kernel=dcrf.DIAG_KERNEL)
    labels_map = np.argmax(d.inference(5), axis=0)
    Q, tmp1, tmp2 = d.startInference()
    kls = []
    for _ in range(5):
        kls.append(d.klDivergence(Q))
        d.stepInference(Q, tmp1, tmp2)
    return labels_map, np.array(kls)


ALIAS_CASES = {
    "test_dcrf.test_call_dcrf2d": case_call_dcrf2d,
    "test_dcrf.test_call_dcrf": case_call_dcrf,
    "test_dcrf.test_call_dcrf_eq_dcrf2d": case_dcrf_equals_dcrf2d,
    "test_dcrf.test_compact_wrong": case_compat_wrong,
    "test_utils.test_unary": case_utils_unary,
    "test_eigen": case_eigen,
    "issue29": case_issue29_wrong_unary_shape,
    "issue26": case_issue26_four_channels,
    "readme": case_readme,
    "examples_inference_generic": lambda: case_example_inference(use_2d=False),
    "examples_inference_2d": lambda: case_example_inference(use_2d=True, h=180, w=240),
}


def assert_same(expected, got) -> None:
    """Label maps >= 99.9 % equal, KL sequences within 1 %, other values equal."""
    if isinstance(expected, tuple):
        for e, g in zip(expected, got, strict=True):
            assert_same(e, g)
    elif isinstance(expected, np.ndarray) and expected.dtype.kind == "f" and expected.ndim == 1:
        assert rel(expected, got) < 0.01  # a KL sequence
    elif isinstance(expected, np.ndarray) and expected.dtype.kind in "iu":
        assert (expected == got).mean() >= 0.999  # a label map
    else:
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", ALIAS_CASES)
def test_pydensecrf_tests_and_examples_through_alias(ref, monkeypatch, case):
    expected = ALIAS_CASES[case]()
    with monkeypatch.context() as patched:
        alias_pydensecrf(patched)
        got = ALIAS_CASES[case]()
    assert_same(expected, got)


def test_feature_extent_is_the_largest_magnitude_or_nan_per_column():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(1001, 4)).astype(np.float32)
    f[700, 1] = np.nan  # one NaN, late, in one column: that column's extent is NaN
    f[3, 2] = -50.0  # the largest magnitude, negative
    got = lattice_numba._extent(f, 8)
    np.testing.assert_array_equal(got[[0, 2, 3]], np.abs(f[:, [0, 2, 3]]).max(0))
    assert got[2] == 50 and np.isnan(got[1])


def test_feature_extent_with_more_chunks_than_rows_and_no_rows():
    f = np.array([[1.0, -2.0], [-3.0, 0.5]], np.float32)
    np.testing.assert_array_equal(lattice_numba._extent(f, 16), [3.0, 2.0])
    np.testing.assert_array_equal(lattice_numba._extent(f[:0], 4), [0.0, 0.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bilateral_features_are_divisions_in_the_dtype(dtype):
    """Against numpy for a batch, one std or three, and an image not in C order."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, 5, 4)).astype(np.uint8).transpose(0, 2, 3, 1)
    b, h, w, _ = images.shape
    for sx, sy, srgb in ((3.0, 2.5, 13.0), (0.7, 80.0, (3.3, 7.1, 0.9))):
        y, x = np.mgrid[:h, :w]
        xy = np.stack([x.astype(dtype) / dtype(sx), y.astype(dtype) / dtype(sy)], -1)
        rgb = images.astype(dtype) / np.asarray(srgb).astype(dtype)
        expected = np.concatenate([np.broadcast_to(xy, (b, h, w, 2)), rgb], -1).reshape(-1, 5)
        np.testing.assert_array_equal(bilateral_features(images, sx, sy, srgb, dtype), expected)


@pytest.mark.parametrize("chunks", [2, 3, 7])
def test_hash_chunks_number_the_vertices_as_one_chunk(chunks, monkeypatch):
    """The parallel chunks' merged numbering and table give the lattice of a single chunk's
    (which needs no merge), vertex for vertex."""
    rng = np.random.default_rng(chunks)
    image = rng.integers(0, 256, (1, 23, 31, 3)).astype(np.uint8)
    f = bilateral_features(image, 4.0, 4.0, 20.0, np.float32)
    monkeypatch.setattr(lattice_numba, "threads", lambda: 1)
    one = lattice_numba.build(f)
    monkeypatch.setattr(lattice_numba, "threads", lambda: chunks)
    many = lattice_numba.build(f)
    for a, b in ((one.vertex, many.vertex), (one.weight, many.weight)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one.neighbours, many.neighbours)
