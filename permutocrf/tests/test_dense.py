"""Dense CRF: lattice vs exact kernels, numba vs torch lattices, the building blocks, input
handling, and agreement with pydensecrf."""

import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from frames import camvid_frames
from frames import noisy_regions_tensors as toy

from permutocrf import (
    PROB_FLOOR,
    bilateral_kernel,
    dense_crf,
    gaussian_kernel,
    jit,
    lattice_numba,
    lattice_torch,
    mean_field,
    unary_scores,
)
from permutocrf.lattice_numba import CpuLattice
from permutocrf.lattice_torch import Lattice, stack
from permutocrf.meanfield_torch import softmax_rows
from permutocrf.reference import dense_crf_exact

DEEPLAB = dict(pos_xy_std=1.0, pos_weight=3.0, bi_xy_std=67.0, bi_rgb_std=3.0, bi_weight=4.0)


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


@pytest.mark.parametrize("params", [{}, DEEPLAB], ids=["defaults", "deeplab"])
def test_agrees_with_pydensecrf_on_camvid(params):
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is not installed")
    full = dict(pos_xy_std=3.0, pos_weight=3.0, bi_xy_std=80.0, bi_rgb_std=13.0, bi_weight=10.0)
    full |= params
    for image, _, probs in camvid_frames(2):
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
        ours = dense_crf(image, probs, iterations=5, **full)
        assert (ref.argmax(0) == probs.argmax(0)).mean() < 0.9  # the CRF changes many labels
        assert (ours.argmax(0) == ref.argmax(0)).mean() >= 0.99
        assert np.abs(ours - ref).max() < 1e-3


def test_stacked_reordered_lattices_filter_like_each_alone():
    img, _ = toy()
    h, w, _ = img.shape
    bilateral = bilateral_kernel(img, 5.0, 20.0, dtype=torch.float64, backend="torch")
    gauss = gaussian_kernel(h, w, 1.5, dtype=torch.float64, backend="torch")
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
    torch.testing.assert_close(softmax_rows(x, per_row=False), torch.softmax(x, 1))
    x[0] -= 500.0  # this row's exp underflows after the global shift: the fallback handles it
    out = softmax_rows(x, per_row=False)
    torch.testing.assert_close(out, torch.softmax(x, 1))
    assert torch.isfinite(out).all()


def test_row_shifted_softmax_matches_torch():
    x = torch.randn(50, 7, dtype=torch.float64) * 4
    x[0] -= 500.0  # shifted by its own maximum, no row underflows
    torch.testing.assert_close(softmax_rows(x, per_row=True), torch.softmax(x, 1))


def torch_filter(lat: Lattice, values: torch.Tensor) -> torch.Tensor:
    """A torch lattice's filter in the points' own order."""
    out = lat.filter(values[lat.order])
    return torch.empty_like(out).index_copy_(0, lat.order, out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [2, 5])
def test_numba_lattice_filters_like_the_torch_lattice(dtype, d):
    g = torch.Generator().manual_seed(d)
    feats = (6 * torch.rand(3000, d, generator=g)).to(dtype)
    values = torch.rand(3000, 4, generator=g, dtype=dtype)
    ours, theirs = lattice_numba.build(feats.numpy()), lattice_torch.build(feats)
    assert ours.num_vertices == theirs.num_vertices
    for a, b in ((ours, theirs), (ours.normalised(), theirs.normalised())):
        got = torch.from_numpy(a.filter(values.numpy(), 0.5))
        torch.testing.assert_close(got, torch_filter(b, values) * 0.5, atol=1e-5, rtol=1e-5)


