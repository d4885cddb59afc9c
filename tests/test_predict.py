import os
import tempfile

import numpy as np
import pytest
from PIL import Image
from tiny_run import one_thread, tiny_run  # noqa: F401  (one_thread: autouse fixture)

from piecewise_crf.data.synthetic import PALETTE, generate
from piecewise_crf.predict import collect_images, predict_files


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    tiny_run(out)
    return out / "final.pt"


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = (generate(0, size=192, seed=5)[0] * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(folder / "colour.png")
    Image.fromarray(rgb[:160, :176]).convert("L").save(folder / "grey.jpg")  # converted to RGB
    Image.fromarray(rgb).convert("RGBA").save(folder / "alpha.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_writes_palette_png_overlay_and_probabilities(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    written = predict_files(checkpoint, [images], out, stage="crf", save_probs=True, progress=False)
    assert sorted(p.name for p in written) == ["alpha.png", "colour.png", "grey.png"]
    label = Image.open(out / "grey.png")
    assert label.mode == "P" and label.size == (176, 160)
    assert np.array_equal(np.array(label.getpalette()[:15]).reshape(5, 3), PALETTE)
    assert np.asarray(label).max() < 5
    assert Image.open(out / "grey_overlay.png").size == (176, 160)
    probs = np.load(out / "colour_probs.npy")
    assert probs.shape == (5, 192, 192) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1, rtol=1e-4)
    assert np.array_equal(probs.argmax(0), np.asarray(Image.open(out / "colour.png")))


def test_predict_full_method_and_unary_stage(checkpoint, images, tmp_path):
    for stage in ("unary", "crf+dense"):
        written = predict_files(
            checkpoint, [images / "colour.png"], tmp_path / stage, stage=stage, progress=False
        )
        assert written == [tmp_path / stage / "colour.png"]


def test_bad_inputs_are_clear_errors(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="input not found"):
        collect_images([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        collect_images([tmp_path / "empty"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        predict_files(checkpoint, [tmp_path / "broken.png"], tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="stage must be one of"):
        predict_files(checkpoint, [tmp_path], tmp_path / "o", stage="dense")


def test_read_only_output_folder_fails_before_predicting(checkpoint, images, tmp_path, monkeypatch):
    out = tmp_path / "locked"
    out.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: simulate the refusal the OS would give

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    else:
        out.chmod(0o500)
    with pytest.raises(PermissionError, match="cannot write to the output folder .*locked"):
        predict_files(checkpoint, [images], out, progress=False)
    out.chmod(0o700)
    assert list(out.iterdir()) == []
