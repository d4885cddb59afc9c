import errno
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from piecewise_crf.commands.cli import MAX_SIZE, build_parser, main
from piecewise_crf.commands.predict import SkippedImagesError, collect_images, predict_files
from piecewise_crf.data.synthetic import PALETTE, generate

pytestmark = pytest.mark.usefixtures("one_thread")


def predict(checkpoint, inputs, out, *flags: str) -> list[Path]:
    """`piecewise-crf predict` as parsed from its command line, exceptions raised as they are."""
    argv = ["predict", "--checkpoint", str(checkpoint), *map(str, inputs), "--out", str(out)]
    return predict_files(build_parser().parse_args([*argv, "--quiet", *flags]))


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
    written = predict(checkpoint, [images], out, "--stage", "crf", "--save-probs")
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
        written = predict(checkpoint, [images / "colour.png"], tmp_path / stage, "--stage", stage)
        assert written == [tmp_path / stage / "colour.png"]


def test_bad_inputs_are_clear_errors(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="input not found"):
        collect_images([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        collect_images([tmp_path / "empty"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="broken.png \\(cannot read image: Truncated File Read"):
        predict(checkpoint, [tmp_path / "broken.png"], tmp_path / "o")
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path), "--out", "o"]
    assert main([*argv, "--stage", "dense"]) == 2  # argparse's choices


def test_read_only_output_folder_fails_before_predicting(checkpoint, images, read_only_folder):
    with pytest.raises(PermissionError, match="cannot write to the output folder .*locked"):
        predict(checkpoint, [images], read_only_folder)
    assert list(read_only_folder.iterdir()) == []


def picture(path: Path, height: int = 64, width: int = 96, seed: int = 5) -> Path:
    """A synthetic RGB image file (a crop of a 192x192 scene)."""
    rgb = (generate(0, size=192, seed=seed)[0] * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb[:height, :width]).save(path)
    return path


def digests(*folders: Path) -> dict[Path, str]:
    """sha256 of every file under the folders (a missing folder holds none)."""
    files = (p for folder in folders for p in sorted(folder.rglob("*")) if p.is_file())
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def cli_fails(argv: list[str], capsys, match: str) -> None:
    """`piecewise-crf` exits 2 with a single `error:` line containing `match`."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err


@pytest.fixture()
def small(tmp_path) -> Path:
    """A folder of two 64x96 images."""
    for seed, name in enumerate(("a.png", "b.png")):
        picture(tmp_path / "in" / name, seed=seed)
    return tmp_path / "in"


def test_predictions_into_an_input_folder_are_refused_before_loading_the_model(
    small, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(small)
    picture(tmp_path / "other" / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").symlink_to(small / "a.png")
    before = digests(tmp_path)
    missing = tmp_path / "missing.pt"  # were the model loaded first, this would fail instead
    for out in ("in", "in/", "./in", "link", str(small)):
        for inputs in (["in"], ["./in/a.png"], ["link/"]):
            message = f"^--out {re.escape(str(Path(out)))} is an input folder: predictions"
            with pytest.raises(ValueError, match=message):
                predict(missing, inputs, out, "--overwrite")
    with pytest.raises(ValueError, match=r"^--out \. would write in/a.png into an input folder"):
        predict(missing, ["in", "other"], ".")
    with pytest.raises(ValueError, match="^--out out would write out/a.png into an input folder"):
        predict(missing, ["in"], "out", "--overwrite")  # a symlink to it
    argv = ["predict", "--checkpoint", str(missing), "in", "--out", "in/", "--overwrite"]
    cli_fails(argv, capsys, "error: --out in is an input folder: predictions would overwrite")
    assert digests(tmp_path) == before


def test_existing_outputs_are_replaced_only_with_overwrite(checkpoint, small, tmp_path, capsys):
    out = tmp_path / "out"
    predict(checkpoint, [small], out, "--stage", "unary")
    before = digests(small, out)
    assert len(before) == 2 + 4
    message = (
        f"^--out {out} already holds 4 of the files this would write \\(e.g. a.png\\); "
        "pass --overwrite to replace them, or choose another --out$"
    )
    with pytest.raises(ValueError, match=message):
        predict(checkpoint, [small], out, "--stage", "unary")
    argv = ["predict", "--checkpoint", str(checkpoint), str(small), "--out", str(out), "--quiet"]
    cli_fails([*argv, "--stage", "unary"], capsys, "already holds 4 of the files")
    assert digests(small, out) == before
    (out / "a.png").write_bytes(b"an older prediction")
    assert main([*argv, "--stage", "unary", "--overwrite"]) == 0
    assert digests(small, out) == before  # the same predictions again, and no temp files left


def test_a_full_disk_leaves_no_partial_file(checkpoint, small, tmp_path, monkeypatch):
    out = tmp_path / "out"
    predict(checkpoint, [small], out, "--stage", "unary")
    before = digests(small, out)

    def full_disk(image, fp, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\n half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError, match="(?i)no space left"):
        predict(checkpoint, [small], out, "--stage", "unary", "--overwrite")
    assert digests(small, out) == before


def test_same_names_from_two_folders_mirror_the_folders(checkpoint, tmp_path):
    picture(tmp_path / "a" / "x.png")
    other = picture(tmp_path / "b" / "x.png", seed=1)
    out = tmp_path / "out"
    written = predict(checkpoint, [tmp_path / "a", other], out, "--stage", "unary")
    assert written == [out / "a" / "x.png", out / "b" / "x.png"]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["a/x.png", "a/x_overlay.png", "b/x.png", "b/x_overlay.png"]


def test_two_images_writing_the_same_file_are_refused(tmp_path):
    picture(tmp_path / "in" / "x.png")
    picture(tmp_path / "in" / "x.jpg")
    picture(tmp_path / "in2" / "x.png")
    picture(tmp_path / "in2" / "x_overlay.png")
    before = digests(tmp_path)
    out, missing = tmp_path / "out", tmp_path / "missing.pt"
    with pytest.raises(ValueError, match=r"in/x.jpg and .*in/x.png would both be predicted to "):
        predict(missing, [tmp_path / "in"], out)
    with pytest.raises(ValueError, match=r"x.png and .*x_overlay.png would both .*x_overlay.png;"):
        predict(missing, [tmp_path / "in2"], out)
    assert digests(tmp_path) == before and not out.exists()


def test_unreadable_images_are_skipped_and_reported_after_the_others(
    checkpoint, small, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # PIL refuses over twice this
    picture(small / "bomb.png", 160, 160)
    (small / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    before = digests(small)
    out = tmp_path / "out"
    with pytest.raises(SkippedImagesError) as caught:
        predict(checkpoint, [small], out, "--stage", "unary")
    err = caught.value
    assert isinstance(err, ValueError) and "\n" not in str(err)
    assert str(err) == (
        "2 of 4 images could not be read and were skipped: bomb.png (cannot read image: Image "
        "size (25600 pixels) exceeds limit of 20000 pixels, could be decompression bomb DOS "
        "attack.), "
        "broken.png (cannot read image: Truncated File Read); "
        f"the other 2 were predicted into {out}"
    )
    assert err.written == [out / "a.png", out / "b.png"]
    assert [name for name, _ in err.skipped] == ["bomb.png", "broken.png"]
    outputs = ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]
    assert sorted(p.name for p in out.iterdir()) == outputs
    argv = ["predict", "--checkpoint", str(checkpoint), str(small), "--out", str(tmp_path / "cli")]
    cli_fails([*argv, "--stage", "unary", "--quiet"], capsys, "2 of 4 images could not be read")
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == outputs
    assert digests(small) == before


def test_large_images_are_downscaled_but_labels_keep_their_size(checkpoint, tmp_path, capsys):
    source = picture(tmp_path / "in" / "big.png", 96, 128)
    out = tmp_path / "out"
    written = predict(checkpoint, [source], out, "--save-probs", "--max-size", "64")
    assert (
        "note: 1 of 1 images were larger than 64 px and were downscaled" in capsys.readouterr().out
    )
    label = Image.open(written[0])
    assert label.mode == "P" and label.size == Image.open(out / "big_overlay.png").size == (128, 96)
    probs = np.load(out / "big_probs.npy")
    assert probs.shape == (5, 48, 64)  # at the processed size
    upscaled = Image.fromarray(probs.argmax(0).astype(np.uint8)).resize((128, 96), Image.NEAREST)
    assert np.array_equal(np.asarray(label), np.asarray(upscaled))
    full = tmp_path / "full"
    predict(checkpoint, [source], full, "--stage", "unary", "--save-probs", "--max-size", "0")
    assert np.load(full / "big_probs.npy").shape == (5, 96, 128)
    assert "note" not in capsys.readouterr().out


def test_bad_max_size_and_an_out_file_are_one_line_errors(small, tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    for value in (-1, 16):
        with pytest.raises(ValueError, match=rf"^--max-size .* at least 32 pixels, got {value}$"):
            predict(missing, [small], tmp_path / "out", "--max-size", str(value))
    argv = ["predict", "--checkpoint", str(missing), str(small), "--quiet"]
    cli_fails([*argv, "--out", "o", "--max-size", "8"], capsys, "must be 0 (no limit) or at")
    assert build_parser().parse_args([*argv, "--out", "o"]).max_size == MAX_SIZE
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    before = digests(tmp_path)
    cli_fails([*argv, "--out", str(notes)], capsys, f"--out {notes} is a file, not a folder")
    assert digests(tmp_path) == before
