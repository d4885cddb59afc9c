"""A drop-in replacement for pydensecrf: ``pydensecrf.densecrf`` and ``pydensecrf.utils`` in one.

Change only the imports::

    import piecewise_crf.densecrf.compat as dcrf           # was: import pydensecrf.densecrf as dcrf
    from piecewise_crf.densecrf.compat import unary_from_softmax  # was: from pydensecrf.utils ...

Same names, signatures, input checks and results as pydensecrf (lucasb-eyer/pydensecrf,
pydensecrf2 on PyPI), computed on a permutohedral lattice: on CPU numba's
(``piecewise_crf.densecrf.cpu``, as ``dense_crf``), on other torch devices torch's
(``piecewise_crf.densecrf.lattice``). On CPU, mean-field runs fused (one pass over the points
per step for all kernels, ``cpu.mean_field``) when every term is Potts, or all share one
vector or matrix compat, and none normalises before or after; otherwise each term filters on
its own.

Sign convention (pydensecrf's). Everything is an *energy*, lower = more likely: the unary is
``U = -log p`` (nlabels, nvar), and one mean-field step is ``Q = softmax(-U - sum_k m_k)``
over the labels, with the pairwise term ``m_k = mu_k(K_k Q)``: ``K_k`` is kernel k's Gaussian
filter (normalised as asked) and ``mu_k`` its label compatibility: a number w is
``PottsCompatibility``, ``mu(Q) = -w Q`` (w > 0 rewards equal labels at similar points), a
vector v ``mu(Q) = diag(v) Q``, a matrix M ``mu(Q) = (M + M^T) / 2 Q`` (a penalty matrix:
``w (1 - I)`` gives Potts' labels, ``-w I`` also its ``klDivergence``).

Beyond pydensecrf (keywords it never had):
- ``device``: ``DenseCRF2D(w, h, n, device="cuda")`` runs on that torch device; inputs and
  results stay numpy arrays.
- ``backend``: ``"auto"`` (numba on CPU, torch elsewhere), ``"numba"`` or ``"torch"``
  (``piecewise_crf.densecrf.BACKENDS``), as ``dense_crf``'s.
- ``batch``: ``DenseCRF2D(w, h, n, batch=B)`` is B same-size CRFs at once (one joint lattice
  per kernel that never links two images, like ``piecewise_crf.densecrf.dense_crf``):
  ``setUnaryEnergy`` takes (B, nlabels, nvar), ``addPairwiseBilateral`` (B, h, w, 3),
  ``addPairwiseEnergy`` (D, nvar) shared or (B, D, nvar); ``inference`` returns
  (B, nlabels, nvar) and ``klDivergence`` one value per image.

Where pydensecrf crashes or silently computes garbage (a compat vector of the wrong length, a
zero std, an unknown kernel or normalisation value, a ``Unary`` of the wrong shape) this module
raises ``ValueError``. It also accepts read-only arrays and ``inference(n_iterations=5)``,
which pydensecrf refuses, and a ``Unary`` set on several CRFs (pydensecrf's first use empties it).
"""

from __future__ import annotations

import enum
import functools
import logging
import types
from dataclasses import dataclass
from numbers import Number

import numpy as np
import torch

from piecewise_crf.densecrf import cpu
from piecewise_crf.densecrf.cpu import CpuLattice
from piecewise_crf.densecrf.dense import resolve_backend
from piecewise_crf.densecrf.lattice import Lattice, Stacked, build, inverse_permutation, stack

__all__ = [
    "CONST_KERNEL",
    "DIAG_KERNEL",
    "FULL_KERNEL",
    "NORMALIZE_AFTER",
    "NORMALIZE_BEFORE",
    "NORMALIZE_SYMMETRIC",
    "NO_NORMALIZATION",
    "ConstUnary",
    "DenseCRF",
    "DenseCRF2D",
    "KernelType",
    "LogisticUnary",
    "NormalizationType",
    "Unary",
    "compute_unary",
    "create_pairwise_bilateral",
    "create_pairwise_gaussian",
    "eigen",
    "softmax_to_unary",
    "unary_from_labels",
    "unary_from_softmax",
]


class KernelType(enum.IntEnum):
    """pydensecrf's kernel types. They only say which kernel parameters its (unwrapped) learning
    code would fit; inference is the same for all three, so they are checked and accepted."""

    CONST_KERNEL = 0
    DIAG_KERNEL = 1
    FULL_KERNEL = 2


