"""tune-dense-crf: the grid search over the dense-CRF parameters."""

import dataclasses
import json

import numpy as np
import pytest
from tiny_run import one_thread  # noqa: F401  (autouse fixture)

from piecewise_crf import cli
from piecewise_crf.checkpoint import load_checkpoint, model_from_checkpoint
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.evaluate import score
from piecewise_crf.inference import Predictor
from piecewise_crf.tune import (
    BASELINE,
    DEFAULT_GRID,
    dense_grid,
    params,
    rank_results,
    subset_indices,
    tune_dense_crf,
    tune_dense_crf_checkpoint,
)

GRID = dict(
    bi_weights=[0, 4],
    bi_xy_stds=[20, 67],
    bi_rgb_stds=[3, 13],
    pos_weights=[3],
    pos_xy_stds=[1],
    iterations=[2],
)


def test_grid_point_equals_the_crf_dense_stage_of_evaluate(checkpoint):
    model, config = model_from_checkpoint(load_checkpoint(checkpoint))
    data = SyntheticContext(3, size=192, seed=1)
    grid = dense_grid(**GRID)
    assert len(grid) == 8
    baseline, matrices = tune_dense_crf(
        Predictor(model, crf=config.crf), data, grid, indices=[0, 2]
    )
    base, rows = rank_results(baseline, matrices, grid, data.classes)
    assert rows[0]["mean_iou"] == max(r["mean_iou"] for r in rows)
    assert [r["mean_iou"] for r in rows] == sorted((r["mean_iou"] for r in rows), reverse=True)

    # Independently: evaluate with the same parameters, on the same images.
    for i in (0, 5):
        setting = grid[i]
        predictor = Predictor(model, crf=config.crf, dense=setting)
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


def test_checkpoint_search_writes_json_and_cli_prints_the_set_line(checkpoint, tmp_path, capsys):
    out = tmp_path / "tune" / "dense.json"
    result = tune_dense_crf_checkpoint(
        checkpoint,
        dataset="synthetic",
        split="val",
        limit=2,
        grid=dense_grid(**GRID),
        json_path=out,
        top=3,
        progress=False,
    )
    saved = json.loads(out.read_text())
    assert saved["images"] == 2 and saved["indices"] == [0, 31]
    assert len(saved["results"]) == 8 and saved["best"] == saved["results"][0]
    assert saved["best"]["mean_iou"] == max(r["mean_iou"] for r in saved["results"])
    assert saved["baseline"]["mean_iou"] == result["baseline"]["mean_iou"]
    table = capsys.readouterr().out
    assert BASELINE in table and "(5 more in the JSON)" in table

    argv = ["tune-dense-crf", "--checkpoint", str(checkpoint), "--dataset", "synthetic"]
    argv += ["--split", "val", "--limit", "1", "--bi-weights", "4", "--bi-xy-stds", "67"]
    argv += ["--bi-rgb-stds", "3", "5", "--pos-xy-stds", "1", "--iterations", "2", "--quiet"]
    assert cli.main([*argv, "--json", str(tmp_path / "cli.json")]) == 0
    printed = capsys.readouterr().out
    best = json.loads((tmp_path / "cli.json").read_text())["best"]["params"]
    line = next(s for s in printed.splitlines() if s.strip().startswith("--set "))
    assert line.split()[1:] == [  # the order of the config's dense_crf section
        "dense_crf.iterations=2",
        "dense_crf.pos_xy_std=1",
        "dense_crf.pos_weight=3",
        "dense_crf.bi_xy_std=67",
        f"dense_crf.bi_rgb_std={best['bi_rgb_std']:g}",
        "dense_crf.bi_weight=4",
    ]
    assert "dense_crf:\n  iterations: 2\n" in printed and BASELINE in printed


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--bi-xy-stds", "-5"], "argument --bi-xy-stds: expected a number > 0, got '-5'"),
        (["--bi-rgb-stds", "0"], "argument --bi-rgb-stds: expected a number > 0"),
        (["--bi-weights", "-1"], "argument --bi-weights: expected a number >= 0"),
        (["--pos-xy-stds", "nan"], "argument --pos-xy-stds: expected a number > 0, got 'nan'"),
        (["--iterations", "-1"], "argument --iterations: expected a whole number >= 0"),
        (["--limit", "0"], "argument --limit: expected a whole number >= 1"),
    ],
)
def test_bad_grids_are_one_line_errors(tmp_path, capsys, flags, match):
    argv = ["tune-dense-crf", "--checkpoint", str(tmp_path / "never_read.pt"), "--quiet", *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err


def test_grid_validation_and_subsets():
    with pytest.raises(ValueError, match="--bi-weights: the grid needs at least one value"):
        dense_grid(bi_weights=[])
    assert len(dense_grid()) == 3 * 3 * 4 * 1 * 2 * 1
    assert len(dense_grid(bi_weights=[4, 4.0, 5])) == 2 * 3 * 4 * 2
    assert cli.DEFAULT_DENSE_GRID == DEFAULT_GRID
    assert subset_indices(5, None) == subset_indices(5, 9) == [0, 1, 2, 3, 4]
    assert subset_indices(10, 3) == [0, 4, 9]
    with pytest.raises(ValueError, match="no images"):
        subset_indices(0, 3)


def test_checkpoint_search_uses_the_given_pairwise_mode_and_scale(checkpoint):
    model, config = model_from_checkpoint(load_checkpoint(checkpoint))
    small = dense_grid(**{**GRID, "bi_weights": [4], "bi_xy_stds": [67], "bi_rgb_stds": [3]})
    result = tune_dense_crf_checkpoint(
        checkpoint, dataset="synthetic", split="val", limit=2, grid=small,
        pairwise_mode="interaction", pairwise_scale=0.3, progress=False,
    )  # fmt: skip
    val = SyntheticContext.split("val")
    crf = dataclasses.replace(config.crf, pairwise_mode="interaction", pairwise_scale=0.3)
    expected = score(Predictor(model, crf=crf), val, indices=result["indices"], batch_size=1)
    assert result["baseline"]["mean_iou"] == expected["crf"].compute()["mean_iou"]
    default = score(Predictor(model, crf=config.crf), val, indices=result["indices"])
    assert not np.array_equal(default["crf"].matrix, expected["crf"].matrix)  # the flags matter
