"""Tuning the dense CRF: the grid search, against the crf+dense stage of the Predictor."""

import numpy as np
import pytest

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.config import DENSE_GRID
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.errors import ArgumentError
from piecewise_crf.evaluation import score
from piecewise_crf.inference import Predictor
from piecewise_crf.tuning import dense_grid, params, rank_results, tune_dense_crf

pytestmark = pytest.mark.usefixtures("one_thread")
GRID = dict(
    bi_weights=[0, 4],
    bi_xy_stds=[20, 67],
    bi_rgb_stds=[3, 13],
    pos_weights=[3],
    pos_xy_stds=[1],
    iterations=[2],
)


def test_grid_point_equals_the_crf_dense_stage_of_the_predictor(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    model, crf = ckpt.build_model(), ckpt.config.crf
    data = SyntheticContext(3, size=192, seed=1)
    grid = dense_grid(**GRID)
    assert len(grid) == 8
    done = []
    baseline, matrices = tune_dense_crf(
        Predictor(model, crf=crf), data, grid, indices=[0, 2], progress=done.append
    )
    assert done == [1, 1]
    base, rows = rank_results(baseline, matrices, grid, data.classes)
    assert rows[0]["mean_iou"] == max(r["mean_iou"] for r in rows)
    assert [r["mean_iou"] for r in rows] == sorted((r["mean_iou"] for r in rows), reverse=True)

    # Independently: the Predictor with the same parameters, on the same images.
    for i in (0, 5):
        setting = grid[i]
        predictor = Predictor(model, crf=crf, dense=setting)
        expected = score(predictor, data, indices=[0, 2], batch_size=1)
        np.testing.assert_array_equal(matrices[i].matrix, expected["crf+dense"].matrix)
        np.testing.assert_array_equal(baseline.matrix, expected["crf"].matrix)
        row = next(r for r in rows if r["params"] == params(setting))
        assert row["mean_iou"] == expected["crf+dense"].compute()["mean_iou"]
    assert base["mean_iou"] == expected["crf"].compute()["mean_iou"]
    # bi_weight 0 with a fixed Gaussian kernel: the bilateral stds cannot matter.
    zero = [m.matrix for s, m in zip(grid, matrices, strict=True) if s.bi_weight == 0]
    for m in zero[1:]:
        np.testing.assert_array_equal(m, zero[0])


def test_grid_validation_names_the_parameter():
    assert len(dense_grid()) == np.prod([len(v) for v in DENSE_GRID.values()])
    assert len(dense_grid(bi_weights=[4, 4.0, 5])) == 2 * 3 * 4 * 2
    for kwargs, message in (
        ({"bi_weights": []}, "bi_weights: the grid needs at least one value"),
        ({"bi_xy_stds": [-5]}, "bi_xy_stds: values must be finite and positive, got -5.0"),
        ({"bi_rgb_stds": [0]}, "bi_rgb_stds: values must be finite and positive, got 0.0"),
        ({"bi_weights": [-1]}, "bi_weights: values must be finite and non-negative, got -1.0"),
        ({"iterations": [1.5]}, "iterations: iterations must be non-negative integers, got 1.5"),
    ):
        with pytest.raises(ArgumentError, match=f"^{message}$"):
            dense_grid(**kwargs)
