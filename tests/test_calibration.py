"""Calibration: the learned weights against a brute-force scan of the same loss."""

import math
import re

import pytest
import torch

from piecewise_crf.calibration import Sample, Settings, calibrate, fit_mode, sample_loss
from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.config import CRFConfig
from piecewise_crf.errors import ArgumentError
from piecewise_crf.inference import Predictor
from piecewise_crf.model import GridScores
from piecewise_crf.relations import Surrounding, offset_slices

pytestmark = pytest.mark.usefixtures("one_thread")
RAW = CRFConfig(iterations=3, pairwise_mode="raw", pairwise_scale=1.0)
LOSS = {"class_weights": None, "ignore_index": 255}


def planted(seed: int, k: int = 3, h: int = 6, w: int = 7) -> Sample:
    """Noisy unary scores and Potts-like pairwise scores on a grid of two label regions."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.zeros(1, h, w, dtype=torch.long)
    truth[:, :, w // 2 :] = 1
    unary = 2.0 * torch.randn(1, k, h, w, generator=g)
    unary.scatter_add_(1, truth[:, None], torch.full((1, 1, h, w), 1.0))
    pairwise = []
    for dy, dx in Surrounding(fraction=0.5).offsets(h, w):
        (pr, pc), _ = offset_slices(h, w, dy, dx)
        region = (pr.stop - pr.start, pc.stop - pc.start)
        z = torch.eye(k).view(1, k, k, 1, 1).expand(1, k, k, *region).clone()
        pairwise.append(("surrounding", (dy, dx), z))
    return Sample(GridScores(unary, pairwise), truth)


@pytest.mark.parametrize("objective", ["nll", "error"])
def test_fit_finds_the_brute_force_optimum_of_one_weight(objective):
    samples = [planted(s) for s in range(4)]

    def loss(weight: float) -> float:
        crf = CRFConfig(iterations=3, pairwise_mode="raw", pairwise_scale=weight)
        values = [float(sample_loss(s, crf, None, objective=objective, **LOSS)) for s in samples]
        return sum(values) / len(samples)

    grid = [math.exp(e / 50) for e in range(-350, 201)]  # 0.0009 .. 55, 2 % apart
    brute = min(grid, key=loss)
    fit = fit_mode(samples, RAW, rings=1, steps=150, lr=0.1, objective=objective, **LOSS)
    learned = fit.ring_weights["surrounding"][0]
    assert 0.01 < brute < 50.0  # an interior optimum (nll 0.67, error 4.2), not an end of the grid
    assert learned == pytest.approx(brute, rel=0.05)
    assert fit.loss <= fit.start_loss + 1e-9
    assert fit.loss == pytest.approx(loss(brute), abs=1e-4)


def test_rings_get_their_own_weights_and_the_loss_only_falls():
    samples = [planted(s) for s in range(3)]
    one = fit_mode(samples, RAW, rings=1, steps=60, lr=0.1, objective="nll", **LOSS)
    three = fit_mode(samples, RAW, rings=3, steps=60, lr=0.1, objective="nll", **LOSS)
    assert len(three.ring_weights["surrounding"]) == 3
    assert three.loss <= one.loss + 1e-4


def test_calibrate_keeps_the_mode_of_the_lower_loss(checkpoint):
    predictor = Predictor.from_checkpoint(load_checkpoint(checkpoint), device="cpu")
    samples = [planted(s, k=5) for s in range(2)]
    result = calibrate(predictor, samples, Settings(steps=3))
    assert [f.mode for f in result.fits] == ["raw", "interaction"]
    assert result.best.loss == min(f.loss for f in result.fits)
    crf = result.crf(predictor.crf)
    assert (crf.pairwise_mode, crf.pairwise_scale) == (result.best.mode, 1.0)
    assert crf.ring_weights == result.best.ring_weights
    unary = sum(float(sample_loss(s, CRFConfig(iterations=0), None, objective="nll", **LOSS))
                for s in samples) / 2  # fmt: skip
    assert result.unary_loss == pytest.approx(unary)


def test_settings_are_checked_when_made():
    Settings(("raw",), rings=2, steps=0, objective="error")
    for kwargs, message in (
        ({"modes": ("rw",)}, "modes: unknown pairwise mode 'rw'; did you mean 'raw'?"),
        ({"modes": ()}, "modes: name at least one pairwise mode"),
        ({"objective": "mse"}, "objective: unknown objective 'mse'; valid: nll, error"),
        ({"rings": 0}, "rings must be >= 1, got 0"),
        ({"steps": -1}, "steps must be >= 0, got -1"),
    ):
        with pytest.raises(ArgumentError, match=f"^{re.escape(message)}"):
            Settings(**kwargs)