def test_numba_lattice_does_not_depend_on_thread_count():
    img, _ = toy(60, 80)
    values = torch.rand(60 * 80, 3).numpy()
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):  # 2 chunks of points number their vertices apart, then merge
            torch.set_num_threads(n)
            lat = bilateral_kernel(img, 5.0, 20.0)
            out.append((lat.num_vertices, lat.filter(values)))
    finally:
        torch.set_num_threads(threads)
    assert out[0][0] == out[1][0]
    np.testing.assert_allclose(out[0][1], out[1][1], atol=1e-6)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_row_hashed_vertices_equal_mixed_radix_codes(monkeypatch, backend):
    """The lattice of many feature dimensions (vertices hashed by coordinate rows, exact)
    against the mixed-radix one (a code per vertex, used where it fits in int64), forced on
    features where both work: a batch of two 5-D bilateral images."""
    images = torch.stack([toy(30, 40, seed=s)[0] for s in range(2)])
    module = lattice_numba if backend == "numba" else lattice_torch
    values = torch.rand(2 * 30 * 40, 3, generator=torch.Generator().manual_seed(0))
    filtered = []
    for fits in (module.fits, lambda cells, groups: False):
        monkeypatch.setattr(module, "fits", fits)
        lat = bilateral_kernel(images, 5.0, 20.0, backend=backend)
        if backend == "numba":
            filtered.append((lat.num_vertices, lat.filter(values.numpy())))
        else:
            filtered.append((lat.num_vertices, torch_filter(lat, values).numpy()))
    (m_codes, codes), (m_rows, rows) = filtered
    assert m_codes == m_rows
    np.testing.assert_allclose(rows, codes, atol=1e-6, rtol=0)


def test_numba_batch_lattice_never_connects_images():
    pairs = [toy(seed=s) for s in range(2)]
    images = torch.stack([i for i, _ in pairs])
    joint = bilateral_kernel(images, 5.0, 20.0)
    assert isinstance(joint, CpuLattice) and joint.num_points == 2 * 20 * 24
    values = torch.rand(2 * 20 * 24, 3).numpy()
    alone = [bilateral_kernel(img, 5.0, 20.0) for img, _ in pairs]
    expected = np.concatenate(
        [lat.filter(v) for lat, v in zip(alone, np.split(values, 2), strict=True)]
    )
    np.testing.assert_allclose(joint.filter(values), expected, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [{}, dict(compat=1 - 2 * np.eye(4) + np.diag(np.ones(3), 1)), dict(pos_xy_std=1.0)],
    ids=["potts", "compat", "small-std"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_and_torch_backends_agree(kwargs, dtype):
    pairs = [toy(seed=s) for s in range(2)]
    images = torch.stack([i for i, _ in pairs])
    probs = torch.stack([p for _, p in pairs]).to(dtype)
    ours = dense_crf(images, probs, backend="numba", **kwargs)
    theirs = dense_crf(images, probs, backend="torch", **kwargs)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(dense_crf(images, probs, **kwargs), ours, atol=0, rtol=0)


def test_kernels_built_once_and_reused():
    img, p = toy()
    k, h, w = p.shape
    logp = unary_scores(p).reshape(k, -1)
    assert gaussian_kernel(h, w, 3.0) is gaussian_kernel(h, w, 3)  # cached per size
    bilateral = bilateral_kernel(img.numpy(), 80.0, 13.0)
    for weight, its in ((10.0, 5), (4.0, 2)):
        q = mean_field(logp, [gaussian_kernel(h, w, 3.0), bilateral], [3.0, weight], its)
        expected = dense_crf(img, p, iterations=its, bi_weight=weight)
        torch.testing.assert_close(q.reshape(k, h, w), expected, atol=0, rtol=0)
    q_np = mean_field(logp.numpy(), [bilateral], [4.0], 0)
    np.testing.assert_allclose(q_np, torch.softmax(logp, 0).numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda k, s: mean_field(s, [k, gaussian_kernel(20, 24, backend="torch")], [1, 1]),
            "one backend",
        ),
        (lambda k, s: mean_field(s, [k], [1.0, 2.0]), "one weight per kernel"),
        (lambda k, s: mean_field(s[:, :-1], [k], [1.0]), "points"),
        (lambda k, s: mean_field(s, [k], [1.0], iterations=-1), "iterations"),
        (lambda k, s: mean_field(s, [k], [1.0], compat=np.eye(3)), "compat must be"),
        (lambda k, s: dense_crf(*toy(), backend="cuda"), "backend must be one of"),
        (lambda k, s: gaussian_kernel(20, 24, device="cuda", backend="numba"), "CPU only"),
        (lambda k, s: gaussian_kernel(20, 24, 0.0), "xy_std must be"),
        (lambda k, s: bilateral_kernel(toy()[0].float()), "uint8"),
        (lambda k, s: bilateral_kernel(toy()[0], 80.0, 1e-9), "too large to hash"),
        (lambda k, s: bilateral_kernel(toy()[0], 80.0, 1e-9, backend="torch"), "too large to hash"),
        (lambda k, s: lattice_numba.build(np.array([[0.0, np.nan]], np.float32)), "finite"),
        (lambda k, s: lattice_torch.build(torch.tensor([[0.0, np.inf]])), "finite"),
    ],
)
def test_building_block_errors(call, match):
    kernel = gaussian_kernel(20, 24)
    scores = torch.randn(4, 20 * 24)
    with pytest.raises(ValueError, match=match):
        call(kernel, scores)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kernels_use_torch():
    img, p = toy()
    assert isinstance(bilateral_kernel(img.cuda()), Lattice)
    assert isinstance(gaussian_kernel(20, 24, device="cuda"), Lattice)
    assert isinstance(gaussian_kernel(20, 24, device="cpu"), CpuLattice)
    out = dense_crf(img.cuda(), p.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), dense_crf(img, p), atol=1e-4, rtol=0)


