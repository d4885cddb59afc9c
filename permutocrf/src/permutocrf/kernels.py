"""Dense-CRF kernels for either backend: features -> normalised permutohedral lattice, the pixel
positions, the cached Gaussian (position) lattice, and the one choice of backend.

A kernel is a numba lattice (``lattice_numba.py``, CPU only) or a torch one
(``lattice_torch.py``, any device). Features are already divided by their standard deviations,
so a kernel is ``k(f_i, f_j) = exp(-|f_i - f_j|^2 / 2)``; both front ends (``dense.py`` and
``compat.py``) build theirs here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numba
import numpy as np

from permutocrf import lattice_numba, torch_support
from permutocrf.jit import entry_point, kernel
from permutocrf.lattice_numba import CpuLattice

if TYPE_CHECKING:
    from permutocrf.lattice_torch import Lattice

BACKENDS = ("auto", "numba", "torch")
"""Kernel implementations: ``numba`` (``lattice_numba.py``, CPU only), ``torch``
(``lattice_torch.py``, any device); ``auto`` picks numba for CPU tensors and arrays, torch
otherwise."""

Kernel: TypeAlias = "CpuLattice | Lattice"
"""A normalised dense-CRF kernel: a numba lattice or a torch one."""


def resolve_backend(backend: str, device: Any) -> str:
    """The lattice implementation for `backend` ("auto", "numba", "torch") on `device` (None,
    a string or a torch.device): auto is numba on CPU, torch elsewhere."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kind = torch_support.device_type(device)
    if backend == "auto":
        return "numba" if kind == "cpu" else "torch"
    if backend == "numba" and kind != "cpu":
        raise ValueError(f"the numba backend runs on CPU only, got a tensor on {device}")
    return backend


def backend_of(kernels: Sequence[Kernel], device: Any) -> str:
    """The backend that built ``kernels`` (all one), checked against the values' ``device``."""
    if all(isinstance(kernel, CpuLattice) for kernel in kernels):
        if torch_support.device_type(device) != "cpu":
            raise ValueError("numba kernels need CPU scores; build torch kernels on their device")
        return "numba"
    if not any(isinstance(kernel, CpuLattice) for kernel in kernels):
        return "torch"
    raise ValueError("kernels must all come from one backend (numba or torch)")


def positions(h: int, w: int, sx: float, sy: float, dtype: Any, images: int = 1) -> np.ndarray:
    """pydensecrf's position features (x / sx, y / sy) of pixel y * w + x, (images h w, 2):
    pixel indices in ``dtype`` (numpy's or torch's) divided by the stds (a Python float std divides in ``dtype``,
    float32 as pydensecrf's C++)."""
    dt = numpy_dtype(dtype)
    x = np.arange(w, dtype=dt) / sx
    y = np.arange(h, dtype=dt) / sy
    xy = np.stack(np.broadcast_arrays(x[None, :], y[:, None]), -1).reshape(-1, 2)
    return xy if images == 1 else np.broadcast_to(xy, (images, h * w, 2)).reshape(-1, 2)


@entry_point
def bilateral_features(
    image: np.ndarray, sx: float, sy: float, srgb: float | np.ndarray, dtype: Any
) -> np.ndarray:
    """pydensecrf's bilateral features (x / sx, y / sy, r / sr, g / sg, b / sb), (B H W, 5), of
    (B, H, W, 3) uint8 images, each a division in ``dtype`` (float32 as pydensecrf's C++);
    ``srgb`` one std or (3,). Compiled, in parallel over image rows: a CamVid frame's took
    0.5 ms on 2 threads, 2.7 ms in numpy, with the same values (one-off probe)."""
    dt = numpy_dtype(dtype)
    b, h, w, _ = image.shape
    feats = np.empty((b * h * w, 5), dt)
    stds = np.array([sx, sy, *np.broadcast_to(np.asarray(srgb, np.float64), 3)]).astype(dt)
    _bilateral_features(image, stds, feats)
    return feats


@kernel(parallel=True)
def _bilateral_features(image, stds, out):  # pragma: no cover - compiled
    """``bilateral_features`` into ``out`` (B H W, 5), ``stds`` (sx, sy, sr, sg, sb)."""
    b, h, w, _ = image.shape
    t = out.dtype.type
    for row in numba.prange(b * h):
        y = row % h
        fy = t(y) / stds[1]
        for x in range(w):
            i = row * w + x
            out[i, 0] = t(x) / stds[0]
            out[i, 1] = fy
            for c in range(3):
                out[i, 2 + c] = t(image[row // h, y, x, c]) / stds[2 + c]


def lattice(
    feats,
    images: int,
    engine: str,
    device: Any = None,
    normalised: bool = True,
    *,
    temporary: bool = False,
) -> Kernel:
    """The lattice of features (P, d) of ``images`` same-size images in turn (it never links
    two), with pydensecrf's symmetric normalisation if ``normalised``: numba's for the numba
    engine, else torch's on ``device``. ``feats`` is a numpy array, or for torch a tensor (then
    on its device). A ``temporary`` numba lattice lives in scratch memory
    (``lattice_numba.build``): never one that outlives its call."""
    if isinstance(feats, np.ndarray):
        # Writable: torch warns when it wraps read-only memory, numba compiles read-only again.
        feats = np.require(feats, requirements=("C", "W"))
    per_image = feats.shape[0] // images
    if engine == "numba":
        group = None if images == 1 else np.repeat(np.arange(images), per_image)
        built = lattice_numba.build(feats, group, images, temporary=temporary)
        return built.normalised(in_place=temporary) if normalised else built
    torch = torch_support.require("the torch backend (a device other than the CPU)")
    from permutocrf import lattice_torch

    if isinstance(feats, np.ndarray):
        feats = torch.from_numpy(feats).to(device)
    group = None
    if images > 1:
        group = torch.arange(images, device=feats.device).repeat_interleave(per_image)
    built = lattice_torch.build(feats, group, images)
    return built.normalised() if normalised else built


def gaussian_lattice(
    h: int,
    w: int,
    sx: float,
    sy: float,
    images: int,
    dtype: Any,
    device: Any,
    engine: str,
    normalised: bool,
) -> Kernel:
    """pydensecrf's position kernel (features x / sx, y / sy) over ``images`` images of h x w
    pixels, ``dtype`` numpy's or torch's, on ``device`` (ignored by numba). It depends on the
    size alone, so it is built once per size, for both front ends (measured for a CamVid frame:
    torch's 20-35 ms of ~150 ms in all, numba's 8 of 56)."""
    if engine == "numba":
        device = None
    else:
        device = torch_support.require("the torch backend").device(device or "cpu")
    return _gaussian_lattice(h, w, sx, sy, images, numpy_dtype(dtype), device, engine, normalised)


@functools.lru_cache(maxsize=8)
def _gaussian_lattice(h, w, sx, sy, images, dtype, device, engine, normalised) -> Kernel:
    """``gaussian_lattice``, its arguments in one spelling each (the cache's key)."""
    return lattice(positions(h, w, sx, sy, dtype, images), images, engine, device, normalised)


def numpy_dtype(dtype: Any) -> np.dtype:
    """A numpy dtype, or torch's float32 / float64, as a numpy dtype."""
    if type(dtype).__module__ == "torch":
        return np.dtype(str(dtype).removeprefix("torch."))
    return np.dtype(dtype)
