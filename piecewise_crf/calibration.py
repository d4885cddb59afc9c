"""Calibration: how much the pairwise terms count in mean-field, learned with every net frozen.

Piecewise training fits each potential on its own, so nothing in training says how strongly the
pairwise scores should enter mean-field (`crf.pairwise_scale`, the mode). Calibration fits those
few numbers by gradient descent through the mean-field iterations, the nets fixed:

    w[r, k] = exp(theta[r, k])   one weight per relation r and offset ring k (`crf.ring_weight`)
    Q = the Predictor's mean-field with ring weights w            (scores, higher = more likely)
    loss = class-weighted mean over labelled nodes of -log Q_p(y_p)    (objective "nll")
        or of 1 - Q_p(y_p), the expected error                        (objective "error")

on images of a split, T = the Predictor's `crf.iterations`. Weights live in log space (they
span orders of magnitude and stay positive). Each pairwise mode starts from the best single
weight of a coarse log-spaced scan (`SCAN`, x0.001 to x1); the mode with the lower final loss
is kept. The mean-field is `inference.grid_marginals`, the one prediction runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from piecewise_crf.config import PAIRWISE_MODES, CRFConfig
from piecewise_crf.crf import OBJECTIVES, marginal_loss
from piecewise_crf.errors import ArgumentError
from piecewise_crf.inference import Predictor, grid_marginals
from piecewise_crf.model import GridScores
from piecewise_crf.registry import unknown

log = logging.getLogger(__name__)
SCAN = tuple(10.0**e for e in (-3, -2.5, -2, -1.5, -1, -0.5, 0))  # the single-weight start scan


@dataclass(frozen=True)
class Sample:
    """One calibration image's frozen potentials (pairwise scores kept as float16) and its
    node labels (1, h, w), ignore_index where unlabelled."""

    scores: GridScores
    nodes: Tensor


@dataclass
class ModeFit:
    """The result of calibrating one pairwise mode."""

    mode: str
    start_scale: float  # best single weight of the scan
    start_loss: float
    loss: float  # after gradient descent
    ring_weights: dict[str, list[float]]


@dataclass
class Calibration:
    """What `calibrate` found: the loss of the unary alone and a fit per mode, the best kept."""

    unary_loss: float
    fits: list[ModeFit]

    @property
    def best(self) -> ModeFit:
        return min(self.fits, key=lambda f: f.loss)

    def crf(self, crf: CRFConfig) -> CRFConfig:
        """`crf` with the best fit's mode and ring weights (pairwise_scale 1)."""
        best = self.best
        return dataclasses.replace(
            crf, pairwise_mode=best.mode, pairwise_scale=1.0, ring_weights=best.ring_weights
        )


def frozen_samples(predictor: Predictor, data: Any, indices: Sequence[int]) -> list[Sample]:
    """The potentials of `indices`, computed once through the Predictor without gradients."""
    samples = []
    with torch.no_grad():
        for i in indices:
            image, label = data[i]
            scores = predictor.potentials(image[None].to(predictor.device)).scores
            # float16 halves the cache (CamVid recipe, 15x15 box: 92 instead of 184 MB per image;
            # the loss moved by < 3e-5 on two frames)
            pairwise = [(n, o, z.to(torch.float16)) for n, o, z in scores.pairwise]
            unary = scores.unary.float()
            nodes = predictor.model.node_labels(label[None].to(unary.device), unary.shape[-2:])
            samples.append(Sample(GridScores(unary, pairwise), nodes))
    return samples


def sample_loss(
    sample: Sample,
    crf: CRFConfig,
    ring_weights: dict[str, Tensor] | None,
    *,
    objective: str,
    class_weights: Tensor | None,
    ignore_index: int,
) -> Tensor:
    """`marginal_loss` of one sample's mean-field marginals under `crf` and `ring_weights`."""
    q = grid_marginals(sample.scores, crf, ring_weights)
    return marginal_loss(
        q, sample.nodes, objective=objective, class_weights=class_weights, ignore_index=ignore_index
    )