class NormalizationType(enum.IntEnum):
    """pydensecrf's kernel normalisations, with ``n = K 1`` (the filtered ones):
    none, ``K Q / n`` (after), ``K (Q / n)`` (before) and ``n^-1/2 K (n^-1/2 Q)`` (symmetric)."""

    NO_NORMALIZATION = 0
    NORMALIZE_BEFORE = 1
    NORMALIZE_AFTER = 2
    NORMALIZE_SYMMETRIC = 3


CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL = KernelType
NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, NORMALIZE_SYMMETRIC = NormalizationType


# ---------------------------------------------------------------------------------------------
# Input checks: pydensecrf's typed memoryviews (float32 / uint8, C-contiguous, ndim) and shapes.


def _array(arr, name: str) -> np.ndarray:
    """``arr`` as a numpy array; TypeError for None and non-buffers, as pydensecrf."""
    if arr is None:
        raise TypeError(f"Argument '{name}' must not be None")
    if not isinstance(arr, np.ndarray):
        try:
            memoryview(arr)
        except TypeError:
            raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}") from None
    return np.asarray(arr)


def _buffer(arr, name: str, dtype, ndims: tuple[int, ...], layout: str) -> np.ndarray:
    """pydensecrf's buffer check: ``dtype``, one of ``ndims`` dimensions, C-contiguous."""
    a = _array(arr, name)
    if a.ndim not in ndims:
        raise ValueError(f"{name} must be {layout}, got an array of shape {a.shape}")
    if a.dtype != dtype:
        kind = np.dtype(dtype).name
        raise ValueError(f"{name} must be {kind}, got {a.dtype}: pass {name}.astype(np.{kind})")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous: pass np.ascontiguousarray({name})")
    return a


def _tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """``a`` (any layout, read-only too) as a C-contiguous tensor on ``device``."""
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # torch cannot wrap read-only memory
        a = a.copy()
    return torch.from_numpy(a).to(device)


def _count(value, name: str) -> int:
    """A positive whole number (pydensecrf's C ``int`` arguments)."""
    n = int(value)
    if n != value or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


def _stds(value, n: int, name: str) -> list[float]:
    """A number, or at least n numbers (pydensecrf ignores any beyond n), each non-zero."""
    stds = [value] * n if isinstance(value, Number) else list(value)
    if len(stds) < n:
        raise ValueError(f"{name} must be a number or {n} numbers, got {value!r}")
    stds = [float(s) for s in stds[:n]]
    if not all(np.isfinite(s) and s != 0 for s in stds):
        raise ValueError(
            f"{name} must be finite and non-zero (a standard deviation), got {value!r}"
        )
    return stds


def _member(enum_type, value, name: str):
    try:
        return enum_type(value)
    except ValueError:
        names = ", ".join(m.name for m in enum_type)
        raise ValueError(f"{name} must be one of {names}; got {value!r}") from None


def _compatibility(compat, nlabels: int) -> float | np.ndarray:
    """pydensecrf's ``_labelcomp``: a number (Potts weight), a float32 vector or matrix."""
    if isinstance(compat, Number):
        return float(np.float32(compat))  # pydensecrf keeps it as a C float
    layout = f"a number, a ({nlabels},) or a ({nlabels}, {nlabels}) float32 array"
    c = _array(compat, "compat")
    if c.ndim not in (1, 2):
        raise ValueError(f"LabelCompatibility of dimension {c.ndim} not meaningful: pass {layout}")
    c = _buffer(c, "compat", np.float32, (1, 2), layout)
    if c.shape != (nlabels,) * c.ndim:
        raise ValueError(f"compat must be {layout} for {nlabels} labels, got shape {c.shape}")
    return 0.5 * (c + c.T) if c.ndim == 2 else c.copy()  # MatrixCompatibility symmetrises


# ---------------------------------------------------------------------------------------------
# pydensecrf.eigen's conversions (its Python-visible matrices are numpy arrays here).


def _matrix_xf(arr) -> np.ndarray:
    """pydensecrf.eigen.matrixXf: a column-major float32 copy of a 2-D float32 array."""
    a = _buffer(arr, "arr", np.float32, (2,), "a 2-D array")
    return np.array(a, order="F")


def _vector_xf(arr) -> np.ndarray:
    """pydensecrf.eigen.vectorXf: a float32 copy of a 1-D float32 array."""
    return _buffer(arr, "arr", np.float32, (1,), "a 1-D array").copy()


