"""`piecewise-crf tune-dense-crf`: the ranking, the best setting as a --set line and YAML, and the
JSON of every grid point, on the CRF the flags choose."""

import dataclasses
import json

import numpy as np
import pytest
from cli_checks import fails

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.commands.cli import main
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.evaluation import score
from piecewise_crf.inference import Predictor
from piecewise_crf.tuning import BASELINE

pytestmark = pytest.mark.usefixtures("one_thread")
GRID = ["--bi-weights", "0", "4", "--bi-xy-stds", "20", "67", "--bi-rgb-stds", "3", "13"]
GRID += ["--pos-weights", "3", "--pos-xy-stds", "1", "--iterations", "2"]


def tune(checkpoint, *flags: str) -> list[str]:
    return ["tune-dense-crf", "--checkpoint", str(checkpoint), "--split", "val", "--quiet", *flags]


def test_writes_every_result_and_prints_the_set_line(checkpoint, tmp_path, capsys):
    out = tmp_path / "tune" / "dense.json"
    assert main(tune(checkpoint, "--limit", "2", *GRID, "--top", "3", "--json", str(out))) == 0
    saved = json.loads(out.read_text())
    assert saved["images"] == 2 and saved["indices"] == [0, 31]
    assert len(saved["results"]) == 8 and saved["best"] == saved["results"][0]
    assert saved["best"]["mean_iou"] == max(r["mean_iou"] for r in saved["results"])
    printed = capsys.readouterr().out
    assert BASELINE in printed and "(5 more in the JSON)" in printed
    best = saved["best"]["params"]
    line = next(s for s in printed.splitlines() if s.strip().startswith("--set "))
    assert line.split()[1:] == [  # the order of the config's dense_crf section
        "dense_crf.iterations=2",
        "dense_crf.pos_xy_std=1",
        "dense_crf.pos_weight=3",
        f"dense_crf.bi_xy_std={best['bi_xy_std']:g}",
        f"dense_crf.bi_rgb_std={best['bi_rgb_std']:g}",
        f"dense_crf.bi_weight={best['bi_weight']:g}",
    ]
    assert "dense_crf:\n  iterations: 2\n" in printed


def test_the_search_uses_the_given_pairwise_mode_and_scale(checkpoint, tmp_path):
    out = tmp_path / "dense.json"
    flags = ["--limit", "2", "--bi-weights", "4", "--bi-xy-stds", "67", "--bi-rgb-stds", "3"]
    flags += ["--pairwise-mode", "interaction", "--pairwise-scale", "0.3", "--json", str(out)]
    assert main(tune(checkpoint, *flags)) == 0
    result = json.loads(out.read_text())
    ckpt = load_checkpoint(checkpoint)
    model, val = ckpt.build_model(), SyntheticContext.split("val")
    crf = dataclasses.replace(ckpt.config.crf, pairwise_mode="interaction", pairwise_scale=0.3)
    expected = score(Predictor(model, crf=crf), val, indices=result["indices"], batch_size=1)
    assert result["baseline"]["mean_iou"] == expected["crf"].compute()["mean_iou"]
    default = score(Predictor(model, crf=ckpt.config.crf), val, indices=result["indices"])
    assert not np.array_equal(default["crf"].matrix, expected["crf"].matrix)  # the flags matter


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--bi-xy-stds", "-5"], "--bi-xy-stds: values must be finite and positive, got -5.0"),
        (["--bi-rgb-stds", "0"], "--bi-rgb-stds: values must be finite and positive"),
        (["--bi-weights", "-1"], "--bi-weights: values must be finite and non-negative"),
        (["--pos-xy-stds", "nan"], "argument --pos-xy-stds: expected a finite number, got 'nan'"),
        (["--iterations", "1.5"], "--iterations: iterations must be non-negative integers"),
        (["--top", "0"], "--top must be at least 1, got 0"),
    ],
)
def test_bad_grids_fail_before_the_checkpoint_is_read(tmp_path, capsys, flags, match):
    fails(tune(tmp_path / "never_read.pt", *flags), capsys, match)
