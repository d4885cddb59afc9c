"""Fully connected CRF (Kraehenbuehl and Koltun 2011) by mean-field on a permutohedral lattice.

Sign convention. Like pydensecrf, this module works with *energies* (lower = more likely):
the unary is ``U = -log p`` and the label compatibility ``mu(l, l')`` is a penalty, Potts
``mu = w [l != l']`` with w > 0. Elsewhere (e.g. in ``piecewise_crf``) potentials are *scores*
(log-potentials, higher = more likely): a score is minus an energy, so ``z_p = -U = log p``.
One mean-field step is ``Q = softmax(-U - m)`` with the pairwise message
``m_i(l) = sum_k w_k sum_l' mu(l, l') n_k(i) sum_j k(f_i, f_j) n_k(j) Q_j(l')`` where
``n_k = 1 / sqrt(sum_j k(f_i, f_j))`` is pydensecrf's symmetric normalisation
(NORMALIZE_SYMMETRIC, its default in DenseCRF2D). As in pydensecrf the sum over j includes
j = i: the lattice filter cannot leave the centre out.

Building blocks. ``gaussian_kernel`` and ``bilateral_kernel`` build a normalised kernel (a
lattice) once; ``mean_field`` runs on any list of kernels, from ``unary_scores(probs)``;
``dense_crf`` is those three. numpy arrays run here, on numba lattices (``lattice_numba.py``),
with numpy and numba alone; torch tensors, ``backend="torch"`` and gradients go to
``dense_torch.py`` (torch lattices on other devices, ``lattice_torch.py``). Kernels are built in
``kernels.py``; ``backend`` overrides the choice, made once per call (``resolve_backend``).
Scores and marginals are label-major (K, P), as ``probs``, so the CPU path transposes nothing.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from permutocrf import meanfield_numba, torch_support
from permutocrf.kernels import (
    Kernel,
    backend_of,
    bilateral_features,
    gaussian_lattice,
    lattice,
    numpy_dtype,
    resolve_backend,
)
from permutocrf.torch_support import is_tensor

PROB_FLOOR = 1e-5
"""Probabilities are clamped to this before the log, as pydensecrf's ``unary_from_softmax``."""

PARAMS = {
    "pos_xy_std": 3.0,
    "pos_weight": 3.0,
    "bi_xy_std": 80.0,
    "bi_rgb_std": 13.0,
    "bi_weight": 10.0,
}
"""The kernels' default parameters, pydensecrf's README example (``dense_crf``'s and
``DenseCRFLayer``'s defaults)."""


def dense_crf(
    image,
    probs,
    *,
    iterations: int = 5,
    pos_xy_std: float = PARAMS["pos_xy_std"],
    pos_weight: float = PARAMS["pos_weight"],
    bi_xy_std: float = PARAMS["bi_xy_std"],
    bi_rgb_std: float = PARAMS["bi_rgb_std"],
    bi_weight: float = PARAMS["bi_weight"],
    compat=None,
    backend: str = "auto",
):
    """Refine label marginals with a dense CRF (Gaussian + bilateral kernels, Potts by default).

    Args:
        image: (H, W, 3) uint8 RGB, or a batch (B, H, W, 3) / (B, 3, H, W); numpy or torch.
        probs: (K, H, W) or (B, K, H, W) float32/float64 probabilities; numpy or torch (any
            device). The unary energy is ``-log(max(probs, 1e-5))``.
        iterations: mean-field iterations; 0 returns the (normalised, clamped) input.
        pos_xy_std, pos_weight: pydensecrf's ``addPairwiseGaussian(sxy, compat)``.
        bi_xy_std, bi_rgb_std, bi_weight: pydensecrf's ``addPairwiseBilateral(sxy, srgb, rgbim,
            compat)``.
        compat: optional (K, K) compatibility energy ``mu(l, l')`` (penalty for labels l, l' at
            two similar pixels) replacing Potts ``1 - I`` in both kernels, each still scaled by
            its weight; symmetrised as pydensecrf does. ``pos_weight * compat`` is pydensecrf's
            matrix ``compat``.
        backend: one of ``BACKENDS``.

    Returns:
        Marginals Q of the same shape, kind (numpy / torch), dtype and device as ``probs``.

    Gradients: where ``probs``, ``compat`` or a weight is a tensor that requires grad (and grad
    mode is on), the marginals are computed on torch lattices on ``probs``' device, with
    gradients for all of them (``differentiable.py``; ``backend="numba"`` is then refused). The
    stds are not differentiable. ``DenseCRFLayer`` is the same with learnable parameters.
    """
    check_params(iterations, pos_xy_std, bi_xy_std, bi_rgb_std, pos_weight, bi_weight)
    weights = (pos_weight, bi_weight)
    # Python floats: a numpy float64 std would turn float32 features into float64 ones.
    stds = (float(pos_xy_std), float(bi_xy_std), float(bi_rgb_std))
    if _torch_call(backend, image, probs, compat, *weights):
        return _torch_front("dense_crf on tensors or backend='torch'").dense_crf(
            image, probs, iterations, weights, stds, compat, backend
        )
    q, batched = _probs(probs)
    img = image_layout(_array(image, "image"), q.shape, batched)
    mu = _compat(compat, q.shape[1], q.dtype)
    logp = unary_scores(q)  # (B, K, H, W), a fresh array, overwritten by the marginals
    out = refine(img, logp, [float(w) for w in weights], mu, iterations, stds)
    return out if batched else out[0]


