"""Fully connected CRF (Kraehenbuehl and Koltun 2011) by mean-field on a permutohedral lattice.

Sign convention. Like pydensecrf, this module works with *energies* (lower = more likely):
the unary is ``U = -log p`` and the label compatibility ``mu(l, l')`` is a penalty, Potts
``mu = w [l != l']`` with w > 0. Elsewhere in ``piecewise_crf`` potentials are *scores*
(log-potentials, higher = more likely): a score is minus an energy, so ``z_p = -U = log p``.
One mean-field step is ``Q = softmax(-U - m)`` with the pairwise message
``m_i(l) = sum_k w_k sum_l' mu(l, l') n_k(i) sum_j k(f_i, f_j) n_k(j) Q_j(l')`` where
``n_k = 1 / sqrt(sum_j k(f_i, f_j))`` is pydensecrf's symmetric normalisation
(NORMALIZE_SYMMETRIC, its default in DenseCRF2D). As in pydensecrf the sum over j includes
j = i: the lattice filter cannot leave the centre out.

Building blocks. ``gaussian_kernel`` and ``bilateral_kernel`` build a normalised kernel (a
lattice) once; ``mean_field`` runs on any list of kernels, from ``unary_scores(probs)``;
``dense_crf`` is those three. Kernels of CPU tensors and arrays are numba lattices
(``lattice_numba.py``), the others torch lattices (``lattice_torch.py``), built in
``kernels.py``; ``backend`` overrides the choice, made once per call (``resolve_backend``). The
mean-field iterations are ``meanfield.py``'s, which the pydensecrf drop-in shares.
Scores and marginals are label-major (K, P), as ``probs``, so the CPU path transposes nothing.
"""

from __future__ import annotations

import numpy as np
import torch

from piecewise_crf.densecrf import differentiable, meanfield
from piecewise_crf.densecrf.kernels import (
    Kernel,
    backend_of,
    bilateral_features,
    gaussian_lattice,
    lattice,
    positions,
    resolve_backend,
)

PROB_FLOOR = 1e-5
"""Probabilities are clamped to this before the log, as pydensecrf's ``unary_from_softmax``."""


