"""calibrate: the learned weights against a brute-force scan, and a checkpoint that carries them."""

import math

import pytest
import torch
from tiny_run import one_thread  # noqa: F401  (autouse fixture)

from piecewise_crf.calibrate import (
    Sample,
    calibrate_checkpoint,
    fit_mode,
    mean_field_loss,
    node_loss,
)
from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.crf import grid_mean_field
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.inference import Predictor
from piecewise_crf.relations import Surrounding, offset_slices


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
        pairwise.append(((dy, dx), z))
    return Sample(unary, pairwise, truth)


def test_node_loss_by_hand():
    # two classes, nodes (1, 1, 3): labels 0, 1 and one unlabelled; Q of the labels 0.7 and 0.8
    q = torch.tensor([[0.7, 0.2, 0.5], [0.3, 0.8, 0.5]]).view(1, 2, 1, 3)
    nodes = torch.tensor([[[0, 1, 255]]])
    weights = torch.tensor([1.0, 3.0])
    nll = (-math.log(0.7) - 3 * math.log(0.8)) / 4
    assert float(node_loss(q, nodes, weights, 255, "nll")) == pytest.approx(nll)
    assert float(node_loss(q, nodes, weights, 255, "error")) == pytest.approx((0.3 + 3 * 0.2) / 4)
    assert float(node_loss(q, nodes, None, 255, "error")) == pytest.approx((0.3 + 0.2) / 2)


@pytest.mark.parametrize("objective", ["nll", "error"])
def test_fit_finds_the_brute_force_optimum_of_one_weight(objective):
    samples = [planted(s) for s in range(4)]
    names = ["surrounding"] * len(samples[0].pairwise)

    def loss(weight: float) -> float:
        n = len(names)
        return sum(
            float(mean_field_loss(s, "raw", [weight] * n, 3, None, 255, objective)) for s in samples
        ) / len(samples)

    grid = [math.exp(e / 50) for e in range(-350, 201)]  # 0.0009 .. 55, 2 % apart
    brute = min(grid, key=loss)
    fit = fit_mode(
        samples, names, "raw", rings=1, iterations=3, steps=150, lr=0.1,
        class_weights=None, ignore_index=255, objective=objective, log=lambda *_: None,
    )  # fmt: skip
    learned = fit.ring_weights["surrounding"][0]
    assert 0.01 < brute < 50.0  # an interior optimum (nll 0.67, error 4.2), not an end of the grid
    assert learned == pytest.approx(brute, rel=0.05)
    assert fit.loss <= fit.start_loss + 1e-9
    assert fit.loss == pytest.approx(loss(brute), abs=1e-4)


def test_rings_get_their_own_weights_and_the_loss_only_falls():
    samples = [planted(s) for s in range(3)]
    names = ["surrounding"] * len(samples[0].pairwise)
    one = fit_mode(samples, names, "raw", rings=1, iterations=3, steps=60, lr=0.1,
                   class_weights=None, ignore_index=255, log=lambda *_: None)  # fmt: skip
    three = fit_mode(samples, names, "raw", rings=3, iterations=3, steps=60, lr=0.1,
                     class_weights=None, ignore_index=255, log=lambda *_: None)  # fmt: skip
    assert len(three.ring_weights["surrounding"]) == 3
    assert three.loss <= one.loss + 1e-4


def test_calibrated_checkpoint_is_what_the_predictor_uses(checkpoint, tmp_path, capsys):
    out = tmp_path / "calibrated.pt"
    before = checkpoint.read_bytes()
    record = calibrate_checkpoint(checkpoint, out=out, limit=3, rings=2, steps=5, device="cpu")
    assert checkpoint.read_bytes() == before  # --out: the input is untouched
    assert "<- kept" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    crf = ckpt["config"]["crf"]
    kept = min(record["fits"], key=lambda f: f["loss"])
    assert crf["pairwise_mode"] == kept["mode"] and crf["pairwise_scale"] == 1.0
    assert crf["ring_weights"] == kept["ring_weights"] and set(crf["ring_weights"]) == {
        "surrounding",
        "above_below",
    }
    assert ckpt["calibration"]["previous_crf"] == load_checkpoint(checkpoint)["config"]["crf"]
    assert record["unary_loss"] > 0 and all(f["loss"] <= f["start_loss"] for f in record["fits"])

    # the Predictor's crf stage is mean-field with exactly these weights
    predictor = Predictor.from_checkpoint(out, device="cpu")
    image = SyntheticContext(1, size=192, seed=5)[0][0][None, :, 40:136, 48:144]  # 96x96
    with torch.no_grad():
        potentials = predictor.model(image, box_fraction=predictor.crf.box_fraction)
        pairwise = potentials.materialise(crf["pairwise_mode"])
        weights = [
            crf["ring_weights"][name][min(max(abs(dy), abs(dx)), 2) - 1]
            for name, ((dy, dx), _) in zip(potentials.relation_names(), pairwise, strict=True)
        ]
        grid = grid_mean_field(potentials.unary, pairwise, predictor.crf.iterations, weights)
        expected = predictor.model.upsample(grid, (96, 96))
        torch.testing.assert_close(predictor(image, ["crf"])["crf"], expected)

    with pytest.raises(FileExistsError, match="exists"):
        calibrate_checkpoint(checkpoint, out=out, limit=1, steps=0, device="cpu")


def test_calibrate_in_place_keeps_the_nets(checkpoint, tmp_path):
    copy = tmp_path / "model.pt"
    copy.write_bytes(checkpoint.read_bytes())
    calibrate_checkpoint(copy, limit=2, steps=2, modes=["raw"], device="cpu")
    old, new = load_checkpoint(checkpoint), load_checkpoint(copy)
    assert new["config"]["crf"]["pairwise_mode"] == "raw"
    assert all(torch.equal(old["model"][k], v) for k, v in new["model"].items())
    assert {k: v for k, v in new["config"].items() if k != "crf"} == {
        k: v for k, v in old["config"].items() if k != "crf"
    }
    calibrate_checkpoint(copy, limit=1, steps=0, modes=["interaction"], device="cpu")
    again = load_checkpoint(copy)
    assert again["calibration"]["previous_crf"] == old["config"]["crf"]  # the original settings
    assert again["config"]["crf"]["pairwise_mode"] == "interaction"


def test_calibrate_records_its_objective_and_refuses_an_unknown_one(checkpoint, tmp_path):
    out, lines = tmp_path / "error.pt", []
    record = calibrate_checkpoint(
        checkpoint, out=out, limit=1, steps=1, modes=["raw"], objective="error", device="cpu",
        log=lines.append,
    )  # fmt: skip
    assert record["objective"] == "error"
    warned = any(line.startswith("warning: no weight brings the error") for line in lines)
    assert warned == (record["fits"][0]["loss"] >= record["unary_loss"])
    assert 0 < record["unary_loss"] < 1  # an expected error, not a log-loss
    assert load_checkpoint(out)["calibration"]["objective"] == "error"
    with pytest.raises(ValueError, match="--objective must be one of nll, error"):
        calibrate_checkpoint(checkpoint, out=tmp_path / "x.pt", objective="mse", device="cpu")