def refine(
    images: np.ndarray,
    logp: np.ndarray,
    weights: list[float],
    compat: np.ndarray | None,
    iterations: int,
    stds: tuple[float, float, float],
) -> np.ndarray:
    """``dense_crf``'s mean-field on numba lattices, inputs checked: the marginals (B, K, H, W)
    overwrite the scores ``logp`` (B, K, H, W, C-contiguous) and are returned; ``images``
    (B, H, W, 3) RGB in 0-255, ``weights`` (pos_weight, bi_weight), ``compat`` a symmetric
    (K, K) energy or None (Potts), ``stds`` (pos_xy_std, bi_xy_std, bi_rgb_std).

    One image at a time: on CPU faster than one joint lattice (measured with the torch lattice:
    sorting and sparse products scale worse than linearly and fall out of cache), and each image
    reuses the cached Gaussian kernel. Overwriting the scores means fewer fresh pages (after
    pydensecrf freed its memory, the kernel's zeroing of new pages cost ~0.25 s of system time
    per 2-megapixel call, measured)."""
    b, k, h, w = logp.shape
    pos_xy_std, bi_xy_std, bi_rgb_std = stds
    if iterations == 0:
        logp[:] = softmax(logp, 1)
        return logp
    gauss = _gaussian(h, w, pos_xy_std, 1, logp.dtype, None, "numba")
    for i in range(b):
        feats = bilateral_features(images[i][None], bi_xy_std, bi_xy_std, bi_rgb_std, logp.dtype)
        scores = logp[i].reshape(k, -1)
        kernels = [gauss, lattice(feats, 1, "numba", temporary=True)]  # dies with the image
        meanfield_numba.mean_field(scores, kernels, weights, iterations, compat, out=scores)
    return logp


def unary_scores(probs):
    """``log(max(probs, PROB_FLOOR))``, the scores (minus the unary energy) ``dense_crf``
    starts from: any shape, the kind, dtype and device of ``probs``; a fresh array."""
    if is_tensor(probs):
        return _torch_front("unary_scores of a tensor").unary_scores(probs)
    clamped = np.maximum(probs, PROB_FLOOR)
    return np.log(clamped, out=clamped)


def gaussian_kernel(
    height: int,
    width: int,
    xy_std: float = 3.0,
    *,
    batch: int = 1,
    dtype: Any = np.float32,
    device: Any = "cpu",
    backend: str = "auto",
) -> Kernel:
    """pydensecrf's ``addPairwiseGaussian`` kernel (features x/xy_std, y/xy_std) over ``batch``
    images of ``height`` x ``width`` pixels, normalised; ``dtype`` numpy's or torch's float32 /
    float64. It depends on the size alone, so it is cached: ask for it as often as you like."""
    if not xy_std > 0:
        raise ValueError(f"xy_std must be a positive number, got {xy_std!r}")
    engine = resolve_backend(backend, device)
    if engine == "torch":
        device = torch_support.require("a torch kernel").device(device)
    return _gaussian(height, width, xy_std, batch, dtype, device, engine)