def test_the_cpu_path_leaves_torchs_thread_setting_alone():
    threads = torch.get_num_threads()
    image = np.zeros((20, 24, 3), np.uint8)
    probs = np.full((3, 20, 24), 1 / 3, np.float32)
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            dense_crf(image, probs, iterations=1)
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(threads)


def test_probs_that_are_not_probabilities_are_refused():
    image = np.zeros((4, 5, 3), np.uint8)
    probs = np.full((2, 4, 5), 0.5, np.float32)
    for bad in (np.nan, -0.1, np.inf):
        poisoned = probs.copy()
        poisoned[0, 1, 1] = bad
        with pytest.raises(ValueError, match="must be probabilities .* pass the softmax"):
            dense_crf(image, poisoned)


def test_first_compile_of_a_process_is_logged_once(monkeypatch, caplog):
    """Real compiles: uncached copies of two kernels (so they must compile) and a foreign
    function, whose compile is not ours to announce."""
    monkeypatch.setattr(jit._FirstCompile, "announced", False)
    ours = [numba.njit(k.py_func) for k in (lattice_numba._extent, lattice_numba._is_step)]
    foreign = numba.njit(lambda x: x + 1)
    with caplog.at_level(logging.INFO, logger="permutocrf"), jit.compiles_announced():
        foreign(1)
        assert caplog.records == []
        ours[0](np.ones((3, 2), np.float32), 2)
        ours[1](np.arange(3), np.arange(3), 0)
    ours[0](np.ones((3, 2)), 2)  # outside: no listener
    assert [r.getMessage() for r in caplog.records] == [
        "dense CRF: compiling numba kernels (15-40 s, in every process: no writable cache "
        "directory; set NUMBA_CACHE_DIR)"
    ]


FIRST_USE = """
import logging, sys
import numpy as np
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from permutocrf import dense_crf
image, probs = np.load(sys.argv[1]), np.load(sys.argv[2])
np.save(sys.argv[3], dense_crf(image, probs))
"""