eigen = types.SimpleNamespace(
    MatrixXf=lambda: np.empty((0, 0), np.float32, order="F"),
    VectorXf=lambda: np.empty(0, np.float32),
    matrixXf=_matrix_xf,
    vectorXf=_vector_xf,
)
"""pydensecrf.eigen (``dcrf.eigen``): its MatrixXf / VectorXf are numpy arrays here."""


# ---------------------------------------------------------------------------------------------
# Unary objects (DenseCRF.setUnary).


class Unary:
    """pydensecrf's unary base class. Set on a CRF it gives no unary energy (as there)."""

    _energy: np.ndarray | None = None


class ConstUnary(Unary):
    """A fixed unary energy ``u`` (nlabels, nvar), float32, C-contiguous."""

    def __init__(self, u):
        self._energy = _buffer(u, "u", np.float32, (2,), "(nlabels, nvar)").copy()


class LogisticUnary(Unary):
    """The unary energy ``L @ f``: L (nlabels, nfeatures), f (nfeatures, nvar), float32."""

    def __init__(self, L, f):
        L = _buffer(L, "L", np.float32, (2,), "(nlabels, nfeatures)")
        f = _buffer(f, "f", np.float32, (2,), "(nfeatures, nvar)")
        if L.shape[1] != f.shape[0]:
            raise ValueError(
                f"L (nlabels, F) and f (F, nvar) must share F, got {L.shape}, {f.shape}"
            )
        self._energy = L @ f


# ---------------------------------------------------------------------------------------------
# The CRF.


@dataclass(frozen=True)
class _Term:
    """One pairwise energy: its lattice (normalised if symmetric), normalisation, compat."""

    lattice: Lattice | CpuLattice
    normalization: NormalizationType
    compat: float | np.ndarray  # Potts weight, (M,) diagonal or (M, M) symmetric matrix


def _scales(lattice, normalization: NormalizationType, ones) -> tuple:
    """A term's (P, 1) normalisation (before, after) its filter, None where it has none:
    pydensecrf's DenseKernel::initLattice, ``1 / (K 1 + 1e-20)``. (Its NO_NORMALIZATION
    computes a mean norm too, but filter() never applies it.) ``ones`` (P, 1), numpy or torch
    as the lattice."""
    if normalization not in (NORMALIZE_BEFORE, NORMALIZE_AFTER):
        return None, None
    scale = 1 / (lattice.filter(ones) + 1e-20)
    return (scale, None) if normalization == NORMALIZE_BEFORE else (None, scale)


@dataclass(frozen=True)
class _TorchPlan:
    """The terms on torch lattices, re-expressed in one point order, ready for mean-field steps.

    Potts terms whose normalisation is built into their lattice (symmetric, none) are stacked
    and filtered together (one splat and one slice product for all, as ``dense_crf``); the
    others are filtered one by one, with their (P, 1) normalisation before or after.
    """

    order: torch.Tensor  # sorted position -> point
    inverse: torch.Tensor  # point -> sorted position
    potts: Stacked | None
    weights: list[float]
    others: list[tuple[Lattice, torch.Tensor | None, torch.Tensor | None, float | torch.Tensor]]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Rows in point order -> rows in the plan's order."""
        return t.index_select(0, self.order)

    def scatter(self, t: torch.Tensor) -> torch.Tensor:
        """Rows in the plan's order -> rows in point order."""
        return t.index_select(0, self.inverse)

    def pairwise(self, q: torch.Tensor) -> torch.Tensor:
        """``sum_k mu_k(K_k Q)`` for marginals q (P, M) in the plan's order (pydensecrf's
        ``PairwisePotential::apply`` summed over the terms)."""
        if self.potts is None:
            energy = torch.zeros_like(q)
        else:
            energy = self.potts.filter(q, self.weights).neg_()  # Potts: -w K Q
        for lattice, before, after, compat in self.others:
            filtered = lattice.filter(q if before is None else q * before)
            if after is not None:
                filtered.mul_(after)
            if isinstance(compat, float):
                energy.sub_(filtered, alpha=compat)
            elif compat.dim() == 1:
                energy.addcmul_(filtered, compat)
            else:
                energy.addmm_(filtered, compat)  # compat is symmetric: (M Q)^T = Q^T M
        return energy