def bilateral_kernel(
    image,
    xy_std: float = 80.0,
    rgb_std: float = 13.0,
    *,
    dtype: Any = np.float32,
    backend: str = "auto",
) -> Kernel:
    """pydensecrf's ``addPairwiseBilateral`` kernel (features x/xy_std, y/xy_std, rgb/rgb_std)
    of an (H, W, 3) or (B, H, W, 3) uint8 image, numpy or torch, normalised, for the image's
    device; a batch gets one kernel whose lattice never connects two images."""
    if not (xy_std > 0 and rgb_std > 0):
        raise ValueError(f"xy_std and rgb_std must be positive, got {xy_std!r}, {rgb_std!r}")
    xy_std, rgb_std = float(xy_std), float(rgb_std)  # as dense_crf's stds
    if _torch_call(backend, image):
        return _torch_front("a torch bilateral kernel").bilateral_kernel(
            image, xy_std, rgb_std, dtype, backend
        )
    img = _array(image, "image")
    if img.dtype != np.uint8 or img.ndim not in (3, 4) or img.shape[-1] != 3:
        raise ValueError(
            f"image must be uint8 RGB of shape (H, W, 3) or (B, H, W, 3), got {img.dtype} "
            f"{tuple(img.shape)}"
        )
    img = img if img.ndim == 4 else img[None]
    feats = bilateral_features(img, xy_std, xy_std, rgb_std, dtype)
    return lattice(feats, img.shape[0], "numba")


def mean_field(
    scores,
    kernels: list[Kernel],
    weights: list[float],
    iterations: int = 5,
    compat=None,
):
    """Run ``iterations`` parallel mean-field updates from ``Q = softmax(scores)``.

    ``scores`` (K, P), numpy or torch, are label scores (minus the unary energy, e.g.
    ``unary_scores(probs).reshape(K, -1)``) of the kernels' P points (B H W pixels, row-major);
    kernel k enters scaled by ``weights[k]``, with Potts compatibility or ``compat`` (K, K) as
    in ``dense_crf``. The kernels must all come from one backend and be for ``scores``' device.
    Returns Q (K, P) of ``scores``' kind, on its device (no host round-trips in the loop).
    Differentiable in ``scores``, the weights and ``compat`` (tensors that require grad) with
    torch kernels, as ``dense_crf``; numba kernels then raise.
    """
    check_iterations(iterations)
    if len(weights) != len(kernels) or not kernels:
        raise ValueError(f"need one weight per kernel, got {len(weights)} for {len(kernels)}")
    if _torch_call("auto", scores, compat, *weights):
        return _torch_front("mean_field on tensors").mean_field(
            scores, kernels, weights, iterations, compat
        )
    logp = _array(scores, "scores")
    check_scores(logp.shape, logp.dtype in (np.float32, np.float64), kernels)
    backend_of(kernels, "cpu")  # no torch kernels for numpy scores
    mu = _compat(compat, logp.shape[0], logp.dtype)
    q = np.array(logp, order="C")  # the caller's scores stay as they were
    meanfield_numba.mean_field(q, kernels, [float(w) for w in weights], iterations, mu, out=q)
    return q


# ---------------------------------------------------------------------------------------------
# Input checks, shared with ``dense_torch.py`` (which passes shapes and dtype facts).

NOT_DIFFERENTIABLE = (
    "the numba backend has no gradients: pass backend='torch' (or 'auto') to differentiate "
    "the dense CRF, or detach the inputs"
)


def _torch_front(what: str) -> ModuleType:
    """``dense_torch`` (imported on first use), or the one-line ImportError naming the install."""
    torch_support.require(what)
    from permutocrf import dense_torch

    return dense_torch


def _torch_call(backend: str, *values) -> bool:
    """Whether a call goes to torch: any of ``values`` is a tensor, or ``backend`` is torch."""
    return backend == "torch" or any(is_tensor(v) for v in values)