def test_read_only_package_caches_in_the_user_cache(tmp_path):
    """The densecrf package copied read-only (root ignores mode bits, so a file also stands
    where ``__pycache__`` would go): numba caches in $XDG_CACHE_HOME/numba instead, the first
    process announces its compile once, the second loads the cache silently."""
    package = tmp_path / "site" / "permutocrf"
    shutil.copytree(
        Path(jit.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    (package / "__pycache__").write_text("")
    for path in [package, *package.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env |= {"PYTHONPATH": str(package.parent), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    image, probs = (x.numpy() for x in toy())
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "probs.npy", probs)
    logs = []
    for run in range(2):
        args = [tmp_path / "image.npy", tmp_path / "probs.npy", tmp_path / f"q{run}.npy"]
        done = subprocess.run(
            [sys.executable, "-c", FIRST_USE, *map(str, args)],
            env=env,
            cwd=tmp_path,  # not the checkout, whose package -c would import first
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        logs.append(done.stdout.splitlines())
        np.testing.assert_allclose(np.load(args[2]), dense_crf(image, probs), atol=1e-6)
    cache = tmp_path / "cache" / "numba"
    assert [line for line in logs[0] if "compiling" in line] == [
        f"dense CRF: compiling numba kernels (15-40 s, once for these input types, cached in "
        f"{next(cache.iterdir())})"
    ]
    assert logs[1] == []
    assert any(cache.rglob("lattice_numba.*.nbi")) and any(cache.rglob("meanfield_numba.*.nbc"))
    assert not any(package.rglob("*.nbi"))


def test_prefetch_is_a_hint_only():
    @numba.njit
    def touch(a, i, j):
        jit.prefetch(a, (i, j))
        return a.sum()

    a = np.arange(12.0).reshape(3, 4)
    assert touch(a, 1, 3) == 66.0
    assert touch(a, 10**6, -7) == 66.0  # out of range: no read, no fault
    np.testing.assert_array_equal(a, np.arange(12.0).reshape(3, 4))
    line = numba.njit(lambda v, i: jit.prefetch(v, i))  # 1-D: an integer index
    line(a[0], 2)
    line(a[0], -(10**9))
    np.testing.assert_array_equal(a, np.arange(12.0).reshape(3, 4))
    for wrong in ((0, 0), 0.5):  # an index per dimension, integers
        with pytest.raises(numba.TypingError):
            line(np.zeros(3), wrong)
    with pytest.raises(numba.TypingError):
        touch(a, 1, 2.0)


@pytest.mark.parametrize("order", ["first use", "shuffled"])
@pytest.mark.parametrize("chunks", [1, 2, 3, 7, 40])
def test_chunk_spans_splat_and_reduce_as_one_pass_in_order(chunks, order):
    rng = np.random.default_rng(chunks)
    m, width, num = 50, 4, 30
    # Vertices numbered by first use, as the lattice numbers them: each point reaches back a bit
    # (vertices 33..49 no chunk reaches: they must come out 0). Shuffled, any numbering: the
    # spans must still keep the chunks' rows apart.
    vertex = np.minimum(np.arange(num)[:, None] + rng.integers(-6, 4, (num, 3)), m - 1)
    vertex = np.maximum(vertex, 0)
    if order == "shuffled":
        vertex = rng.permutation(m)[vertex]
    vertex = vertex.astype(np.int32)
    values = rng.random((num, width)).astype(np.float32)
    weight = rng.random((num, 3)).astype(np.float32)
    spans = lattice_numba._chunk_spans(vertex, chunks, m)
    rows = np.full((lattice_numba.span_rows(spans, m), width), np.nan, np.float32)
    lattice_numba._splat(vertex, weight, values, rows, spans, np.float32(0.5))
    lattice_numba._reduce(rows, spans)
    want = np.zeros((m, width), np.float32)  # one pass over the points, in order
    for i in range(num):
        for r in range(3):
            want[vertex[i, r]] += weight[i, r] * (np.float32(0.5) * values[i])
    np.testing.assert_allclose(rows[:m], want, rtol=1e-6)
    writers = np.zeros(len(rows), int)  # the chunks' rows tile the array, the missing vertex's
    for c in range(chunks):  # row aside: every row zeroed each pass, by one chunk only
        own, end, shared, base = spans[c]
        writers[own:end] += 1
        writers[base + shared : base + own] += 1
    assert (writers[:m] == 1).all() and writers[m] == 0 and (writers[m + 1 :] == 1).all()


def test_mean_field_does_not_depend_on_thread_count():
    img, p = toy(60, 80)
    logp = unary_scores(p.numpy()).reshape(p.shape[0], -1)
    kernels = [gaussian_kernel(60, 80, 1.0), bilateral_kernel(img.numpy(), 10.0, 5.0)]
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):  # 2: each chunk of pixels splats into rows of its own, then summed
            torch.set_num_threads(n)
            out.append(mean_field(logp, kernels, [3.0, 5.0], 5))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_splat_rows_do_not_grow_with_the_thread_count():
    lat = gaussian_kernel(120, 160, 1.0)  # a fine kernel: about one vertex per pixel
    m = lat.num_vertices
    rows = {
        n: lattice_numba.span_rows(lattice_numba._chunk_spans(lat.vertex, n, m), m) for n in (1, 8)
    }
    assert rows[1] == m + 1
    assert rows[8] < 1.1 * m  # 8 copies of the lattice before chunks shared one