def dense_crf(
    image,
    probs,
    *,
    iterations: int = 5,
    pos_xy_std: float = 3.0,
    pos_weight: float = 3.0,
    bi_xy_std: float = 80.0,
    bi_rgb_std: float = 13.0,
    bi_weight: float = 10.0,
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
    q, img, batched = _inputs(image, probs)
    _check_params(iterations, pos_xy_std, bi_xy_std, bi_rgb_std, pos_weight, bi_weight)
    mu = _compat(compat, q.shape[1], q)
    logp = unary_scores(q).contiguous()  # (B, K, H, W), overwritten by the marginals
    stds = (pos_xy_std, bi_xy_std, bi_rgb_std)
    out = refine(img, logp, (pos_weight, bi_weight), mu, iterations, stds, backend)
    out = out if batched else out[0]
    return out.numpy() if isinstance(probs, np.ndarray) else out


NOT_DIFFERENTIABLE = (
    "the numba backend has no gradients: pass backend='torch' (or 'auto') to differentiate "
    "the dense CRF, or detach the inputs"
)


def needs_grad(*values) -> bool:
    """Whether autograd would record through any of ``values`` (tensors, numbers, None)."""
    return torch.is_grad_enabled() and any(
        isinstance(v, torch.Tensor) and v.requires_grad for v in values
    )


def refine(
    images: torch.Tensor,
    logp: torch.Tensor,
    weights: tuple,
    compat: torch.Tensor | None,
    iterations: int,
    stds: tuple[float, float, float],
    backend: str = "auto",
) -> torch.Tensor:
    """``dense_crf``'s mean-field, inputs checked: marginals (B, K, H, W) from scores ``logp``
    (B, K, H, W, contiguous), (B, H, W, 3) RGB ``images`` in 0-255 (any dtype) on its device,
    ``weights`` (pos_weight, bi_weight), ``compat`` a symmetric (K, K) energy or None (Potts)
    and ``stds`` (pos_xy_std, bi_xy_std, bi_rgb_std). Without gradients the marginals
    overwrite ``logp``; with them (``needs_grad``) they come from torch lattices."""
    b, k, h, w = logp.shape
    pos_xy_std, bi_xy_std, bi_rgb_std = stds
    engine = resolve_backend(backend, logp.device)
    if needs_grad(logp, compat, *weights):
        if backend == "numba":
            raise ValueError(NOT_DIFFERENTIABLE)
        kernels = [
            _gaussian(h, w, pos_xy_std, b, logp.dtype, logp.device, "torch"),
            _bilateral(images, bi_xy_std, bi_rgb_std, logp.dtype, "torch"),
        ]
        tensors = torch.stack([torch.as_tensor(v).to(logp) for v in weights])
        flat = logp.transpose(0, 1).reshape(k, -1)
        q = differentiable.mean_field(flat, kernels, tensors, compat, iterations)
        return q.view(k, b, h, w).transpose(0, 1).contiguous()
    weights = [_number(v) for v in weights]
    if iterations == 0:
        return torch.softmax(logp, 1)
    if logp.device.type == "cpu" or b == 1:
        # One image at a time: on CPU faster than one joint lattice (measured with the torch
        # lattice: sorting and sparse products scale worse than linearly and fall out of
        # cache), and each image reuses the cached Gaussian kernel. The marginals overwrite
        # the scores: fewer fresh pages (after pydensecrf freed its memory, the kernel's
        # zeroing of new pages cost ~0.25 s of system time per 2-megapixel call, measured).
        gauss = _gaussian(h, w, pos_xy_std, 1, logp.dtype, logp.device, engine)
        for i in range(b):
            bilateral = _bilateral(images[i][None], bi_xy_std, bi_rgb_std, logp.dtype, engine)
            scores = logp[i].view(k, -1)
            meanfield.run(
                engine, scores, [gauss, bilateral], weights, iterations, compat, out=scores
            )
        return logp
    # On a GPU the whole batch is one lattice per kernel: fewer, larger kernels.
    kernels = [
        _gaussian(h, w, pos_xy_std, b, logp.dtype, logp.device, engine),
        _bilateral(images, bi_xy_std, bi_rgb_std, logp.dtype, engine),
    ]
    scores = logp.transpose(0, 1).reshape(k, -1)
    out = meanfield.run(engine, scores, kernels, weights, iterations, compat)
    return out.view(k, b, h, w).transpose(0, 1).contiguous()


def unary_scores(probs):
    """``log(max(probs, PROB_FLOOR))``, the scores (minus the unary energy) ``dense_crf``
    starts from: any shape, the kind, dtype and device of ``probs`` (numpy's log on CPU)."""
    if isinstance(probs, np.ndarray):
        clamped = np.maximum(probs, PROB_FLOOR)
        return np.log(clamped, out=clamped)
    if probs.device.type == "cpu" and not needs_grad(probs):
        return torch.from_numpy(unary_scores(probs.detach().numpy()))
    return probs.clamp(min=PROB_FLOOR).log()


def gaussian_kernel(
    height: int,
    width: int,
    xy_std: float = 3.0,
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    backend: str = "auto",
) -> Kernel:
    """pydensecrf's ``addPairwiseGaussian`` kernel (features x/xy_std, y/xy_std) over ``batch``
    images of ``height`` x ``width`` pixels, normalised. It depends on the size alone, so it is
    cached: ask for it as often as you like."""
    if not xy_std > 0:
        raise ValueError(f"xy_std must be a positive number, got {xy_std!r}")
    device = torch.device(device)
    engine = resolve_backend(backend, device)
    return _gaussian(height, width, xy_std, batch, dtype, device, engine)


def bilateral_kernel(
    image,
    xy_std: float = 80.0,
    rgb_std: float = 13.0,
    *,
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> Kernel:
    """pydensecrf's ``addPairwiseBilateral`` kernel (features x/xy_std, y/xy_std, rgb/rgb_std)
    of an (H, W, 3) or (B, H, W, 3) uint8 image, numpy or torch, normalised, for the image's
    device; a batch gets one kernel whose lattice never connects two images."""
    img = _as_tensor(image, "image")
    if img.dtype != torch.uint8 or img.dim() not in (3, 4) or img.shape[-1] != 3:
        raise ValueError(
            f"image must be uint8 RGB of shape (H, W, 3) or (B, H, W, 3), got {img.dtype} "
            f"{tuple(img.shape)}"
        )
    if not (xy_std > 0 and rgb_std > 0):
        raise ValueError(f"xy_std and rgb_std must be positive, got {xy_std!r}, {rgb_std!r}")
    img = img if img.dim() == 4 else img[None]
    return _bilateral(img, xy_std, rgb_std, dtype, resolve_backend(backend, img.device))


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
    logp = _as_tensor(scores, "scores")
    if logp.dim() != 2 or logp.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"scores must be a float32/float64 (K, P) array, got {tuple(logp.shape)}")
    _check_iterations(iterations)
    if len(weights) != len(kernels) or not kernels:
        raise ValueError(f"need one weight per kernel, got {len(weights)} for {len(kernels)}")
    if any(kernel.num_points != logp.shape[1] for kernel in kernels):
        raise ValueError(f"kernels over {kernels[0].num_points} points, scores for {logp.shape[1]}")
    mu = _compat(compat, logp.shape[0], logp)
    engine = backend_of(kernels, logp.device)
    if needs_grad(logp, mu, *weights):
        if engine == "numba":
            raise ValueError(NOT_DIFFERENTIABLE)
        weights = torch.stack([torch.as_tensor(v).to(logp) for v in weights])
        return differentiable.mean_field(logp, kernels, weights, mu, iterations)
    out = meanfield.run(engine, logp, kernels, [_number(v) for v in weights], iterations, mu)
    return out.numpy() if isinstance(scores, np.ndarray) else out


def _gaussian(h: int, w: int, std: float, b: int, dtype, device, engine: str) -> Kernel:
    """The cached normalised position kernel, for an already resolved ``engine``."""
    std = float(std)
    return gaussian_lattice(h, w, std, std, b, dtype, device, engine, True)


def _bilateral(img: torch.Tensor, xy_std: float, rgb_std: float, dtype, engine: str) -> Kernel:
    """The normalised bilateral kernel of (B, H, W, 3) RGB images in 0-255 (uint8, or float
    from ``DenseCRFLayer``), for ``engine``."""
    b, h, w, _ = img.shape
    if engine == "numba":
        feats = bilateral_features(img.numpy(), xy_std, xy_std, rgb_std, dtype)
        return lattice(feats, b, engine)
    xy = torch.from_numpy(positions(h, w, xy_std, xy_std, dtype, b)).to(img.device)
    rgb = img.reshape(-1, 3).to(dtype) / rgb_std
    return lattice(torch.cat([xy, rgb], 1), b, engine)


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        # Shared, not copied, unless read-only or not C-contiguous (then copied): never written.
        return torch.from_numpy(np.require(x, requirements=("C", "W")))
    raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _inputs(image, probs) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``dense_crf``'s inputs checked: probs as (B, K, H, W), the image(s) as (B, H, W, 3) uint8
    on probs' device, and whether they came batched."""
    q = _as_tensor(probs, "probs")
    batched = q.dim() == 4
    if not (q.dim() in (3, 4) and q.dtype in (torch.float32, torch.float64)):
        raise ValueError(
            f"probs must be a float32/float64 array of shape (K, H, W) or (B, K, H, W); got "
            f"{q.dtype} {tuple(q.shape)}"
        )
    if not bool(torch.isfinite(q).all()) or bool((q < 0).any()):
        raise ValueError(
            "probs must be probabilities (finite, >= 0), but hold NaN, infinite or negative "
            "values; pass the softmax of your network's scores"
        )
    if not batched:
        q = q[None]
    b, _, h, w = q.shape
    return q, _image(image, b, h, w, batched).to(q.device), batched


def _image(image, b: int, h: int, w: int, batched: bool, floats: bool = False) -> torch.Tensor:
    """Validate the image(s) against probs' (B, H, W); return (B, H, W, 3) uint8, or float
    too if ``floats`` (``DenseCRFLayer``'s RGB in [0, 1])."""
    img = _as_tensor(image, "image")
    want = "(B, H, W, 3) or (B, 3, H, W)" if batched else "(H, W, 3)"
    if img.dtype != torch.uint8 and not (floats and img.is_floating_point()):
        kinds = "uint8 RGB (0-255)" + (" or float RGB in [0, 1]" if floats else "")
        raise ValueError(f"image must be {kinds}, got {img.dtype}; convert it first")
    if not batched:
        img = img[None]
    if tuple(img.shape) == (b, h, w, 3):
        return img
    if batched and tuple(img.shape) == (b, 3, h, w):
        return img.permute(0, 2, 3, 1)
    raise ValueError(
        f"image must have shape {want} matching probs (B={b}, H={h}, W={w}), "
        f"got {tuple(image.shape)}"
    )


def _number(v) -> float:
    """A weight as a float; a tensor's is read detached (it may require grad)."""
    return float(v.detach() if isinstance(v, torch.Tensor) else v)


def _check_iterations(iterations) -> None:
    if not isinstance(iterations, int | np.integer) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")


def _check_params(iterations, *values) -> None:
    _check_iterations(iterations)
    names = ("pos_xy_std", "bi_xy_std", "bi_rgb_std", "pos_weight", "bi_weight")
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        if not np.isfinite(_number(v)) or (i < 3 and v <= 0):
            kind = "a positive" if i < 3 else "a finite"
            raise ValueError(f"{name} must be {kind} number, got {v!r}")


def _compat(compat, k: int, like: torch.Tensor) -> torch.Tensor | None:
    if compat is None:
        return None
    mu = _as_tensor(compat, "compat").to(like)
    if tuple(mu.shape) != (k, k) or not torch.isfinite(mu).all():
        raise ValueError(f"compat must be a finite ({k}, {k}) matrix, got {tuple(mu.shape)}")
    return 0.5 * (mu + mu.T)
