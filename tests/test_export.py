"""`piecewise-crf export`: one ONNX graph that computes the Predictor's crf stage, for any batch."""

import dataclasses
import inspect
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cli_checks import fails

from permutocrf import dense_crf
from piecewise_crf import __version__
from piecewise_crf.commands.cli import main
from piecewise_crf.config import CRFConfig
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.export import export_onnx
from piecewise_crf.inference import Predictor

SAVED_CRF = CRFConfig(
    iterations=2, pairwise_mode="interaction", pairwise_scale=0.3, box_fraction=0.3
)
H, W = 96, 128  # not square: a swapped axis would show


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tuned(with_settings):
    """The shared tiny run's final.pt, with a crf setting that differs from every default."""
    return with_settings(crf=SAVED_CRF)


def test_graph_computes_the_crf_stage_for_any_batch(tuned, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an older export")
    argv = ["export", "--checkpoint", str(tuned), "--out", str(out), "--size", str(H), str(W)]
    assert main([*argv, "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "MB" in printed
    assert f"images (B, 3, {H}, {W})" in printed and f"marginals (B, 5, {H}, {W})" in printed
    assert "2 mean-field iterations, interaction pairwise scores x0.3, box fraction 0.3" in printed
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left

    model = onnx.load(out)
    assert model.opset_import[0].version >= 17
    assert (model.producer_name, model.producer_version) == ("piecewise-crf", __version__)
    assert model.model_version == 1  # the graph's interface
    meta = {p.key: p.value for p in model.metadata_props}
    predictor = Predictor.from_checkpoint(tuned, device="cpu")
    assert json.loads(meta["classes"]) == predictor.classes
    assert json.loads(meta["palette"]) == predictor.palette.tolist()
    assert json.loads(meta["crf"]) == dataclasses.asdict(SAVED_CRF)
    dense = json.loads(meta["dense_crf"])
    assert dense == {k: v for k, v in dataclasses.asdict(predictor.dense).items() if k != "enabled"}
    assert set(dense) <= set(inspect.signature(dense_crf).parameters)

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (images_in,), (marginals_out,) = session.get_inputs(), session.get_outputs()
    assert (images_in.name, images_in.shape) == ("images", ["batch", 3, H, W])
    assert (marginals_out.name, marginals_out.shape) == ("marginals", ["batch", 5, H, W])
    data = SyntheticContext(5, size=192, seed=4)
    crops = torch.stack([data[i][0][:, 40 : 40 + H, 32 : 32 + W] for i in range(5)])
    for batch in (crops[:2], crops[2:]):
        got = session.run(None, {"images": batch.numpy()})[0]
        want = predictor(batch, ("crf",))["crf"].numpy()
        assert got.shape == want.shape == (len(batch), 5, H, W)
        # Measured: max |dQ| 6e-8, every label equal.
        assert np.abs(got - want).max() <= 1e-4
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999


def test_refusals_are_one_line_errors(tuned, tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.onnx"
    argv = ["export", "--checkpoint", str(tuned), "--size", "64", "64", "--out"]
    fails(
        [*argv[:3], "--size", "16", "64", "--out", str(out)],
        capsys,
        "--size: each side must be at least 32 pixels, got 16 64",
    )
    with pytest.raises(ValueError, match="^size: each side must be at least 32 pixels, got 64 31"):
        export_onnx(tuned, out, (64, 31))
    fails([*argv, str(tuned), "--overwrite"], capsys, "is an input of this command")
    fails([*argv, str(tmp_path)], capsys, "is a folder")
    out.write_bytes(b"kept")
    fails([*argv, str(out)], capsys, "exists; pass --overwrite")
    assert out.read_bytes() == b"kept"
    monkeypatch.setitem(sys.modules, "onnx", None)  # what `import onnx` meets when not installed
    fails([*argv, str(tmp_path / "new.onnx")], capsys, "needs the package onnx: pip install onnx")


def test_a_read_only_folder_is_refused_before_the_export(tuned, read_only_folder, capsys):
    argv = ["export", "--checkpoint", str(tuned), "--size", "64", "64", "--out"]
    fails([*argv, str(read_only_folder / "model.onnx")], capsys, "cannot write to the output")
    assert list(read_only_folder.iterdir()) == []


def test_overwrite_replaces_only_an_onnx_file(tuned, tmp_path, capsys):
    last = tmp_path / "last.pt"
    last.write_bytes(b"a checkpoint")
    argv = ["export", "--checkpoint", str(tuned), "--size", "64", "64", "--overwrite", "--out"]
    fails([*argv, str(last)], capsys, "exists and is not a .onnx file")
    assert last.read_bytes() == b"a checkpoint"
