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
(``cpu.py``), the others torch lattices (``lattice.py``); ``backend`` overrides the choice.
Scores and marginals are label-major (K, P), as ``probs``, so the CPU path transposes nothing.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from piecewise_crf.densecrf import cpu
from piecewise_crf.densecrf.cpu import CpuLattice
from piecewise_crf.densecrf.lattice import Lattice, build, inverse_permutation, stack

PROB_FLOOR = 1e-5
"""Probabilities are clamped to this before the log, as pydensecrf's ``unary_from_softmax``."""

BACKENDS = ("auto", "numba", "torch")
"""Kernel implementations: ``numba`` (``cpu.py``, CPU only), ``torch`` (``lattice.py``, any
device); ``auto`` picks numba for CPU tensors and arrays, torch otherwise."""

Kernel = CpuLattice | Lattice
"""A normalised dense-CRF kernel: a numba lattice or a torch one."""


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
    engine = resolve_backend(backend, q.device)
    mu = _compat(compat, k, q)

    logp = unary_scores(q).contiguous()  # (B, K, H, W), overwritten by the marginals
    weights = [pos_weight, bi_weight]
    if iterations == 0:
        out = torch.softmax(logp, 1)
    elif q.device.type == "cpu" or b == 1:
        # One image at a time: on CPU faster than one joint lattice (measured with the torch
        # lattice: sorting and sparse products scale worse than linearly and fall out of
        # cache), and each image reuses the cached Gaussian kernel. The marginals overwrite
        # the scores: fewer fresh pages (after pydensecrf freed its memory, the kernel's
        # zeroing of new pages cost ~0.25 s of system time per 2-megapixel call, measured).
        gauss = gaussian_kernel(h, w, pos_xy_std, dtype=q.dtype, device=q.device, backend=engine)
        for i in range(b):
            bilateral = bilateral_kernel(
                img[i], bi_xy_std, bi_rgb_std, dtype=q.dtype, backend=engine
            )
            scores = logp[i].view(k, -1)
            if engine == "numba":
                s = scores.numpy()
                cpu.mean_field(s, [gauss, bilateral], weights, iterations, _numpy(mu), out=s)
            else:
                scores.copy_(mean_field(scores, [gauss, bilateral], weights, iterations, mu))
        out = logp
    else:
        # On a GPU the whole batch is one lattice per kernel: fewer, larger kernels.
        kernels = [
            gaussian_kernel(
                h, w, pos_xy_std, batch=b, dtype=q.dtype, device=q.device, backend=engine
            ),
            bilateral_kernel(img, bi_xy_std, bi_rgb_std, dtype=q.dtype, backend=engine),
        ]
        scores = logp.transpose(0, 1).reshape(k, -1)
        out = mean_field(scores, kernels, weights, iterations, mu).view(k, b, h, w).transpose(0, 1)
    out = (out if batched else out[0]).contiguous()
    return out.numpy() if isinstance(probs, np.ndarray) else out


def unary_scores(probs):
    """``log(max(probs, PROB_FLOOR))``, the scores (minus the unary energy) ``dense_crf``
    starts from: any shape, the kind, dtype and device of ``probs`` (numpy's log on CPU)."""
    if isinstance(probs, np.ndarray):
        clamped = np.maximum(probs, PROB_FLOOR)
        return np.log(clamped, out=clamped)
    if probs.device.type == "cpu":
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
    return _gaussian_kernel(height, width, float(xy_std), batch, dtype, device, engine)


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
    b, h, w, _ = img.shape
    engine = resolve_backend(backend, img.device)
    xy = _positions(b, h, w, dtype)
    if engine == "numba":
        feats = np.empty((xy.shape[0], 5), xy.dtype)
        np.divide(xy, xy_std, out=feats[:, :2])
        np.divide(img.numpy().reshape(-1, 3), rgb_std, out=feats[:, 2:], dtype=xy.dtype)
        return _kernel(feats, b, h, w, engine)
    rgb = img.reshape(-1, 3).to(dtype) / rgb_std
    xy = torch.from_numpy(xy / xy_std).to(img.device)
    return _kernel(torch.cat([xy, rgb], 1), b, h, w, engine)


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
    if all(isinstance(kernel, CpuLattice) for kernel in kernels):
        if logp.device.type != "cpu":
            raise ValueError("numba kernels need CPU scores; build torch kernels on their device")
        q = cpu.mean_field(
            logp.detach().contiguous().numpy(), kernels, weights, iterations, _numpy(mu)
        )
        out = torch.from_numpy(q)
    elif all(isinstance(kernel, Lattice) for kernel in kernels):
        out = _torch_mean_field(logp.T, kernels, weights, iterations, mu).T
    else:
        raise ValueError("kernels must all come from one backend (numba or torch)")
    return out.numpy() if isinstance(scores, np.ndarray) else out


def _torch_mean_field(
    logp: torch.Tensor,
    lattices: list[Lattice],
    weights: list[float],
    iterations: int,
    mu: torch.Tensor | None,
) -> torch.Tensor:
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


@functools.lru_cache(maxsize=8)
def _gaussian_kernel(h: int, w: int, std: float, b: int, dtype, device, engine: str) -> Kernel:
    xy = _positions(b, h, w, dtype) / std
    return _kernel(xy if engine == "numba" else torch.from_numpy(xy).to(device), b, h, w, engine)


def _kernel(feats, b: int, h: int, w: int, engine: str) -> Kernel:
    """The normalised lattice of features (B H W, d) of ``b`` images: a numpy array for numba,
    a tensor for torch."""
    if engine == "numba":
        group = None if b == 1 else np.repeat(np.arange(b), h * w)
        return cpu.build(feats, group, b).normalised()
    group = None if b == 1 else torch.arange(b, device=feats.device).repeat_interleave(h * w)
    return build(feats, group, b).normalised()


def _numpy(mu: torch.Tensor | None) -> np.ndarray | None:
    return None if mu is None else mu.numpy()


def resolve_backend(backend: str, device: torch.device) -> str:
    """The lattice implementation for `backend` ("auto", "numba", "torch") on `device`:
    auto is numba on CPU, torch elsewhere."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"the numba backend runs on CPU only, got a tensor on {device}")
    return backend


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        # Shared, not copied, unless read-only or not C-contiguous (then copied): never written.
        return torch.from_numpy(np.require(x, requirements=("C", "W")))
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


def _check_iterations(iterations) -> None:
    if not isinstance(iterations, int | np.integer) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")


def _check_params(iterations, *values) -> None:
    _check_iterations(iterations)
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


def _positions(b: int, h: int, w: int, dtype: torch.dtype) -> np.ndarray:
    """pydensecrf's position features (x, y) of every pixel, (B H W, 2)."""
    y, x = np.indices((h, w), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    return np.broadcast_to(np.stack([x, y], -1), (b, h, w, 2)).reshape(-1, 2)
