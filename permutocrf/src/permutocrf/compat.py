"""A drop-in replacement for pydensecrf: ``pydensecrf.densecrf`` and ``pydensecrf.utils`` in one.

Change only the imports::

    import permutocrf as dcrf                       # was: import pydensecrf.densecrf as dcrf
    from permutocrf.utils import unary_from_softmax  # was: from pydensecrf.utils import ...

(``permutocrf.compat`` is this module: the names of both in one.)

Same names, signatures, input checks and results as pydensecrf (lucasb-eyer/pydensecrf,
pydensecrf2 on PyPI), computed on ``dense_crf``'s engine: a permutohedral lattice built in
``kernels.py``, on CPU numba's (``lattice_numba.py``, numpy and numba alone), on other torch
devices torch's (``lattice_torch.py``, torch imported only then), and ``meanfield.py``'s
mean-field. On CPU, mean-field runs fused (one
pass over the points per step for all kernels, ``meanfield_numba.py``) when every term is
Potts, or all share one vector or matrix compat, and none normalises before or after; otherwise
each term filters on its own. The ``pydensecrf.utils`` functions are ``utils.py``'s.

Sign convention (pydensecrf's). Everything is an *energy*, lower = more likely: the unary is
``U = -log p`` (nlabels, nvar), and one mean-field step is ``Q = softmax(-U - sum_k m_k)``
over the labels, with the pairwise term ``m_k = mu_k(K_k Q)``: ``K_k`` is kernel k's Gaussian
filter (normalised as asked) and ``mu_k`` its label compatibility: a number w is
``PottsCompatibility``, ``mu(Q) = -w Q`` (w > 0 rewards equal labels at similar points), a
vector v ``mu(Q) = diag(v) Q``, a matrix M ``mu(Q) = (M + M^T) / 2 Q`` (a penalty matrix:
``w (1 - I)`` gives Potts' labels, ``-w I`` also its ``klDivergence``).

Beyond pydensecrf (keywords it never had):
- ``device``: ``DenseCRF2D(w, h, n, device="cuda")`` runs on that torch device (needs
  torch); inputs and results stay numpy arrays.
- ``backend``: ``"auto"`` (numba on CPU, torch elsewhere), ``"numba"`` or ``"torch"``
  (``permutocrf.BACKENDS``), as ``dense_crf``'s.
- ``batch``: ``DenseCRF2D(w, h, n, batch=B)`` is B same-size CRFs at once (one joint lattice
  per kernel that never links two images, like ``permutocrf.dense_crf``):
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
import types
from numbers import Number

import numpy as np

from permutocrf import torch_support
from permutocrf.kernels import (
    bilateral_features,
    gaussian_lattice,
    lattice,
    resolve_backend,
)
from permutocrf.meanfield import NumbaPlan, Term, iterate, numba_plan
from permutocrf.utils import (
    compute_unary,
    create_pairwise_bilateral,
    create_pairwise_gaussian,
    softmax_to_unary,
    unary_from_labels,
    unary_from_softmax,
)

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


def _points_first(a: np.ndarray, device):
    """(..., nlabels, nvar) values as (points, nlabels) rows, C-contiguous: a numpy array for
    the numba engine (``device`` None), else a tensor on ``device``."""
    rows = np.ascontiguousarray(np.swapaxes(a, -1, -2).astype(np.float32, copy=False))
    rows = rows.reshape(-1, a.shape[-2])
    if device is None:
        return rows
    if not rows.flags.writeable:  # torch cannot wrap read-only memory
        rows = rows.copy()
    return torch_support.require("a CRF on a torch device").from_numpy(rows).to(device)


def _host(t) -> np.ndarray:
    """A numpy array, or a tensor's values as one."""
    return t if isinstance(t, np.ndarray) else t.cpu().numpy()


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
        self._engine = resolve_backend(backend, device)
        # The numba engine works on numpy arrays (device None); the torch one on this device.
        self._device = None
        if self._engine == "torch":
            torch = torch_support.require(f"DenseCRF(device={device!r}, backend={backend!r})")
            self._device = torch.device("cpu" if device is None else device)
        self._scores: np.ndarray | None = None  # minus the unary energy, (B, nlabels, nvar)
        self._terms: list[Term] = []
        self._plan_cache = None  # a meanfield.NumbaPlan or meanfield_torch.TorchPlan
        self._logp_cache = None  # _scores as (B nvar, nlabels) rows in plan order

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
        self._add_features(points_first.reshape(-1, feats.shape[-2]), compat, kernel, normalization)

    def _add_features(self, feats: np.ndarray, compat, kernel, normalization) -> None:
        """Add a term on the lattice of features (B nvar, D), images in turn."""
        lattice_of = functools.partial(lattice, feats, self._images, self._engine, self._device)
        self._add(lattice_of, compat, kernel, normalization)

    def _add(self, lattice_of, compat, kernel, normalization) -> None:
        """Check a term's arguments, then add it on the lattice ``lattice_of(symmetric)``,
        normalised symmetrically if asked."""
        _member(KernelType, kernel, "kernel")
        norm = _member(NormalizationType, normalization, "normalization")
        mu = _compatibility(compat, self._nlabel)
        scale = {NORMALIZE_BEFORE: "before", NORMALIZE_AFTER: "after"}.get(norm)
        self._terms.append(Term(lattice_of(norm == NORMALIZE_SYMMETRIC), mu, scale))
        self._plan_cache = self._logp_cache = None

    # -- inference ----------------------------------------------------------------------------

    def _plan(self):
        if self._plan_cache is None:
            num = self._images * self._nvar
            if self._engine == "numba":
                self._plan_cache = numba_plan(self._terms, num)
            else:
                from permutocrf.meanfield_torch import torch_plan

                self._plan_cache = torch_plan(self._terms, num, self._device)
        return self._plan_cache

    def _logp(self, plan):
        """Minus the unary energy (zero without one), (P, M) in the plan's order; cached, so
        never written to."""
        if self._logp_cache is None:
            scores = self._scores
            if scores is None:
                scores = np.zeros((self._images, self._nlabel, self._nvar), np.float32)
            self._logp_cache = plan.gather(_points_first(scores, self._device))
        return self._logp_cache

    def _label_major_scores(self) -> np.ndarray:
        """Minus the unary energy (zeros without one), (M, P) C-contiguous, images in turn."""
        if self._scores is None:
            return np.zeros((self._nlabel, self._images * self._nvar), np.float32)
        return self._scores[0] if self._images == 1 else np.hstack(self._scores)

    def _to_numpy(self, q, plan) -> np.ndarray:
        """(P, M) in the plan's order -> float32 (B,) nlabels x nvar, column-major like Eigen."""
        points = _host(plan.scatter(q)).reshape(self._images, self._nvar, self._nlabel)
        out = points.transpose(0, 2, 1)
        return out if self._batch is not None else out[0]

    def _from_numpy(self, q, plan):
        if not isinstance(q, np.ndarray):
            raise TypeError(
                f"Argument 'Q' has incorrect type (expected the array that startInference "
                f"returned, got {type(q).__name__})"
            )
        need = self._shape(self._nlabel, self._nvar)
        if q.shape != need:
            raise ValueError(f"Q must have shape {need} (nlabels, nvar), got {q.shape}")
        return plan.gather(_points_first(q, self._device))

    def inference(self, n_iterations: int) -> np.ndarray:
        """Run ``n_iterations`` mean-field steps from ``softmax(-U)``; return Q (nlabels, nvar)
        float32 (negative counts run none, as pydensecrf)."""
        plan = self._plan()
        iterations = max(0, int(n_iterations))
        if isinstance(plan, NumbaPlan) and plan.fused is not None:
            q = plan.mean_field(self._label_major_scores(), iterations)
        else:
            q = iterate(plan, self._logp(plan), iterations, per_row=True)
        return self._to_numpy(q, plan)

    def startInference(self):
        """Return ``(Q, tmp1, tmp2)``: Q = softmax(-U) (zeros without a unary, as pydensecrf)
        and two scratch matrices, which stay empty (0, 0) as pydensecrf's Python views of them."""
        plan = self._plan()
        logp = self._logp(plan)  # zeros without a unary; never handed out, so a fresh q
        q = logp * 0 if self._scores is None else plan.softmax(logp, per_row=True)
        return self._to_numpy(q, plan), eigen.MatrixXf(), eigen.MatrixXf()

    def stepInference(self, Q, tmp1, tmp2) -> None:
        """One mean-field step, updating ``Q`` (from ``startInference``) in place."""
        plan = self._plan()
        q = self._from_numpy(Q, plan)
        Q[...] = self._to_numpy(plan.softmax(plan.scores(self._logp(plan), q), per_row=True), plan)

    def klDivergence(self, Q):
        """pydensecrf's ``klDivergence``: ``sum Q log Q + sum U Q + sum Q mu(K Q)``, the mean-field
        free energy up to the log partition function (a float; one per image with ``batch``)."""
        plan = self._plan()
        q = self._from_numpy(Q, plan)
        energy = _host(plan.scatter(plan.pairwise(q) - self._logp(plan)))
        q = _host(plan.scatter(q))
        terms = (q.astype(np.float64) * (np.log(np.maximum(q, 1e-20)) + energy)).sum(1)
        values = terms.reshape(self._images, -1).sum(1)
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
        size = (self._h, self._w, sx, sy, self._images, np.float32, self._device, self._engine)
        self._add(functools.partial(gaussian_lattice, *size), compat, kernel, normalization)

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
        images = img.reshape(self._images, self._h, self._w, 3)
        feats = bilateral_features(images, sx, sy, srgb, np.float32)
        self._add_features(feats, compat, kernel, normalization)
