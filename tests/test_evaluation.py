"""Scoring a split through a Predictor: every stage and a sweep in one pass, batches, subsets."""

import numpy as np
import pytest
from dataset_files import make_folder

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.config import CRFConfig, DenseCRFConfig, load_config
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.errors import ArgumentError
from piecewise_crf.evaluation import (
    describe,
    format_table,
    open_dataset,
    open_split,
    score,
    subset_indices,
    summarise,
    sweep_settings,
)
from piecewise_crf.inference import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_checkpoint(checkpoint).build_model()


def test_one_pass_scores_every_stage_and_the_sweep(model):
    data = SyntheticContext(3, size=192, seed=1)
    sweep = sweep_settings(CRFConfig(), scales=[0.3, 3], modes=["interaction"])
    assert list(sweep) == ["crf[interaction,0.3]", "crf[interaction,3]"]
    assert sweep["crf[interaction,3]"] == CRFConfig(pairwise_mode="interaction", pairwise_scale=3)
    predictor = Predictor(model, dense=DenseCRFConfig(iterations=2), sweep=sweep)
    done = []
    matrices = score(predictor, data, batch_size=2, progress=done.append)  # batches of 2 and 1
    assert done == [2, 1]
    assert list(matrices) == ["unary", "crf", *sweep, "crf+dense"]
    for cm in matrices.values():
        assert cm.matrix.sum() == 3 * 192 * 192  # full resolution, nothing ignored
    one_by_one = score(predictor, data, batch_size=1)
    for name, cm in matrices.items():  # batching changes no prediction (beyond rounding)
        assert np.abs(cm.matrix - one_by_one[name].matrix).sum() <= 1e-4 * cm.matrix.sum()
    results = summarise(matrices, data.classes)
    table = format_table(results, data.classes)
    assert table.splitlines()[0].split() == ["class", *matrices]
    assert "object_a" in table and "mean IoU" in table


def test_subsets_are_spread_over_the_split():
    assert subset_indices(32, 3) == [0, 16, 31]
    assert subset_indices(5, None) == subset_indices(5, 9) == [0, 1, 2, 3, 4]
    with pytest.raises(ArgumentError, match="^limit must be a positive number of images, got 0"):
        subset_indices(5, 0)
    with pytest.raises(ValueError, match="no images"):
        subset_indices(0, 3)


def test_a_split_of_another_class_set_is_refused(checkpoint, tmp_path):
    from dataset_files import make_camvid

    ckpt = load_checkpoint(checkpoint)
    root = make_camvid(tmp_path / "camvid")
    with pytest.raises(ValueError, match="predicts 5 classes .* but dataset 'camvid' has 11"):
        open_split(ckpt.config, ckpt.classes, "val", name="camvid", root=root)
    assert len(open_split(ckpt.config, ckpt.classes, "val")) == 32  # its own: synthetic val


def test_class_names_and_palette_come_from_the_config(tmp_path):
    root = make_folder(tmp_path)
    config = load_config(None, [
        "data.dataset=folder", "model.num_classes=3", "data.class_names=[road, car, sky]",
        "data.palette=[[128, 64, 128], [0, 0, 142], [70, 130, 180]]",
    ])  # fmt: skip
    ds = open_dataset(config, "all", root=root)
    assert ds.classes == ("road", "car", "sky") and ds.palette[1].tolist() == [0, 0, 142]
    with pytest.raises(ValueError, match="data.palette must be empty or one entry per class"):
        load_config(
            None, ["data.dataset=folder", "model.num_classes=3", "data.palette=[[1, 2, 3]]"]
        )
    with pytest.raises(ValueError, match=r"data.palette must be \[r, g, b\] triples"):
        load_config(None, ["data.dataset=folder", "data.palette=[[1, 2, 300]]"])


def test_describe_names_the_setting_and_its_stop():
    crf = CRFConfig(iterations=10, pairwise_mode="interaction", pairwise_scale=0.003, tolerance=0)
    assert describe(crf) == "interaction x0.003, 10 iterations"
    crf.tolerance, crf.ring_weights = 0.001, {"surrounding": [1.5, 0.25]}
    want = "interaction x0.003, surrounding rings x1.5/0.25, 10 iterations at most, stop at 0.001"
    assert describe(crf) == want
