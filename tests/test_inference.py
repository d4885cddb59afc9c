"""The Predictor: a checkpoint's own settings, every stage, batches, lists and test-time variants."""

import dataclasses

import numpy as np
import pytest
import torch
from tiny_run import one_thread  # noqa: F401  (autouse fixture)

from piecewise_crf.checkpoint import load_checkpoint, model_from_checkpoint
from piecewise_crf.config import CRFConfig, DenseCRFConfig
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.densecrf import dense_crf
from piecewise_crf.evaluate import evaluate_checkpoint
from piecewise_crf.inference import Predictor, crf_marginals
from piecewise_crf.metrics import ConfusionMatrix

SAVED_CRF = CRFConfig(
    iterations=2, pairwise_mode="interaction", pairwise_scale=0.3, box_fraction=0.3
)
SAVED_DENSE = DenseCRFConfig(iterations=2, pos_xy_std=2.0, bi_weight=4.0, bi_rgb_std=10.0)


@pytest.fixture(scope="module")
def tuned(checkpoint, tmp_path_factory):
    """The shared tiny run with saved crf and dense-CRF settings that differ from every default."""
    ckpt = load_checkpoint(checkpoint)
    ckpt["config"]["crf"] = dataclasses.asdict(SAVED_CRF)
    ckpt["config"]["dense_crf"] = dataclasses.asdict(SAVED_DENSE)
    path = tmp_path_factory.mktemp("tuned") / "tuned.pt"
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def images():
    data = SyntheticContext(3, size=192, seed=4)
    return torch.stack([data[i][0][:, 40:136, 48:144] for i in range(3)])  # 96x96 crops


def test_from_checkpoint_predicts_with_the_saved_settings(tuned, images):
    predictor = Predictor.from_checkpoint(tuned, device="cpu")
    assert predictor.crf == SAVED_CRF and predictor.dense == SAVED_DENSE
    assert predictor.stages == ("unary", "crf", "crf+dense")
    probs = predictor(images)
    assert {name: p.shape for name, p in probs.items()} == dict.fromkeys(
        predictor.stages, (3, 5, 96, 96)
    )
    # Independently: the model's own pieces with the saved settings.
    model = model_from_checkpoint(load_checkpoint(tuned))[0]
    with torch.no_grad():
        potentials = model(images, box_fraction=0.3)
        grid = model.marginals(
            potentials, iterations=2, pairwise_mode="interaction", pairwise_scale=0.3
        )
        crf = model.upsample(grid, (96, 96))
        unary = model.upsample(potentials.unary.softmax(1), (96, 96))
    torch.testing.assert_close(probs["crf"], crf)
    torch.testing.assert_close(probs["unary"], unary)
    rgb = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    dense = dense_crf(rgb, crf, iterations=2, pos_xy_std=2.0, bi_weight=4.0, bi_rgb_std=10.0)
    torch.testing.assert_close(probs["crf+dense"], dense)
    default = Predictor(model, crf=CRFConfig())(images, ("crf",))["crf"]
    assert not torch.allclose(default, crf)  # the saved settings matter


def test_overrides_by_config_key(tuned):
    predictor = Predictor.from_checkpoint(
        tuned, device="cpu", pairwise_scale=0.01, box_fraction=0.15, dense_iterations=3,
        bi_weight=5,
    )  # fmt: skip
    assert predictor.crf == dataclasses.replace(SAVED_CRF, pairwise_scale=0.01, box_fraction=0.15)
    assert predictor.dense == dataclasses.replace(SAVED_DENSE, iterations=3, bi_weight=5)
    assert Predictor.from_checkpoint(tuned, dense_enabled=False).stages == ("unary", "crf")
    with pytest.raises(
        ValueError, match="unknown prediction setting 'pairwise_scal'; did you mean"
    ):
        Predictor.from_checkpoint(tuned, pairwise_scal=0.1)
    with pytest.raises(ValueError, match="crf.pairwise_mode must be one of raw, interaction"):
        Predictor.from_checkpoint(tuned, pairwise_mode="rw")


def test_a_batch_equals_its_images_one_by_one(tuned, images):
    predictor = Predictor.from_checkpoint(tuned, device="cpu")
    batch = predictor(images)
    for i in range(len(images)):
        single = predictor(images[i : i + 1])
        for name in predictor.stages:
            torch.testing.assert_close(batch[name][i : i + 1], single[name], atol=1e-5, rtol=0)


def test_a_list_of_uint8_arrays_of_any_sizes(tuned):
    predictor = Predictor.from_checkpoint(tuned, device="cpu")
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(64, 80, 3), (48, 48, 3)]]
    arrays.append(arrays[0].copy())
    probs = predictor(arrays, stages=("crf", "crf+dense"))
    assert list(probs) == ["crf", "crf+dense"]
    assert [p.shape for p in probs["crf"]] == [(5, 64, 80), (5, 48, 48), (5, 64, 80)]
    for array, p in zip(arrays, probs["crf+dense"], strict=True):
        image = torch.from_numpy(array).permute(2, 0, 1).float().div(255)[None]
        torch.testing.assert_close(
            p, predictor(image, ("crf+dense",))["crf+dense"][0], atol=1e-5, rtol=0
        )
    with pytest.raises(ValueError, match=r"image 0: expected an \(H, W, 3\) uint8"):
        predictor([arrays[0].astype(np.float32)])
    with pytest.raises(ValueError, match=r"float batch \(B, 3, H, W\)"):
        predictor(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="unknown stages \\['dense'\\]"):
        predictor([arrays[0]], stages=("dense",))


def test_flip_and_scales_average_distributions_and_mirror_exactly(tuned, images):
    predictor = Predictor.from_checkpoint(tuned, device="cpu", scales=(0.75, 1.0), flip=True)
    probs = predictor(images, ("unary", "crf"))
    torch.testing.assert_close(probs["crf"].sum(1), torch.ones(3, 96, 96))
    mirrored = predictor(images.flip(-1), ("unary", "crf"))
    for name in ("unary", "crf"):  # flip-averaging makes the prediction mirror-symmetric
        torch.testing.assert_close(mirrored[name], probs[name].flip(-1), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="test scales must be positive"):
        Predictor(predictor.model, scales=(0.0,))


def test_crf_stage_with_zero_iterations_is_the_unary_stage(tuned, images):
    model = model_from_checkpoint(load_checkpoint(tuned))[0]
    predictor = Predictor(model, crf=CRFConfig(iterations=0))
    probs = predictor(images, ("unary", "crf"))
    torch.testing.assert_close(probs["crf"], probs["unary"])
    with torch.no_grad():
        torch.testing.assert_close(
            crf_marginals(model, images, CRFConfig(iterations=0)), probs["unary"]
        )


def test_it_scores_exactly_what_evaluate_scores(tuned):
    results = evaluate_checkpoint(
        tuned, dataset="synthetic", split="val", limit=3, device="cpu", progress=False
    )
    val = SyntheticContext.split("val")
    predictor = Predictor.from_checkpoint(tuned, device="cpu")
    images = torch.stack([val[i][0] for i in (0, 16, 31)])  # what --limit 3 spreads over
    labels = torch.stack([val[i][1] for i in (0, 16, 31)])
    for name, probs in predictor(images).items():
        cm = ConfusionMatrix(5)
        cm.update(probs.argmax(1), labels)
        assert cm.compute()["mean_iou"] == pytest.approx(results[name]["mean_iou"], abs=1e-9)
