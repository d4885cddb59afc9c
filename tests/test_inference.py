"""The Predictor: a checkpoint's own settings, every stage, batches, lists and test-time variants."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from permutocrf import dense_crf
from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.commands.cli import main
from piecewise_crf.config import CRFConfig, DenseCRFConfig
from piecewise_crf.crf import centre_interactions, grid_mean_field
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.inference import Predictor, crf_marginals, grid_marginals, mean_field_weights
from piecewise_crf.metrics import ConfusionMatrix

pytestmark = pytest.mark.usefixtures("one_thread")

SAVED_CRF = CRFConfig(
    iterations=2, pairwise_mode="interaction", pairwise_scale=0.3, box_fraction=0.3
)
SAVED_DENSE = DenseCRFConfig(iterations=2, pos_xy_std=2.0, bi_weight=4.0, bi_rgb_std=10.0)


@pytest.fixture(scope="module")
def tuned(with_settings):
    """The shared tiny run with saved crf and dense-CRF settings that differ from every default."""
    return with_settings(crf=SAVED_CRF, dense_crf=SAVED_DENSE)


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
    # Independently: the model's own pieces with the saved settings, the interaction scores
    # centred and scaled by hand.
    model = load_checkpoint(tuned).build_model()
    with torch.no_grad():
        potentials = model(images, box_fraction=0.3)
        pairwise = [(o, 0.3 * centre_interactions(z)) for _, o, z in potentials.scores.pairwise]
        grid = grid_mean_field(potentials.unary, pairwise, 2)
        crf = model.upsample(grid, (96, 96))
        unary = model.upsample(potentials.unary.softmax(1), (96, 96))
    torch.testing.assert_close(probs["crf"], crf, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs["unary"], unary)
    rgb = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    dense = dense_crf(
        rgb, probs["crf"], iterations=2, pos_xy_std=2.0, bi_weight=4.0, bi_rgb_std=10.0
    )
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
    with pytest.raises(ValueError, match=r"channels go first: pass \.permute\(0, 3, 1, 2\)"):
        predictor(torch.zeros(1, 32, 32, 3))
    with pytest.raises(ValueError, match="unknown stage 'dense'; did you mean 'crf\\+dense'"):
        predictor([arrays[0]], stages=("dense",))


def test_flip_and_scales_average_distributions_and_mirror_exactly(tuned, images):
    predictor = Predictor.from_checkpoint(tuned, device="cpu", scales=(0.75, 1.0), flip=True)
    probs = predictor(images, ("unary", "crf"))
    torch.testing.assert_close(probs["crf"].sum(1), torch.ones(3, 96, 96))
    mirrored = predictor(images.flip(-1), ("unary", "crf"))
    for name in ("unary", "crf"):  # flip-averaging makes the prediction mirror-symmetric
        torch.testing.assert_close(mirrored[name], probs[name].flip(-1), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="scales must be positive"):
        Predictor(predictor.model, scales=(0.0,))


def test_crf_stage_with_zero_iterations_is_the_unary_stage(tuned, images):
    model = load_checkpoint(tuned).build_model()
    predictor = Predictor(model, crf=CRFConfig(iterations=0))
    probs = predictor(images, ("unary", "crf"))
    torch.testing.assert_close(probs["crf"], probs["unary"])
    with torch.no_grad():
        torch.testing.assert_close(
            crf_marginals(model, images, CRFConfig(iterations=0)), probs["unary"]
        )


def test_it_scores_exactly_what_evaluate_scores(tuned, tmp_path):
    argv = ["evaluate", "--checkpoint", str(tuned), "--split", "val", "--limit", "3", "--quiet"]
    assert main([*argv, "--device", "cpu", "--json", str(tmp_path / "m.json")]) == 0
    results = json.loads((tmp_path / "m.json").read_text())
    val = SyntheticContext.split("val")
    predictor = Predictor.from_checkpoint(tuned, device="cpu")
    images = torch.stack([val[i][0] for i in (0, 16, 31)])  # what --limit 3 spreads over
    labels = torch.stack([val[i][1] for i in (0, 16, 31)])
    for name, probs in predictor(images).items():
        cm = ConfusionMatrix(5)
        cm.update(probs.argmax(1), labels)
        assert cm.compute()["mean_iou"] == pytest.approx(results[name]["mean_iou"], abs=1e-9)


def test_mean_field_weights_are_the_scale_times_the_ring_weight():
    crf = CRFConfig(pairwise_scale=0.5, ring_weights={"a": [2.0, 3.0]})
    offsets = [("a", (0, 1)), ("a", (2, -1)), ("a", (5, 5)), ("b", (1, 1))]
    assert mean_field_weights(crf, offsets) == [1.0, 1.5, 1.5, 0.5]  # rings 1, 2, 5; b has none
    fitted = {"b": [torch.tensor(4.0)]}
    weights = mean_field_weights(crf, offsets, fitted)  # in place of crf.ring_weights
    assert [float(w) for w in weights] == [0.5, 0.5, 0.5, 2.0]


def test_modes_and_scale_reach_mean_field(tuned, images):
    model = load_checkpoint(tuned).build_model()
    with torch.no_grad():
        scores = model(images).scores
        unary = grid_marginals(scores, CRFConfig(iterations=0))
        torch.testing.assert_close(grid_marginals(scores, CRFConfig(pairwise_scale=0.0)), unary)
        raw = grid_marginals(scores, CRFConfig(pairwise_mode="raw"))
        centred = grid_marginals(scores, CRFConfig(pairwise_mode="interaction"))
        by_hand = grid_mean_field(
            scores.unary, [(o, centre_interactions(z)) for _, o, z in scores.pairwise], 3
        )
    assert not torch.allclose(raw, centred)
    torch.testing.assert_close(centred, by_hand, atol=1e-6, rtol=1e-5)


def test_a_sweep_of_both_modes_runs_the_pairwise_nets_once(tuned, images, monkeypatch):
    """Settings in both modes share one evaluation of the Pairwise-Nets (the full scores serve
    both), interaction-only settings share the interactions, the unary stage needs none, and
    every setting gives what it gives alone."""
    model = load_checkpoint(tuned).build_model()
    sweep = {
        "raw": dataclasses.replace(SAVED_CRF, pairwise_mode="raw"),
        "strong": dataclasses.replace(SAVED_CRF, pairwise_scale=3.0),
    }
    predictor = Predictor(model, crf=SAVED_CRF, dense=SAVED_DENSE, sweep=sweep)
    calls = []
    span_scores = type(model.pairwise_nets["surrounding"]).span_scores

    def counted(net, maps, offsets, interaction=False):
        calls.append(interaction)
        return span_scores(net, maps, offsets, interaction)

    monkeypatch.setattr(type(model.pairwise_nets["surrounding"]), "span_scores", counted)
    one_pass = predictor(images, ("crf", "raw", "strong"))
    chunks = len(calls)
    assert chunks and not any(calls)  # the full scores, once: raw needs them
    for name, crf in {"crf": SAVED_CRF, **sweep}.items():
        alone = Predictor(model, crf=crf, dense=SAVED_DENSE)(images, ("crf",))["crf"]
        torch.testing.assert_close(one_pass[name], alone, atol=1e-6, rtol=1e-5)
    calls.clear()
    predictor(images, ("crf", "strong"))
    assert len(calls) == chunks and all(calls)  # the interaction rows, once
    calls.clear()
    predictor(images, ("unary",))
    assert calls == []


def test_inputs_it_cannot_mean_are_refused(tuned, images):
    predictor = Predictor.from_checkpoint(tuned, device="cpu")
    poisoned = images.clone()
    poisoned[0, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values; pass float RGB in"):
        predictor(poisoned)
    with pytest.raises(ValueError, match=r"in \[0, 1\], got values 0\.\.255; divide 0-255"):
        predictor(images * 255)
    with pytest.raises(ValueError, match="no images"):
        predictor(images[:0])
