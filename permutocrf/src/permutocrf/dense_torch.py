"""``dense.py``'s front end for torch tensors: any device, ``backend="torch"`` and gradients.

CPU tensors that need no gradients run on numba lattices through ``dense.refine`` (sharing
memory, no copies); other devices, and anything that requires grad, on torch lattices
(``lattice_torch.py``; gradients by ``differentiable.py``). Same sign convention and results
as ``dense.py``."""

from __future__ import annotations

import numpy as np
import torch

from permutocrf import dense, differentiable, meanfield_torch
from permutocrf.dense import NOT_DIFFERENTIABLE, number
from permutocrf.kernels import (
    Kernel,
    backend_of,
    bilateral_features,
    lattice,
    positions,
    resolve_backend,
)


def dense_crf(image, probs, iterations: int, weights: tuple, stds: tuple, compat, backend: str):
    """``dense.dense_crf`` for tensors (or ``backend="torch"``), parameters checked."""
    q = as_tensor(probs, "probs")
    batched = dense.check_probs(tuple(q.shape), q.dtype in (torch.float32, torch.float64))
    if not bool(torch.isfinite(q).all()) or bool((q < 0).any()):
        raise ValueError(dense.BAD_PROBS)
    q = q if batched else q[None]
    img = dense.image_layout(as_tensor(image, "image"), tuple(q.shape), batched).to(q.device)
    mu = compat_matrix(compat, q.shape[1], q)
    logp = unary_scores(q).contiguous()  # (B, K, H, W), overwritten by the marginals
    out = refine(img, logp, weights, mu, iterations, stds, backend)
    out = out if batched else out[0]
    return out.numpy() if isinstance(probs, np.ndarray) else out


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
    """``dense.refine`` for tensors: marginals (B, K, H, W) from scores ``logp`` (B, K, H, W,
    contiguous), (B, H, W, 3) RGB ``images`` in 0-255 (any dtype) on its device. Without
    gradients the marginals overwrite ``logp``; with them (``needs_grad``) they come from torch
    lattices."""
    b, k, h, w = logp.shape
    pos_xy_std, bi_xy_std, bi_rgb_std = stds
    engine = resolve_backend(backend, logp.device)
    if needs_grad(logp, compat, *weights):
        if backend == "numba":
            raise ValueError(NOT_DIFFERENTIABLE)
        kernels = [
            dense._gaussian(h, w, pos_xy_std, b, logp.dtype, logp.device, "torch"),
            _bilateral(images, bi_xy_std, bi_rgb_std, logp.dtype),
        ]
        tensors = torch.stack([torch.as_tensor(v).to(logp) for v in weights])
        flat = logp.transpose(0, 1).reshape(k, -1)
        q = differentiable.mean_field(flat, kernels, tensors, compat, iterations)
        return q.view(k, b, h, w).transpose(0, 1).contiguous()
    weights = [number(v) for v in weights]
    if engine == "numba":
        mu = None if compat is None else compat.detach().numpy()
        dense.refine(images.detach().numpy(), logp.detach().numpy(), weights, mu, iterations, stds)
        return logp
    if iterations == 0:
        return torch.softmax(logp, 1)
    if b == 1 or logp.device.type == "cpu":  # the torch backend on CPU: one image at a time
        gauss = dense._gaussian(h, w, pos_xy_std, 1, logp.dtype, logp.device, engine)
        for i in range(b):
            kernels = [gauss, _bilateral(images[i][None], bi_xy_std, bi_rgb_std, logp.dtype)]
            scores = logp[i].view(k, -1)
            meanfield_torch.run(scores, kernels, weights, iterations, compat, out=scores)
        return logp
    # On a GPU the whole batch is one lattice per kernel: fewer, larger kernels.
    kernels = [
        dense._gaussian(h, w, pos_xy_std, b, logp.dtype, logp.device, engine),
        _bilateral(images, bi_xy_std, bi_rgb_std, logp.dtype),
    ]
    scores = logp.transpose(0, 1).reshape(k, -1)
    out = meanfield_torch.run(scores, kernels, weights, iterations, compat)
    return out.view(k, b, h, w).transpose(0, 1).contiguous()


def unary_scores(probs: torch.Tensor) -> torch.Tensor:
    """``dense.unary_scores`` of a tensor (numpy's log for CPU tensors without gradients)."""
    if probs.device.type == "cpu" and not needs_grad(probs):
        return torch.from_numpy(dense.unary_scores(probs.detach().numpy()))
    return probs.clamp(min=dense.PROB_FLOOR).log()


def bilateral_kernel(image, xy_std: float, rgb_std: float, dtype, backend: str) -> Kernel:
    """``dense.bilateral_kernel`` of a tensor image (or on the torch backend)."""
    img = as_tensor(image, "image")
    if img.dtype != torch.uint8 or img.dim() not in (3, 4) or img.shape[-1] != 3:
        raise ValueError(
            f"image must be uint8 RGB of shape (H, W, 3) or (B, H, W, 3), got {img.dtype} "
            f"{tuple(img.shape)}"
        )
    img = img if img.dim() == 4 else img[None]
    if resolve_backend(backend, img.device) == "numba":
        feats = bilateral_features(img.numpy(), xy_std, xy_std, rgb_std, dtype)
        return lattice(feats, img.shape[0], "numba")
    return _bilateral(img, xy_std, rgb_std, dtype)


def mean_field(scores, kernels: list[Kernel], weights: list, iterations: int, compat):
    """``dense.mean_field`` for tensors (count of weights and iterations checked)."""
    logp = as_tensor(scores, "scores")
    dense.check_scores(tuple(logp.shape), logp.dtype in (torch.float32, torch.float64), kernels)
    mu = compat_matrix(compat, logp.shape[0], logp)
    engine = backend_of(kernels, logp.device)
    if needs_grad(logp, mu, *weights):
        if engine == "numba":
            raise ValueError(NOT_DIFFERENTIABLE)
        weights = torch.stack([torch.as_tensor(v).to(logp) for v in weights])
        return differentiable.mean_field(logp, kernels, weights, mu, iterations)
    weights = [number(v) for v in weights]
    if engine == "numba":
        q = dense.mean_field(logp.detach().numpy(), kernels, weights, iterations, _host(mu))
        out = torch.from_numpy(q)
    else:
        out = meanfield_torch.run(logp, kernels, weights, iterations, mu)
    return out.numpy() if isinstance(scores, np.ndarray) else out


def _host(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


def _bilateral(img: torch.Tensor, xy_std: float, rgb_std: float, dtype) -> Kernel:
    """The normalised torch bilateral kernel of (B, H, W, 3) RGB images in 0-255 (uint8, or
    float from ``DenseCRFLayer``) on their device."""
    b, h, w, _ = img.shape
    xy = torch.from_numpy(positions(h, w, xy_std, xy_std, dtype, b)).to(img.device)
    rgb = img.reshape(-1, 3).to(xy.dtype) / rgb_std
    return lattice(torch.cat([xy, rgb], 1), b, "torch")


def as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        # Shared, not copied, unless read-only or not C-contiguous (then copied): never written.
        return torch.from_numpy(np.require(x, requirements=("C", "W")))
    raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def compat_matrix(compat, k: int, like: torch.Tensor) -> torch.Tensor | None:
    """The (K, K) compat as a tensor like ``like``, symmetrised; None stays None."""
    if compat is None:
        return None
    mu = as_tensor(compat, "compat").to(like)
    dense.check_compat(tuple(mu.shape), bool(torch.isfinite(mu).all()), k)
    return 0.5 * (mu + mu.T)
