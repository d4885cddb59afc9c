import json

import numpy as np
import pytest
import torch
from tiny_run import one_thread  # noqa: F401  (autouse fixture)

from piecewise_crf.checkpoint import check_classes, load_checkpoint, model_from_checkpoint
from piecewise_crf.config import CRFConfig, DenseCRFConfig
from piecewise_crf.data import CamVid
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.evaluate import evaluate_checkpoint, score, sweep_settings
from piecewise_crf.inference import Predictor


@pytest.fixture(scope="module")
def model(checkpoint):
    return model_from_checkpoint(load_checkpoint(checkpoint))[0]


def test_one_pass_scores_every_stage_and_the_sweep(model):
    data = SyntheticContext(3, size=192, seed=1)
    sweep = sweep_settings(CRFConfig(), scales=[0.3, 3], modes=["interaction"])
    assert list(sweep) == ["crf[interaction,0.3]", "crf[interaction,3]"]
    assert sweep["crf[interaction,3]"] == CRFConfig(pairwise_mode="interaction", pairwise_scale=3)
    predictor = Predictor(model, dense=DenseCRFConfig(iterations=2), sweep=sweep)
    matrices = score(predictor, data, batch_size=2)  # a batch of 2, then one of 1
    assert list(matrices) == ["unary", "crf", *sweep, "crf+dense"]
    for cm in matrices.values():
        assert cm.matrix.sum() == 3 * 192 * 192  # full resolution, nothing ignored
    one_by_one = score(predictor, data, batch_size=1)
    for name, cm in matrices.items():  # batching changes no prediction (beyond rounding)
        assert np.abs(cm.matrix - one_by_one[name].matrix).sum() <= 1e-4 * cm.matrix.sum()


def test_evaluate_checkpoint_writes_json_and_confusion_png(checkpoint, tmp_path, capsys):
    results = evaluate_checkpoint(
        checkpoint, dataset="synthetic", split="val", json_path=tmp_path / "m.json", progress=False
    )
    saved = json.loads((tmp_path / "m.json").read_text())
    assert list(saved) == ["unary", "crf", "crf+dense"] == list(results)
    for stage in saved.values():
        assert {"pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"} <= set(
            stage
        )
        assert len(stage["per_class_iou"]) == 5 and stage["classes"][0] == "background"
    assert (tmp_path / "m_confusion.png").stat().st_size > 1000
    table = capsys.readouterr().out
    assert "object_a" in table and "mean IoU" in table


def test_limit_scores_images_spread_over_the_split(checkpoint, model, capsys):
    results = evaluate_checkpoint(
        checkpoint, dataset="synthetic", split="val", limit=3, dense=False, progress=False
    )
    assert "3 of 32 images" in capsys.readouterr().out
    val = SyntheticContext.split("val")
    config = model_from_checkpoint(load_checkpoint(checkpoint))[1]
    expected = score(Predictor(model, crf=config.crf), val, indices=[0, 16, 31])  # spread
    assert results["crf"]["mean_iou"] == expected["crf"].compute()["mean_iou"]


def test_checkpoint_for_another_class_set_is_refused(checkpoint, tmp_path):
    from fixtures_data import make_camvid

    camvid = CamVid(make_camvid(tmp_path / "camvid"), "val")
    with pytest.raises(ValueError, match="predicts 5 classes .* has 11"):
        check_classes(load_checkpoint(checkpoint)["classes"], camvid.classes, "dataset 'camvid'")
    with pytest.raises(ValueError, match="predicts 5 classes"):
        evaluate_checkpoint(
            checkpoint, dataset="camvid", root=tmp_path / "camvid", split="val", progress=False
        )


def test_a_state_dict_of_another_architecture_says_what_differs(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    ckpt["config"]["model"]["hidden"] = 32
    with pytest.raises(ValueError, match=r"unary_net.*is \(.*16.*\) in .* but \(.*32"):
        model_from_checkpoint(ckpt)
    ckpt = load_checkpoint(checkpoint)
    ckpt["config"]["model"]["relations"] = ["surrounding"]
    with pytest.raises(ValueError, match="weights in the checkpoint the model lacks"):
        model_from_checkpoint(ckpt)


def test_unreadable_or_foreign_checkpoints_are_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a piecewise-crf checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"model": {}, "config": {}, "f": np.float64}, tmp_path / "unsafe.pt")
    with pytest.raises(ValueError, match="refusing to read checkpoint"):  # weights_only refuses it
        load_checkpoint(tmp_path / "unsafe.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_prediction_box_comes_from_the_call_or_the_checkpoint(checkpoint, capsys):
    evaluate_checkpoint(
        checkpoint, dataset="synthetic", split="val", limit=2, dense=False, box_fraction=0.2,
        progress=False,
    )  # fmt: skip
    assert "box 0.2" in capsys.readouterr().out
    assert Predictor.from_checkpoint(checkpoint).crf.box_fraction is None
    assert Predictor.from_checkpoint(checkpoint, box_fraction=0.2).crf.box_fraction == 0.2