def _array(x, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    return x


def check_probs(shape: tuple, is_float: bool) -> bool:
    """Check probs' layout (K, H, W) or (B, K, H, W) and kind; return whether batched."""
    if not (len(shape) in (3, 4) and is_float):
        raise ValueError(
            f"probs must be a float32/float64 array of shape (K, H, W) or (B, K, H, W); got "
            f"{tuple(shape)}"
        )
    return len(shape) == 4


BAD_PROBS = (
    "probs must be probabilities (finite, >= 0), but hold NaN, infinite or negative values; "
    "pass the softmax of your network's scores"
)


def _probs(probs) -> tuple[np.ndarray, bool]:
    """Probs checked, as (B, K, H, W), and whether they came batched."""
    q = _array(probs, "probs")
    batched = check_probs(q.shape, q.dtype in (np.float32, np.float64))
    if not np.isfinite(q).all() or (q < 0).any():
        raise ValueError(BAD_PROBS)
    return (q if batched else q[None]), batched


def image_layout(img, probs_shape: tuple, batched: bool, floats: bool = False):
    """The image(s) (numpy or torch) checked against probs' (B, K, H, W): returned as
    (B, H, W, 3), uint8, or float too if ``floats`` (``DenseCRFLayer``'s RGB in [0, 1])."""
    b, _, h, w = probs_shape
    is_float = (
        img.dtype in (np.float16, np.float32, np.float64)
        or getattr(img, "is_floating_point", lambda: False)()
    )
    if str(img.dtype).removeprefix("torch.") != "uint8" and not (floats and is_float):
        kinds = "uint8 RGB (0-255)" + (" or float RGB in [0, 1]" if floats else "")
        raise ValueError(f"image must be {kinds}, got {img.dtype}; convert it first")
    want = "(B, H, W, 3) or (B, 3, H, W)" if batched else "(H, W, 3)"
    shape = tuple(img.shape)
    if not batched:
        img, shape = img[None], (1, *shape)
    if shape == (b, h, w, 3):
        return img
    if batched and shape == (b, 3, h, w):
        return img.permute(0, 2, 3, 1) if is_tensor(img) else img.transpose(0, 2, 3, 1)
    raise ValueError(
        f"image must have shape {want} matching probs (B={b}, H={h}, W={w}), got {shape}"
    )


def check_scores(shape: tuple, is_float: bool, kernels: list[Kernel]) -> None:
    if len(shape) != 2 or not is_float:
        raise ValueError(f"scores must be a float32/float64 (K, P) array, got {tuple(shape)}")
    if any(kernel.num_points != shape[1] for kernel in kernels):
        raise ValueError(f"kernels over {kernels[0].num_points} points, scores for {shape[1]}")


def number(v) -> float:
    """A weight as a float; a tensor's is read detached (it may require grad)."""
    return float(v.detach() if is_tensor(v) else v)


def check_iterations(iterations) -> None:
    if not isinstance(iterations, int | np.integer) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")


def check_params(iterations, *values) -> None:
    check_iterations(iterations)
    names = ("pos_xy_std", "bi_xy_std", "bi_rgb_std", "pos_weight", "bi_weight")
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        if not np.isfinite(number(v)) or (i < 3 and v <= 0):
            kind = "a positive" if i < 3 else "a finite"
            raise ValueError(f"{name} must be {kind} number, got {v!r}")


def check_compat(shape: tuple, finite: bool, k: int) -> None:
    if tuple(shape) != (k, k) or not finite:
        raise ValueError(f"compat must be a finite ({k}, {k}) matrix, got {tuple(shape)}")


def _compat(compat, k: int, dtype) -> np.ndarray | None:
    """The (K, K) compat in ``dtype``, symmetrised as pydensecrf does; None stays None."""
    if compat is None:
        return None
    mu = np.asarray(compat, dtype=dtype)
    check_compat(mu.shape, bool(np.isfinite(mu).all()), k)
    return np.ascontiguousarray(0.5 * (mu + mu.T))


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax of numpy scores along ``axis``, shifted by the maximum."""
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _gaussian(h: int, w: int, std: float, b: int, dtype, device, engine: str) -> Kernel:
    """The cached normalised position kernel, for an already resolved ``engine``."""
    std = float(std)
    return gaussian_lattice(h, w, std, std, b, numpy_dtype(dtype), device, engine, True)