def _torch_plan(terms: list[_Term], num: int, device: torch.device) -> _TorchPlan:
    # One order for all kernels, that of the lattice with the most corners (dense_crf's choice:
    # the others' splat and slice are re-expressed in it, so steps permute nothing).
    if not terms:
        order = torch.arange(num, device=device)
        return _TorchPlan(order, order, None, [], [])
    home = max((t.lattice for t in terms), key=lambda lat: lat.num_corners)
    ones = torch.ones(num, 1, device=device)
    stacked, weights, others = [], [], []
    for term in terms:
        lat = term.lattice if term.lattice is home else term.lattice.reordered(home.order)
        norm, potts = term.normalization, isinstance(term.compat, float)
        if potts and norm in (NO_NORMALIZATION, NORMALIZE_SYMMETRIC):
            stacked.append(lat)
            weights.append(term.compat)
            continue
        mu = term.compat if potts else _tensor(term.compat, device)
        others.append((lat, *_scales(lat, norm, ones), mu))
    return _TorchPlan(
        home.order,
        inverse_permutation(home.order),
        stack(stacked) if stacked else None,
        weights,
        others,
    )


@dataclass(frozen=True)
class _CpuPlan:
    """The terms on numba lattices, which work in point order (``gather`` and ``scatter`` move
    nothing).

    ``fused`` (lattices, weights, compat matrix or None for Potts) is how ``cpu.mean_field``
    runs them all in one pass over the points per step (``_fusion``), None where it cannot;
    ``filters`` (lattice, normalisation before, after, compat) filter them one by one, for
    those cases and for ``stepInference`` and ``klDivergence``.
    """

    filters: list[tuple[CpuLattice, np.ndarray | None, np.ndarray | None, float | np.ndarray]]
    fused: tuple[list[CpuLattice], list[float], np.ndarray | None] | None

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def scatter(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def pairwise(self, q: torch.Tensor) -> torch.Tensor:
        """``sum_k mu_k(K_k Q)`` for marginals q (P, M), as ``_TorchPlan.pairwise``."""
        values = q.numpy()
        energy = np.zeros_like(values)
        for lattice, before, after, compat in self.filters:
            potts = isinstance(compat, float)
            x = values if before is None else values * before
            filtered = lattice.filter(x, -compat if potts else 1.0)  # Potts: -w K Q
            if after is not None:
                filtered *= after
            if potts:
                energy += filtered
            elif compat.ndim == 1:
                energy += filtered * compat
            else:
                energy += filtered @ compat  # compat is symmetric: (M Q)^T = Q^T M
        return torch.from_numpy(energy)

    def mean_field(self, scores: np.ndarray, iterations: int) -> torch.Tensor:
        """Q (P, M) after ``iterations`` fused steps from ``softmax(scores)``: ``scores`` (M, P)
        C-contiguous is minus the unary energy."""
        lattices, weights, mu = self.fused
        q = np.empty(scores.shape[::-1], scores.dtype)
        # Written as its transpose, (M, P) column-major: pydensecrf's result layout without a
        # copy (1 ms of 37 on a CamVid frame); numba compiles this layout once more (2.7 s).
        cpu.mean_field(scores, lattices, weights, iterations, mu, out=q.T)
        return torch.from_numpy(q)


def _fusion(terms: list[_Term]) -> tuple[list[CpuLattice], list[float], np.ndarray | None] | None:
    """How ``cpu.mean_field`` runs these terms fused: their lattices, weights and one compat
    matrix (None: Potts, each term's weight its own). None where it cannot: no terms, a
    normalisation before or after the filter (not folded into the lattice), or compats that
    differ beyond Potts weights."""
    if not terms or any(t.normalization in (NORMALIZE_BEFORE, NORMALIZE_AFTER) for t in terms):
        return None
    lattices = [t.lattice for t in terms]
    potts = [isinstance(t.compat, float) for t in terms]
    if all(potts):  # mu(Q) = -w Q: the message enters with a plus sign
        return lattices, [t.compat for t in terms], None
    if any(potts):
        return None
    mus = [np.diag(t.compat) if t.compat.ndim == 1 else t.compat for t in terms]
    if not all(np.array_equal(mu, mus[0]) for mu in mus[1:]):
        return None
    return lattices, [1.0] * len(terms), mus[0]


def _cpu_plan(terms: list[_Term], num: int) -> _CpuPlan:
    ones = np.ones((num, 1), np.float32)
    filters = [(t.lattice, *_scales(t.lattice, t.normalization, ones), t.compat) for t in terms]
    return _CpuPlan(filters, _fusion(terms))


_Plan = _TorchPlan | _CpuPlan


def _iterate(plan: _Plan, logp: torch.Tensor, iterations: int) -> torch.Tensor:
    """Q (P, M) after ``iterations`` mean-field steps from ``softmax(logp)``, in the plan's
    order, filtering the terms one by one (or stacked)."""
    q = _softmax(logp)
    for _ in range(iterations):
        q = _softmax(logp - plan.pairwise(q))
    return q


def _softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the labels of (P, M) values, shifted by each row's maximum (pydensecrf's
    expAndNormalize). torch.softmax over the short last axis measured 11 ms for a CamVid frame
    (172800 x 11, CPU), this 2 ms."""
    e = (x - x.amax(1, keepdim=True)).exp_()
    return e.div_(e.sum(1, keepdim=True))


def _lattice(feats: np.ndarray, engine: str, device: torch.device, symmetric: bool):
    """The lattice of features (B, nvar, D) (one per image, joined), normalised if symmetric:
    numba's for the numba engine, else torch's on ``device``."""
    images, nvar, d = feats.shape
    if engine == "numba":
        group = None if images == 1 else np.repeat(np.arange(images), nvar)
        # Writable: cpu.build wraps the features in a tensor, which warns for read-only ones.
        points = np.require(feats.reshape(images * nvar, d), requirements=("C", "W"))
        lattice = cpu.build(points, group, images)
    else:
        group = None
        if images > 1:
            group = torch.arange(images, device=device).repeat_interleave(nvar)
        lattice = build(_tensor(feats, device).view(images * nvar, d), group, images)
    return lattice.normalised() if symmetric else lattice


def _positions(w: int, h: int, sx: float, sy: float) -> np.ndarray:
    """pydensecrf's position features (x / sx, y / sy) of pixel y * w + x, (w h, 2), computed in
    float32 as its C++."""
    x = np.arange(w, dtype=np.float32) / np.float32(sx)
    y = np.arange(h, dtype=np.float32) / np.float32(sy)
    return np.stack(np.broadcast_arrays(x[None, :], y[:, None]), -1).reshape(-1, 2)


@functools.lru_cache(maxsize=4)
def _gaussian_lattice(w, h, sx, sy, images, engine, device, symmetric):
    """The position kernel's lattice depends on the image size alone, so it is built once
    (measured for a CamVid frame: torch's 20-35 ms of ~150 ms in all, numba's 8 of 56)."""
    xy = np.broadcast_to(_positions(w, h, sx, sy), (images, w * h, 2))
    return _lattice(xy, engine, device, symmetric)


class DenseCRF:
    """pydensecrf's ``DenseCRF(nvar, nlabels)``: a dense CRF over nvar points of any feature space.

    ``device`` (a torch device, default CPU), ``batch`` (B same-size CRFs at once; every array
    then gains a leading B axis) and ``backend`` are this module's additions; see the module
    docstring.
    """

    def __init__(
        self,
        nvar: int,
        nlabels: int,
        *,
        device=None,
        batch: int | None = None,
        backend: str = "auto",
    ):
        self._nvar = _count(nvar, "nvar")
        self._nlabel = _count(nlabels, "nlabels")
        self._batch = None if batch is None else _count(batch, "batch")
        self._device = torch.device("cpu" if device is None else device)
        self._engine = resolve_backend(backend, self._device)
        self._scores: np.ndarray | None = None  # minus the unary energy, (B, nlabels, nvar)
        self._terms: list[_Term] = []
        self._plan_cache: _Plan | None = None
        self._logp_cache: torch.Tensor | None = None  # _scores as (B nvar, nlabels), plan order

    @property
    def _images(self) -> int:
        return self._batch or 1

    def _shape(self, *dims: int) -> tuple[int, ...]:
        return dims if self._batch is None else (self._batch, *dims)

    # -- unary --------------------------------------------------------------------------------

    def setUnaryEnergy(self, u, f=None) -> None:
        """Set the unary energy ``u`` (nlabels, nvar) float32, C-contiguous: -log probabilities.

        With ``f``, the energy is ``u @ f`` (pydensecrf's LogisticUnaryEnergy; f (nvar, nvar)).
        """
        need = self._shape(self._nlabel, self._nvar)
        u = _buffer(u, "u", np.float32, (len(need),), f"of shape {need}")
        if u.shape != need:
            raise ValueError(
                f"Bad shape for unary energy (Need {need}, got {u.shape}): pass -log "
                f"probabilities, labels first, points flattened: U.reshape({need[-2]}, -1)"
            )
        if f is not None:
            f = _buffer(f, "f", np.float32, (2,), f"of shape {(self._nvar, self._nvar)}")
            if f.shape != (self._nvar, self._nvar):
                raise ValueError(f"f must have shape {(self._nvar, self._nvar)}, got {f.shape}")
            u = u @ f
        self._set_unary(u)

    def setUnary(self, u: Unary) -> None:
        """Set a ``ConstUnary`` or ``LogisticUnary`` (a bare ``Unary`` clears the unary)."""
        if not isinstance(u, Unary):
            raise TypeError(
                f"Argument 'u' has incorrect type (expected Unary, got {type(u).__name__})"
            )
        need = self._shape(self._nlabel, self._nvar)
        if u._energy is not None and u._energy.shape != need:
            raise ValueError(f"Bad shape for unary energy (Need {need}, got {u._energy.shape})")
        self._set_unary(u._energy)

    def _set_unary(self, u: np.ndarray | None) -> None:
        shape = (self._images, self._nlabel, self._nvar)
        self._scores = None if u is None else np.negative(u).reshape(shape)  # a copy
        self._logp_cache = None

    # -- pairwise -----------------------------------------------------------------------------

    def addPairwiseEnergy(
        self, features, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC
    ) -> None:
        """Add ``compat``-weighted Gaussian kernel ``exp(-|f_i - f_j|^2 / 2)`` on ``features``
        (D, nvar) float32, C-contiguous (already divided by their standard deviations)."""
        dims = (2,) if self._batch is None else (2, 3)
        shape = f"(D, {self._nvar})" + (
            f" or ({self._batch}, D, {self._nvar})" if self._batch else ""
        )
        feats = _buffer(features, "features", np.float32, dims, f"of shape {shape}")
        batch_ok = feats.shape[:-2] in ((), (self._batch,))
        if feats.shape[-1] != self._nvar or feats.shape[-2] < 1 or not batch_ok:
            raise ValueError(f"Bad shape for pairwise energy (Need {shape}, got {feats.shape})")
        points_first = np.swapaxes(feats, -1, -2)
        points_first = np.broadcast_to(points_first, (self._images, *points_first.shape[-2:]))
        self._add(functools.partial(_lattice, points_first), compat, kernel, normalization)

    def _add(self, lattice_of, compat, kernel, normalization) -> None:
        """Check a term's arguments, then add it on the lattice
        ``lattice_of(engine, device, symmetric)``."""
        _member(KernelType, kernel, "kernel")
        norm = _member(NormalizationType, normalization, "normalization")
        mu = _compatibility(compat, self._nlabel)
        lattice = lattice_of(self._engine, self._device, norm == NORMALIZE_SYMMETRIC)
        self._terms.append(_Term(lattice, norm, mu))
        self._plan_cache = self._logp_cache = None

    # -- inference ----------------------------------------------------------------------------

    def _plan(self) -> _Plan:
        if self._plan_cache is None:
            num = self._images * self._nvar
            if self._engine == "numba":
                self._plan_cache = _cpu_plan(self._terms, num)
            else:
                self._plan_cache = _torch_plan(self._terms, num, self._device)
        return self._plan_cache

    def _logp(self, plan: _Plan) -> torch.Tensor:
        """Minus the unary energy (zero without one), (P, M) in the plan's order; cached, so
        never written to."""
        if self._logp_cache is None:
            num = self._images * self._nvar
            if self._scores is None:
                self._logp_cache = torch.zeros(num, self._nlabel, device=self._device)
            else:
                points_first = _tensor(np.swapaxes(self._scores, 1, 2), self._device)
                self._logp_cache = plan.gather(points_first.view(num, self._nlabel))
        return self._logp_cache

    def _label_major_scores(self) -> np.ndarray:
        """Minus the unary energy (zeros without one), (M, P) C-contiguous, images in turn."""
        if self._scores is None:
            return np.zeros((self._nlabel, self._images * self._nvar), np.float32)
        return self._scores[0] if self._images == 1 else np.hstack(self._scores)

    def _to_numpy(self, q: torch.Tensor, plan: _Plan) -> np.ndarray:
        """(P, M) in the plan's order -> float32 (B,) nlabels x nvar, column-major like Eigen."""
        points = plan.scatter(q).view(self._images, self._nvar, self._nlabel)
        out = points.cpu().numpy().transpose(0, 2, 1)
        return out if self._batch is not None else out[0]

    def _from_numpy(self, q, plan: _Plan) -> torch.Tensor:
        if not isinstance(q, np.ndarray):
            raise TypeError(
                f"Argument 'Q' has incorrect type (expected the array that startInference "
                f"returned, got {type(q).__name__})"
            )
        need = self._shape(self._nlabel, self._nvar)
        if q.shape != need:
            raise ValueError(f"Q must have shape {need} (nlabels, nvar), got {q.shape}")
        points_first = _tensor(np.swapaxes(q, -1, -2).astype(np.float32, copy=False), self._device)
        return plan.gather(points_first.view(-1, self._nlabel))

    def inference(self, n_iterations: int) -> np.ndarray:
        """Run ``n_iterations`` mean-field steps from ``softmax(-U)``; return Q (nlabels, nvar)
        float32 (negative counts run none, as pydensecrf)."""
        plan = self._plan()
        iterations = max(0, int(n_iterations))
        if isinstance(plan, _CpuPlan) and plan.fused is not None:
            q = plan.mean_field(self._label_major_scores(), iterations)
        else:
            q = _iterate(plan, self._logp(plan), iterations)
        return self._to_numpy(q, plan)

    def startInference(self):
        """Return ``(Q, tmp1, tmp2)``: Q = softmax(-U) (zeros without a unary, as pydensecrf)
        and two scratch matrices, which stay empty (0, 0) as pydensecrf's Python views of them."""
        plan = self._plan()
        if self._scores is None:
            q = torch.zeros(self._images * self._nvar, self._nlabel, device=self._device)
        else:
            q = _softmax(self._logp(plan))
        return self._to_numpy(q, plan), eigen.MatrixXf(), eigen.MatrixXf()

    def stepInference(self, Q, tmp1, tmp2) -> None:
        """One mean-field step, updating ``Q`` (from ``startInference``) in place."""
        plan = self._plan()
        q = self._from_numpy(Q, plan)
        Q[...] = self._to_numpy(_softmax(self._logp(plan) - plan.pairwise(q)), plan)

    def klDivergence(self, Q):
        """pydensecrf's ``klDivergence``: ``sum Q log Q + sum U Q + sum Q mu(K Q)``, the mean-field
        free energy up to the log partition function (a float; one per image with ``batch``)."""
        plan = self._plan()
        q = self._from_numpy(Q, plan)
        energy = plan.pairwise(q) - self._logp(plan)
        terms = (q.double() * (q.clamp(min=1e-20).log() + energy).double()).sum(1)
        values = plan.scatter(terms).view(self._images, -1).sum(1).cpu().numpy()
        return values if self._batch is not None else float(values[0])


class DenseCRF2D(DenseCRF):
    """pydensecrf's ``DenseCRF2D(w, h, nlabels)``: a dense CRF over the pixels of a w x h image,
    points in row-major order (index ``y * w + x``), so ``Q.reshape(nlabels, h, w)``."""

    def __init__(
        self,
        w: int,
        h: int,
        nlabels: int,
        *,
        device=None,
        batch: int | None = None,
        backend: str = "auto",
    ):
        self._w, self._h = _count(w, "w"), _count(h, "h")
        super().__init__(self._w * self._h, nlabels, device=device, batch=batch, backend=backend)

    def addPairwiseGaussian(
        self, sxy, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC
    ) -> None:
        """Add the position kernel with standard deviation ``sxy`` (a number or (sx, sy))."""
        sx, sy = _stds(sxy, 2, "sxy")
        lattice_of = functools.partial(_gaussian_lattice, self._w, self._h, sx, sy, self._images)
        self._add(lattice_of, compat, kernel, normalization)

    def addPairwiseBilateral(
        self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC
    ) -> None:
        """Add the position + colour kernel: ``sxy`` a number or (sx, sy), ``srgb`` a number or
        (sr, sg, sb), ``rgbim`` (h, w, 3) uint8 C-contiguous."""
        sx, sy = _stds(sxy, 2, "sxy")
        srgb = np.array(_stds(srgb, 3, "srgb"), np.float32)
        need = self._shape(self._h, self._w, 3)
        img = _buffer(rgbim, "rgbim", np.uint8, (len(need),), f"of shape {need}")
        if img.shape[:-1] != need[:-1]:
            raise ValueError(f"Bad shape for pairwise bilateral (Need {need}, got {img.shape})")
        if img.shape[-1] != 3:
            raise ValueError(
                "addPairwiseBilateral only works for RGB images (h, w, 3). For other types, use "
                "create_pairwise_bilateral to construct your own features and addPairwiseEnergy"
            )
        # Written in place: measured 1.6 ms for a CamVid frame, 4.4 ms by astype and concatenate.
        feats = np.empty((self._images, self._nvar, 5), np.float32)
        feats[..., :2] = _positions(self._w, self._h, sx, sy)
        np.divide(
            img.reshape(self._images, self._nvar, 3), srgb, out=feats[..., 2:], dtype=np.float32
        )
        self._add(functools.partial(_lattice, feats), compat, kernel, normalization)


# ---------------------------------------------------------------------------------------------
# pydensecrf.utils


class _RangeError(ValueError, AssertionError):
    """pydensecrf.utils asserts its ranges (AssertionError); here that is also a ValueError."""


def unary_from_labels(labels, n_labels, gt_prob, zero_unsure=True):
    """Unary energy (n_labels, npoints) float32 from a label map: probability ``gt_prob`` for the
    given label, the rest shared by the others; with ``zero_unsure`` label 0 means "unknown"
    (uniform) and labels are 1..n_labels."""
    if not 0 < gt_prob < 1:
        raise _RangeError(f"gt_prob must be in (0, 1), got {gt_prob!r}")
    labels = labels.flatten()
    n_energy = -np.log((1.0 - gt_prob) / (n_labels - 1))
    p_energy = -np.log(gt_prob)
    # Order matters: the given labels overwrite the rest, then the unknown ones overwrite those.
    U = np.full((n_labels, len(labels)), n_energy, dtype="float32")
    U[labels - 1 if zero_unsure else labels, np.arange(U.shape[1])] = p_energy
    if zero_unsure:
        U[:, labels == 0] = -np.log(1.0 / n_labels)
    return U


def compute_unary(labels, M, GT_PROB=0.5):
    """Deprecated, use `unary_from_labels` instead."""
    logging.warning("pydensecrf.compute_unary is deprecated, use unary_from_labels instead.")
    return unary_from_labels(labels, M, GT_PROB)


def unary_from_softmax(sm, scale=None, clip=1e-5):
    """Unary energy (n_classes, npoints) float32 ``-log(sm)`` from softmax outputs ``sm``
    (classes first); ``scale`` mixes in the uniform distribution (sm 1 -> probability scale),
    ``clip`` is the smallest probability kept."""
    num_cls = sm.shape[0]
    if scale is not None:
        if not 0 < scale <= 1:
            raise _RangeError(f"scale must be in (0, 1], got {scale!r}")
        uniform = np.ones(sm.shape) / num_cls
        sm = scale * sm + (1 - scale) * uniform
    if clip is not None:
        sm = np.clip(sm, clip, 1.0)
    return -np.log(sm).reshape([num_cls, -1]).astype(np.float32)


def softmax_to_unary(sm, GT_PROB=1):
    """Deprecated, use `unary_from_softmax` instead."""
    logging.warning("pydensecrf.softmax_to_unary is deprecated, use unary_from_softmax instead.")
    return unary_from_softmax(sm, None if GT_PROB == 1 else GT_PROB, clip=None)


def _scaled_mesh(sdims, shape) -> np.ndarray:
    """Index coordinates (len(shape), *shape) float32 of an array of ``shape``, coordinate i
    divided by ``sdims[i]``."""
    mesh = np.array(np.meshgrid(*[range(s) for s in shape], indexing="ij"), dtype=np.float32)
    for i, s in enumerate(sdims):
        mesh[i] /= s
    return mesh


def create_pairwise_gaussian(sdims, shape):
    """Position features (len(sdims), prod(shape)) float32 of an array of any ``shape``: index
    coordinate i divided by ``sdims[i]`` (``DenseCRF2D.addPairwiseGaussian``'s in 2-D, (y, x))."""
    return _scaled_mesh(sdims, shape).reshape([len(sdims), -1])


def create_pairwise_bilateral(sdims, schan, img, chdim=-1):
    """Position + channel features (ndim + channels, npoints) float32 of ``img``: positions /
    ``sdims``, channels / ``schan`` (a number or one per channel); ``chdim`` is the channel axis,
    -1 for none."""
    if chdim == -1:
        im_feat = img[np.newaxis].astype(np.float32)
    else:
        im_feat = np.rollaxis(img, chdim).astype(np.float32)
    if isinstance(schan, Number):
        im_feat /= schan
    else:
        for i, s in enumerate(schan):
            im_feat[i] /= s
    feats = np.concatenate([_scaled_mesh(sdims, im_feat.shape[1:]), im_feat])
    return feats.reshape([feats.shape[0], -1])
