"""Prediction settings reach every command: `--set crf.* dense_crf.*` on evaluate, predict and
export, and `tune-dense-crf --write` into the checkpoint, which they then use."""

import json
import shutil

import numpy as np
import pytest
import torch
from cli_checks import fails
from PIL import Image

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.commands.cli import main
from piecewise_crf.config import config_to_dict
from piecewise_crf.data.synthetic import generate
from piecewise_crf.tuning import params

pytestmark = pytest.mark.usefixtures("one_thread")
NO_KERNELS = ["dense_crf.pos_weight=0", "dense_crf.bi_weight=0"]  # mean-field on the unary alone


def evaluate(checkpoint, tmp_path, name: str, *flags: str) -> dict:
    out = tmp_path / f"{name}.json"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--split", "val", "--limit", "2"]
    assert main([*argv, "--quiet", "--json", str(out), *flags]) == 0
    return json.loads(out.read_text())


def test_evaluate_set_equals_the_flags_and_reaches_both_crfs(checkpoint, tmp_path):
    by_flag = evaluate(checkpoint, tmp_path, "flag", "--iterations", "1")
    assert evaluate(checkpoint, tmp_path, "set", "--set", "crf.iterations=1") == by_flag
    own = evaluate(checkpoint, tmp_path, "own")
    assert own["crf"] != own["unary"]  # so that the next line says something
    none = evaluate(checkpoint, tmp_path, "none", "--set", "crf.iterations=0")
    assert none["crf"] == none["unary"]  # no mean-field iteration: the unary's marginals
    undense = evaluate(checkpoint, tmp_path, "undense", "--set", "dense_crf.enabled=false")
    assert set(undense) == {"unary", "crf"} and undense["crf"] == own["crf"]


def test_predict_set_reaches_the_dense_crf(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rgb = (generate(0, seed=3)[0] * 255).round().astype(np.uint8)
    Image.fromarray(rgb[:96, :128]).save(photos / "a.png")
    argv = ["predict", "--checkpoint", str(checkpoint), str(photos), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "crf"), "--stage", "crf"]) == 0
    assert main([*argv, "--out", str(tmp_path / "dense"), "--set", *NO_KERNELS]) == 0
    crf, dense = (np.asarray(Image.open(tmp_path / d / "a.png")) for d in ("crf", "dense"))
    assert np.array_equal(crf, dense)


def test_export_set_is_the_graphs_setting(checkpoint, tmp_path):
    pytest.importorskip("onnx")
    import onnx

    out = tmp_path / "m.onnx"
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--size", "64", "64"]
    assert main([*argv, "--set", "crf.iterations=1", "dense_crf.bi_xy_std=20"]) == 0
    meta = {p.key: json.loads(p.value) for p in onnx.load(out).metadata_props}
    assert meta["crf"]["iterations"] == 1 and meta["dense_crf"]["bi_xy_std"] == 20


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("model.hidden=8", "only crf.* and dense_crf.* settings change after training"),
        ("crf.iteratons=2", "unknown config key 'crf.iteratons'; did you mean 'iterations'?"),
        ("dense_crf.bi_xy_std=-1", "dense_crf.bi_xy_std must be a finite number > 0"),
        ("crf.iterations", "must look like section.key=value"),
    ],
)
def test_bad_settings_are_one_line(checkpoint, tmp_path, capsys, setting, match):
    Image.new("RGB", (64, 48)).save(tmp_path / "photo.png")
    for argv in (
        ["evaluate", "--checkpoint", str(checkpoint), "--split", "val"],
        ["predict", "--checkpoint", str(checkpoint), str(tmp_path), "--out", str(tmp_path / "o")],
        ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"),
         "--size", "64", "64"],
    ):  # fmt: skip
        fails([*argv, "--set", setting], capsys, match, checkpoint.parent)
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.onnx").exists()


GRID = ["--bi-weights", "0", "4", "--bi-xy-stds", "20", "67", "--bi-rgb-stds", "3",
        "--pos-weights", "3", "--pos-xy-stds", "1", "--iterations", "2"]  # fmt: skip


def test_tune_write_stores_the_best_setting_which_evaluate_then_uses(checkpoint, tmp_path):
    model = tmp_path / "model.pt"
    shutil.copy(checkpoint, model)
    tuning = tmp_path / "tune.json"
    argv = ["tune-dense-crf", "--checkpoint", str(model), "--split", "val", "--limit", "2"]
    assert main([*argv, "--quiet", *GRID, "--json", str(tuning), "--write"]) == 0
    result = json.loads(tuning.read_text())
    before, after = load_checkpoint(checkpoint), load_checkpoint(model)
    assert params(after.config.dense_crf) == result["best"]["params"]
    helps = result["best"]["mean_iou"] > result["baseline"]["mean_iou"]
    assert after.config.dense_crf.enabled == helps
    assert after.dense_tuning["previous"]["dense_crf"] == config_to_dict(before.config)["dense_crf"]
    assert after.dense_tuning["indices"] == result["indices"]
    assert all(torch.equal(after.model[k], v) for k, v in before.model.items())
    # evaluate now scores the stored setting, as --set of the same values does on the original
    chosen = [f"dense_crf.{k}={v}" for k, v in result["best"]["params"].items()]
    if helps:
        stored = evaluate(model, tmp_path, "stored")
        assert stored == evaluate(checkpoint, tmp_path, "given", "--set", *chosen)
    # a second --write keeps the settings of before the first
    assert main([*argv, "--quiet", *GRID[:2], *GRID[3:], "--write"]) == 0
    assert load_checkpoint(model).dense_tuning["previous"] == after.dense_tuning["previous"]


def test_tune_write_into_a_read_only_folder_is_refused_first(checkpoint, read_only_folder, capsys):
    model = read_only_folder / "model.pt"
    shutil.copy(checkpoint, model)
    argv = ["tune-dense-crf", "--checkpoint", str(model), "--split", "val", "--write"]
    fails([*argv, "--quiet", *GRID], capsys, "cannot write to the output folder", read_only_folder)
