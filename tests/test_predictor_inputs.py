"""The Predictor takes images the way users pass them: one or a list of arrays, PIL images, paths
and tensors, each giving exactly what the equivalent float batch gives; refusals name the fix."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from piecewise_crf.inference import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """An (H, W, 3) uint8 RGB image with smooth structure and noise."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:48, :64]
    smooth = np.stack([x * 4, y * 5, (x + y) * 2], -1)
    return (smooth + rng.integers(0, 40, smooth.shape)).clip(0, 255).astype(np.uint8)


def as_batch(array: np.ndarray) -> torch.Tensor:
    """The (1, 3, H, W) float batch in [0, 1] of an (H, W, 3) uint8 array, built by hand."""
    return torch.tensor(array.transpose(2, 0, 1)[None] / 255.0, dtype=torch.float32)


def assert_same(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0)


def test_every_form_of_one_image_gives_the_float_batch_marginals(predictor, photo, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    batch = predictor(as_batch(photo))
    assert {name: p.shape for name, p in batch.items()} == dict.fromkeys(
        ("unary", "crf", "crf+dense"), (1, 5, 48, 64)
    )
    one = {name: p[0] for name, p in batch.items()}
    chw = torch.from_numpy(photo.copy()).permute(2, 0, 1)
    forms = {
        "array": photo,
        "read-only array": np.asarray(Image.fromarray(photo)),
        "negative strides": photo[:, ::-1].copy()[:, ::-1],
        "PIL image": Image.fromarray(photo),
        "str path": str(path),
        "Path": path,
        "uint8 tensor": chw,
        "float tensor": chw.double() / 255,
    }
    for form, image in forms.items():
        got = predictor(image)
        assert all(p.shape == (5, 48, 64) for p in got.values()), form
        assert_same(got, one)
    assert_same(predictor(chw[None]), batch)  # a uint8 batch stays a batch


def test_a_list_gives_a_list_in_order_with_same_sizes_batched(predictor, photo, tmp_path):
    small = photo[8:40, 16:56].copy()
    other = photo[::-1].copy()
    path = tmp_path / "other.png"
    Image.fromarray(other).save(path)
    images = (photo, Image.fromarray(small), path)  # any sequence: a tuple
    probs = predictor(images, ("crf", "crf+dense"))
    assert list(probs) == ["crf", "crf+dense"]
    assert [p.shape for p in probs["crf"]] == [(5, 48, 64), (5, 32, 40), (5, 48, 64)]
    together = predictor(torch.cat([as_batch(photo), as_batch(other)]), ("crf", "crf+dense"))
    alone = predictor(as_batch(small), ("crf", "crf+dense"))
    for name in ("crf", "crf+dense"):  # the two 48x64 images ran as one batch
        torch.testing.assert_close(torch.stack(probs[name][::2]), together[name], atol=0, rtol=0)
        torch.testing.assert_close(probs[name][1], alone[name][0], atol=0, rtol=0)
    assert [p.shape for p in predictor([photo], "unary")["unary"]] == [(5, 48, 64)]


def test_pil_images_are_read_as_the_dataset_reader_reads_files(predictor, tmp_path):
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    levels = np.array([[0, 0, 0], [255, 0, 0], [20, 200, 90], [250, 250, 250]], np.uint8)
    indices = rng.integers(0, 4, (48, 64), dtype=np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette(levels.flatten().tolist())
    wide = rng.integers(0, 65536, (48, 64), dtype=np.uint16)
    grey16 = np.rint(wide * (255 / 65535)).astype(np.uint8)
    cases = {  # file written, and the RGB array it shows, computed by hand
        "rotated.png": (Image.fromarray(pixels), np.rot90(pixels, -1)[..., None].repeat(3, 2)),
        "palette.png": (palette, levels[indices]),
        "wide.png": (Image.fromarray(wide), grey16[..., None].repeat(3, 2)),
    }
    for name, (image, shown) in cases.items():
        path = tmp_path / name
        image.save(path, exif=exif if name == "rotated.png" else None)
        expected = predictor(as_batch(np.ascontiguousarray(shown)))
        with Image.open(path) as opened:
            assert opened.mode == {"rotated.png": "L", "palette.png": "P"}.get(name, "I;16")
            assert_same(predictor(opened), {n: p[0] for n, p in expected.items()})
        assert_same(predictor(path), {n: p[0] for n, p in expected.items()})


def test_a_single_stage_name_is_one_stage(predictor, photo):
    probs = predictor(photo, "crf+dense")
    assert list(probs) == ["crf+dense"]
    assert_same(probs, {"crf+dense": predictor(photo)["crf+dense"]})
    with pytest.raises(ValueError, match=r"^unknown stage 'crf\+dens'; did you mean 'crf\+dense'"):
        predictor(photo, "crf+dens")


GREY = np.zeros((48, 64), np.uint8)
SHOWN = "pass Image.fromarray(array) to read it as image files are (grey, alpha over white)"
ARRAY = r"expected an \(H, W, 3\) uint8 RGB array, got "
TENSOR = r"expected a \(3, H, W\) image tensor, float RGB in \[0, 1\] or uint8, got "
REFUSED = {
    "grey array": (GREY, ARRAY + r"\(48, 64\) uint8; " + re.escape(SHOWN)),
    "RGBA array": (np.zeros((48, 64, 4), np.uint8), ARRAY + r"\(48, 64, 4\) uint8; "),
    "float 0-255": (
        np.full((48, 64, 3), 200.0),
        ARRAY + r"\(48, 64, 3\) float64; for values 0-255 pass array\.round\(\)\.astype",
    ),
    "float 0-1": (
        np.full((48, 64, 3), 0.5, np.float32),
        ARRAY + r"\(48, 64, 3\) float32; pass \(array \* 255\)\.round\(\)\.astype\(np\.uint8\)",
    ),
    "channels first array": (
        np.zeros((3, 48, 64), np.uint8),
        ARRAY + r"\(3, 48, 64\) uint8; channels go last: pass array\.transpose\(1, 2, 0\)",
    ),
    "array of images": (
        np.zeros((2, 48, 64, 3), np.uint8),
        ARRAY + r"\(2, 48, 64, 3\) uint8; pass list\(array\) for several images",
    ),
    "16-bit RGB array": (np.zeros((48, 64, 3), np.uint16), "uint16; convert it to 8-bit RGB"),
    "no pixels": (np.zeros((0, 64, 3), np.uint8), r"\(0, 64, 3\) uint8; it has no pixels"),
    "channels last tensor": (
        torch.zeros(48, 64, 3),
        TENSOR + r"\(48, 64, 3\) torch\.float32; channels go first: pass \.permute\(2, 0, 1\)",
    ),
    "grey tensor": (torch.zeros(1, 48, 64), r"; RGB has 3 channels, it has 1$"),
    "integer tensor": (
        torch.zeros(3, 48, 64, dtype=torch.int64),
        r"torch\.int64; pass float RGB in \[0, 1\] or uint8 0-255$",
    ),
    "2-d tensor": (torch.zeros(48, 64), r"; pass one image \(3, H, W\) or a batch \(B, 3, H, W\)$"),
    "batch tensor": (
        torch.zeros(2, 48, 64, 3),
        r"^the batch: expected a \(B, 3, H, W\) batch tensor, .*; channels go first: pass "
        r"\.permute\(0, 3, 1, 2\)$",
    ),
    "0-255 tensor": (
        torch.full((3, 48, 64), 255.0),
        r"^the input must be float RGB in \[0, 1\], got values 255\.\.255; divide 0-255 values",
    ),
    "NaN in a list": (
        [GREY[..., None].repeat(3, 2), torch.full((3, 48, 64), float("nan"))],
        r"^image 1 holds NaN or infinite values; pass float RGB in \[0, 1\]$",
    ),
    "batch in a list": ([torch.zeros(1, 3, 48, 64)], r"a batch goes on its own, not in a list$"),
    "LAB image": (Image.new("LAB", (4, 4)), r"has mode LAB, which is not read; convert it to RGB"),
    "empty list": ([], r"^no images to predict: got an empty list; pass an \(H, W, 3\) uint8"),
    "number": (3, r"^the input is of type int, not an image; pass an \(H, W, 3\) uint8 array, "),
    "generator": ((GREY for _ in range(2)), r"^the input is of type generator, not an image; "),
    "bytes": (b"\x89PNG", r"^the input is of type bytes, not an image; .* or a list of them$"),
    "list of lists": ([[GREY]], r"^image 0 is of type list, not an image; "),
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_it_cannot_mean_is_one_line_naming_the_fix(predictor, case):
    images, message = REFUSED[case]
    with pytest.raises(ValueError, match=message) as refused:
        predictor(images, "unary")
    assert "\n" not in str(refused.value)


def test_a_missing_path_is_named(predictor, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^image not found: {re.escape(str(tmp_path))}"):
        predictor([tmp_path / "nope.png"])


def test_the_device_is_checked_when_the_predictor_is_built(predictor, checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = "^device 'cuda' asked for, but CUDA is not available; use cpu or auto$"
    with pytest.raises(ValueError, match=message):
        Predictor(predictor.model, device="cuda")
    with pytest.raises(ValueError, match=message):
        Predictor.from_checkpoint(checkpoint, device=torch.device("cuda"))
    with pytest.raises(ValueError, match="^device 'gpu' is not a device name; use auto, cpu"):
        Predictor.from_checkpoint(checkpoint, device="gpu")
    assert Predictor.from_checkpoint(Path(checkpoint)).device == torch.device("cpu")  # auto