def fit_mode(
    samples: Sequence[Sample],
    crf: CRFConfig,
    *,
    rings: int,
    steps: int,
    lr: float,
    **loss: Any,
) -> ModeFit:
    """Scan one shared weight, then descend on a log-weight per relation and ring, for the
    mode and iterations of `crf`; `loss` is `sample_loss`'s keywords."""
    names = sorted({name for name, _ in samples[0].scores.offsets()})

    def total(weights: Callable[[], dict[str, Tensor]], backward: bool = False) -> float:
        """Mean loss over the samples; with `backward`, its gradient accumulated image by
        image, so one image's autograd graph is held at a time (`weights()` is built anew for
        each)."""
        value = 0.0
        for s in samples:
            with torch.set_grad_enabled(backward):
                part = sample_loss(s, crf, weights(), **loss) / len(samples)
            if backward:
                part.backward()
            value += part.item()
        return value

    scan = {w: total(lambda w=w: {n: torch.tensor([w]) for n in names}) for w in SCAN}
    start = min(scan, key=scan.get)
    shown = ", ".join(f"x{w:.3g} {v:.4f}" for w, v in scan.items())
    log.info(f"  {crf.pairwise_mode}: scan {shown}")
    theta = {n: torch.full((rings,), math.log(start), requires_grad=True) for n in names}
    optimiser = torch.optim.Adam(theta.values(), lr=lr)
    for step in range(steps):
        optimiser.zero_grad()
        value = total(lambda: {n: t.exp() for n, t in theta.items()}, backward=True)
        optimiser.step()
        if step % 10 == 0 or step == steps - 1:
            log.info(f"  {crf.pairwise_mode}: step {step + 1}/{steps} loss {value:.4f}")
    final = total(lambda: {n: t.detach().exp() for n, t in theta.items()})
    learned = {n: [round(float(v), 6) for v in t.detach().exp()] for n, t in theta.items()}
    if final > scan[start]:  # descent made it worse (a too-large lr): keep the scan's weight
        final, learned = scan[start], {n: [start] * rings for n in names}
    return ModeFit(crf.pairwise_mode, start, scan[start], final, learned)


@dataclass(frozen=True)
class Settings:
    """How to calibrate: the modes to fit (the lower final loss is kept), log-weights per
    relation (one per offset ring 1..rings, the last for farther ones), gradient steps, Adam's
    learning rate and the objective ("nll" or "error"). Checked when made, so a mistake fails
    before the long work."""

    modes: tuple[str, ...] = PAIRWISE_MODES
    rings: int = 1
    steps: int = 20
    lr: float = 0.1
    objective: str = "nll"

    def __post_init__(self) -> None:
        for mode in self.modes:
            if mode not in PAIRWISE_MODES:
                message = unknown("pairwise mode", mode, PAIRWISE_MODES)
                raise ArgumentError(lambda name, m=message: f"{name('modes')}: {m}")
        if not self.modes:
            raise ArgumentError(lambda name: f"{name('modes')}: name at least one pairwise mode")
        if self.objective not in OBJECTIVES:
            message = unknown("objective", self.objective, OBJECTIVES)
            raise ArgumentError(lambda name: f"{name('objective')}: {message}")
        if self.rings < 1:
            raise ArgumentError(lambda name: f"{name('rings')} must be >= 1, got {self.rings}")
        if self.steps < 0:
            raise ArgumentError(lambda name: f"{name('steps')} must be >= 0, got {self.steps}")


def calibrate(
    predictor: Predictor,
    samples: Sequence[Sample],
    settings: Settings = Settings(),  # noqa: B008 (frozen: one shared default is safe)
    *,
    class_weights: Tensor | None = None,
) -> Calibration:
    """Fit the pairwise weights of each of the settings' modes on `samples` (`frozen_samples`),
    with the Predictor's mean-field iterations; the loss of the unary alone for comparison."""
    if class_weights is not None:
        class_weights = class_weights.to(predictor.device)
    loss = {
        "objective": settings.objective,
        "class_weights": class_weights,
        "ignore_index": predictor.model.ignore_index,
    }
    unary = dataclasses.replace(predictor.crf, iterations=0)
    with torch.no_grad():
        unary_loss = sum(float(sample_loss(s, unary, None, **loss)) for s in samples)
    fits = []
    for mode in settings.modes:
        crf = dataclasses.replace(predictor.crf, pairwise_mode=mode, pairwise_scale=1.0)
        fits.append(fit_mode(samples, crf, rings=settings.rings, steps=settings.steps,
                             lr=settings.lr, **loss))  # fmt: skip
    return Calibration(unary_loss / len(samples), fits)
