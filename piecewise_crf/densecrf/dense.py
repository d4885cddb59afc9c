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
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from piecewise_crf.densecrf.lattice import Lattice, build, inverse_permutation, stack

PROB_FLOOR = 1e-5
"""Probabilities are clamped to this before the log, as pydensecrf's ``unary_from_softmax``."""


def dense_crf(
    image,
    probs,
    iterations: int = 5,
    pos_xy_std: float = 3.0,
    pos_weight: float = 3.0,
    bi_xy_std: float = 80.0,
    bi_rgb_std: float = 13.0,
    bi_weight: float = 10.0,
    compat=None,
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

    Returns:
        Marginals Q of the same shape, kind (numpy / torch), dtype and device as ``probs``.
    """
    q = _as_tensor(probs, "probs")
    batched = q.dim() == 4
    if not (q.dim() in (3, 4) and q.dtype in (torch.float32, torch.float64)):
        raise ValueError(
            f"probs must be a float32/float64 array of shape (K, H, W) or (B, K, H, W); got "
            f"{q.dtype} {tuple(q.shape)}"
        )
    if not batched:
        q = q[None]
    b, k, h, w = q.shape
    img = _image(image, b, h, w, batched).to(q.device)
    _check_params(iterations, pos_xy_std, bi_xy_std, bi_rgb_std, pos_weight, bi_weight)
    mu = _compat(compat, k, q)

    logp = q.permute(0, 2, 3, 1).reshape(b, -1, k).clamp(min=PROB_FLOOR).log()
    if iterations == 0:
        out = torch.softmax(logp, 2)
    elif q.device.type == "cpu" or b == 1:
        # On CPU one image at a time is faster than one joint lattice (measured: sorting and
        # sparse products scale worse than linearly and fall out of cache), and each image
        # reuses the cached Gaussian lattice.
        gauss = _gaussian_lattice(1, h, w, pos_xy_std, q.dtype, q.device)
        out = torch.stack(
            [
                mean_field(
                    [gauss, _bilateral_lattice(img[i : i + 1], bi_xy_std, bi_rgb_std, q.dtype)],
                    logp[i],
                    [pos_weight, bi_weight],
                    iterations,
                    mu,
                )
                for i in range(b)
            ]
        )
    else:
        # On a GPU the whole batch is one lattice per kernel: fewer, larger kernels.
        lattices = [
            _gaussian_lattice(b, h, w, pos_xy_std, q.dtype, q.device),
            _bilateral_lattice(img, bi_xy_std, bi_rgb_std, q.dtype),
        ]
        out = mean_field(lattices, logp.view(-1, k), [pos_weight, bi_weight], iterations, mu)
    out = out.view(b, h, w, k).permute(0, 3, 1, 2).contiguous()
    if not batched:
        out = out[0]
    return out.numpy() if isinstance(probs, np.ndarray) else out


def mean_field(
    lattices: list[Lattice],
    logp: torch.Tensor,
    weights: list[float],
    iterations: int,
    mu: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``iterations`` parallel mean-field updates from ``Q = softmax(logp)``.

    ``logp`` (P, K) is minus the unary energy; ``lattices[k]`` (normalised) is kernel k,
    scaled by ``weights[k]``; ``mu`` (K, K) is a symmetric compatibility energy, None for
    Potts. Everything stays on ``logp``'s device: no host round-trips inside the loop.
    """
    # One point order for all kernels: the order of the lattice with the most corners (the
    # bilateral one); the others are re-expressed in it, so nothing is permuted per iteration,
    # and all kernels filter together (one splat and one slice product per iteration).
    home = max(lattices, key=lambda lattice: lattice.num_corners)
    kernels = stack([lat if lat is home else lat.reordered(home.order) for lat in lattices])
    logp = logp.index_select(0, home.order)
    q = _softmax_rows(logp)
    for _ in range(iterations):
        message = kernels.filter(q, weights)
        # Potts: -w [l != l'] and the equivalent -w ... + w [l == l'] differ by a per-pixel
        # constant, which softmax ignores, so the message enters with a plus sign.
        q = _softmax_rows(message.add_(logp) if mu is None else logp - message @ mu)
    # Back to the points' order by a gather (a scatter measured slower).
    return q.index_select(0, inverse_permutation(home.order))


def _softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the K labels of (P, K) scores.

    On CPU ``torch.softmax`` over a short last dimension measured 2x slower than shifting by the
    global maximum, one exp and a matrix-vector row sum. The shift is safe unless some row lies
    ~87 below the global maximum (its sum underflows in float32); then torch.softmax is used.
    """
    if x.device.type != "cpu":
        return torch.softmax(x, 1)
    e = (x - x.max()).exp_()
    sums = e @ x.new_ones(x.shape[1], 1)
    if sums.min() < 1e-30:
        return torch.softmax(x, 1)
    return e.div_(sums)


@functools.lru_cache(maxsize=4)
def _gaussian_lattice(b: int, h: int, w: int, std: float, dtype, device) -> Lattice:
    """The position-only lattice depends on the image size alone, so it is built once."""
    xy = _positions(b, h, w, dtype, device) / std
    return build(xy, _groups(b, h, w, device), b).normalised()


def _bilateral_lattice(img: torch.Tensor, xy_std: float, rgb_std: float, dtype) -> Lattice:
    b, h, w, _ = img.shape
    xy = _positions(b, h, w, dtype, img.device)
    feats = torch.cat([xy / xy_std, img.reshape(-1, 3).to(dtype) / rgb_std], 1)
    return build(feats, _groups(b, h, w, img.device), b).normalised()


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        # Copies, so read-only and non-contiguous arrays are fine and the caller's is untouched.
        return torch.tensor(x)
    raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _image(image, b: int, h: int, w: int, batched: bool) -> torch.Tensor:
    """Validate the image(s) against probs' (B, H, W); return (B, H, W, 3) uint8."""
    img = _as_tensor(image, "image")
    want = "(B, H, W, 3) or (B, 3, H, W)" if batched else "(H, W, 3)"
    if img.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 RGB (0-255), got {img.dtype}; convert it first")
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


def _check_params(iterations, *values) -> None:
    if not isinstance(iterations, int | np.integer) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    names = ("pos_xy_std", "bi_xy_std", "bi_rgb_std", "pos_weight", "bi_weight")
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        if not np.isfinite(v) or (i < 3 and v <= 0):
            kind = "a positive" if i < 3 else "a finite"
            raise ValueError(f"{name} must be {kind} number, got {v!r}")


def _compat(compat, k: int, like: torch.Tensor) -> torch.Tensor | None:
    if compat is None:
        return None
    mu = _as_tensor(compat, "compat").to(like)
    if tuple(mu.shape) != (k, k) or not torch.isfinite(mu).all():
        raise ValueError(f"compat must be a finite ({k}, {k}) matrix, got {tuple(mu.shape)}")
    return 0.5 * (mu + mu.T)


def _positions(b: int, h: int, w: int, dtype, device) -> torch.Tensor:
    """pydensecrf's position features (x, y) of every pixel, (B H W, 2)."""
    y, x = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=device),
        torch.arange(w, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([x, y], -1).expand(b, h, w, 2).reshape(-1, 2)


def _groups(b: int, h: int, w: int, device) -> torch.Tensor:
    return torch.arange(b, device=device).repeat_interleave(h * w)
