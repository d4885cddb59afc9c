"""`piecewise-crf calibrate`: the fitted weights written into a checkpoint that the Predictor then
uses, in place or into a new file, and refusals before the fit."""

import pytest
import torch
from cli_checks import fails

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.commands.cli import main
from piecewise_crf.config import config_to_dict
from piecewise_crf.crf import centre_interactions, grid_mean_field
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.inference import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")


def calibrate(checkpoint, *flags: str) -> list[str]:
    return ["calibrate", "--checkpoint", str(checkpoint), "--device", "cpu", *flags]


def test_calibrated_checkpoint_is_what_the_predictor_uses(checkpoint, tmp_path, capsys):
    out = tmp_path / "calibrated.pt"
    before = checkpoint.read_bytes()
    assert main(calibrate(checkpoint, "--out", str(out), "--limit", "3", "--rings", "2",
                          "--steps", "5")) == 0  # fmt: skip
    assert checkpoint.read_bytes() == before  # --out: the input is untouched
    printed = capsys.readouterr().out
    assert "calibrating on 3 images of synthetic train" in printed and "<- kept" in printed
    ckpt = load_checkpoint(out)
    record, crf = ckpt.calibration, ckpt.config.crf
    kept = min(record["fits"], key=lambda f: f["loss"])
    assert crf.pairwise_mode == kept["mode"] and crf.pairwise_scale == 1.0
    assert crf.ring_weights == kept["ring_weights"]
    assert set(crf.ring_weights) == {"surrounding", "above_below"}
    assert record["previous_crf"] == config_to_dict(load_checkpoint(checkpoint).config)["crf"]
    assert record["unary_loss"] > 0 and all(f["loss"] <= f["start_loss"] for f in record["fits"])

    # the Predictor's crf stage is mean-field with exactly these weights
    predictor = Predictor.from_checkpoint(out, device="cpu")
    image = SyntheticContext(1, size=192, seed=5)[0][0][None, :, 40:136, 48:144]  # 96x96
    with torch.no_grad():
        scores = predictor.model(image, box_fraction=crf.box_fraction).scores
        centred = crf.pairwise_mode == "interaction"
        pairwise = [(o, centre_interactions(z) if centred else z) for _, o, z in scores.pairwise]
        weights = [
            crf.ring_weights[name][min(max(abs(dy), abs(dx)), 2) - 1]
            for name, (dy, dx) in scores.offsets()
        ]
        grid = grid_mean_field(scores.unary, pairwise, crf.iterations, weights)
        expected = predictor.model.upsample(grid, (96, 96))
        torch.testing.assert_close(predictor(image, ["crf"])["crf"], expected, atol=1e-6, rtol=1e-5)
    fails(calibrate(checkpoint, "--out", str(out), "--limit", "1", "--steps", "0"), capsys,
          "exists")  # fmt: skip


def test_calibrate_in_place_keeps_the_nets_and_the_first_settings(checkpoint, tmp_path):
    copy = tmp_path / "model.pt"
    copy.write_bytes(checkpoint.read_bytes())
    assert main(calibrate(copy, "--limit", "2", "--steps", "2", "--modes", "raw")) == 0
    old, new = load_checkpoint(checkpoint), load_checkpoint(copy)
    assert new.config.crf.pairwise_mode == "raw"
    assert all(torch.equal(old.model[k], v) for k, v in new.model.items())
    assert {k: v for k, v in config_to_dict(new.config).items() if k != "crf"} == {
        k: v for k, v in config_to_dict(old.config).items() if k != "crf"
    }
    assert main(calibrate(copy, "--limit", "1", "--steps", "0", "--modes", "interaction")) == 0
    again = load_checkpoint(copy)
    assert again.calibration["previous_crf"] == config_to_dict(old.config)["crf"]  # the original
    assert again.config.crf.pairwise_mode == "interaction"


def test_the_objective_is_recorded_and_mistakes_fail_before_the_fit(
    checkpoint, camvid_data, tmp_path, capsys
):
    out = tmp_path / "error.pt"
    argv = calibrate(checkpoint, "--out", str(out), "--limit", "1", "--steps", "1")
    assert main([*argv, "--modes", "raw", "--objective", "error"]) == 0
    printed = capsys.readouterr().out
    record = load_checkpoint(out).calibration
    assert record["objective"] == "error"
    warned = "warning: no weight brings the error" in printed
    assert warned == (record["fits"][0]["loss"] >= record["unary_loss"])
    assert 0 < record["unary_loss"] < 1  # an expected error, not a log-loss
    before = checkpoint.read_bytes()
    fails(calibrate(checkpoint, "--objective", "mse"), capsys, "--objective: unknown objective")
    fails(calibrate(checkpoint, "--rings", "0"), capsys, "--rings must be >= 1")
    fails(calibrate(checkpoint, "--out", str(camvid_data / "train.txt")), capsys, "train.txt")
    fails(calibrate(checkpoint, "--split", "nope"), capsys, "nope")
    assert checkpoint.read_bytes() == before


def test_a_read_only_folder_is_refused_before_the_fit(checkpoint, read_only_folder, capsys):
    import time

    tic = time.monotonic()
    fails(calibrate(checkpoint, "--out", str(read_only_folder / "c.pt")), capsys,
          "cannot write to the output folder")  # fmt: skip
    assert time.monotonic() - tic < 30  # refused up front, not after minutes of fitting
