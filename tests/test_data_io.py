"""Reading image files as a viewer shows them, and labels as the class ids they hold: every mode
PIL opens is converted by a known rule or refused by name; orientation as the file says."""

import numpy as np
import pytest
from PIL import Image

from piecewise_crf.data.io import load_mat, open_rgb, read_label_png, read_lines


def saved(tmp_path, image: Image.Image, name: str, **kwargs) -> object:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def rgb_of(path) -> np.ndarray:
    image = open_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_grey_palette_and_cmyk_become_rgb(tmp_path):
    grey = Image.fromarray(np.array([[0, 128, 255]], np.uint8))
    assert rgb_of(saved(tmp_path, grey, "g.png"))[0, :, 0].tolist() == [0, 128, 255]
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert rgb_of(saved(tmp_path, cmyk, "c.tif"))[0, 0].tolist() == [255, 0, 0]
    palette = grey.convert("P")
    assert rgb_of(saved(tmp_path, palette, "p.png"))[0, :, 1].tolist() == [0, 128, 255]


def test_16_bit_and_float_grey_are_scaled_not_clipped(tmp_path):
    wide = Image.fromarray(np.array([[0, 32896, 65535]], np.uint16))  # mode I;16
    assert wide.mode.startswith("I")
    assert rgb_of(saved(tmp_path, wide, "w.png"))[0, :, 0].tolist() == [0, 128, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))  # mode F, 0..1
    assert rgb_of(saved(tmp_path, unit, "u.tif"))[0, :, 0].tolist() == [0, 128, 255]
    byte = Image.fromarray(np.array([[0.0, 100.0, 255.0]], np.float32))  # mode F, 0..255
    assert rgb_of(saved(tmp_path, byte, "b.tif"))[0, :, 0].tolist() == [0, 100, 255]
    for values, why in (
        ([[0.0, np.nan]], "values that are NaN or infinite"),
        ([[-1.0, 0.5]], r"F values outside 0\.\.1"),
        ([[0.0, 300.0]], r"F values outside 0\.\.255"),
    ):
        bad = Image.fromarray(np.array(values, np.float32))
        with pytest.raises(ValueError, match=f"holds {why}; save it as 8-bit RGB or grey"):
            open_rgb(saved(tmp_path, bad, "x.tif"))


def test_transparency_is_shown_over_white(tmp_path):
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent
    assert rgb_of(saved(tmp_path, Image.fromarray(rgba), "a.png")).tolist() == [
        [[255, 0, 0], [255, 255, 255]]
    ]
    la = Image.fromarray(np.array([[[0, 255], [0, 0]]], np.uint8), mode="LA")
    assert rgb_of(saved(tmp_path, la, "la.png")).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_orientation_is_the_one_a_viewer_shows_for_images_and_labels(tmp_path):
    pixels = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = saved(tmp_path, Image.fromarray(pixels), "o.png", exif=exif)
    shown = rgb_of(path)[..., 0]
    assert shown.shape == (3, 2) and shown.tolist() == np.rot90(pixels, -1).tolist()
    label = saved(tmp_path, Image.fromarray(pixels // 40), "ol.png", exif=exif)
    assert read_label_png(label).tolist() == np.rot90(pixels // 40, -1).tolist()


def test_other_modes_are_refused_by_name(tmp_path):
    lab = Image.new("LAB", (2, 2))
    with pytest.raises(ValueError, match=r"has mode LAB, which is not read; convert it to RGB"):
        open_rgb(saved(tmp_path, lab, "lab.tif"))
    big = Image.fromarray(np.array([[0, 70000]], np.int32))  # mode I beyond 16 bits
    with pytest.raises(ValueError, match=r"holds I values outside 0..65535"):
        open_rgb(saved(tmp_path, big, "i.tif"))


def test_labels_are_class_ids_and_refused_when_they_are_colours_or_alpha(tmp_path):
    ids = np.array([[0, 1, 300]], np.uint16)
    assert read_label_png(saved(tmp_path, Image.fromarray(ids), "l16.png")).tolist() == [
        [0, 1, 300]
    ]
    binary = Image.fromarray(np.array([[True, False]]))
    assert read_label_png(saved(tmp_path, binary, "b.png")).tolist() == [[1, 0]]
    la = Image.fromarray(np.zeros((2, 2, 2), np.uint8), mode="LA")
    with pytest.raises(ValueError, match=r"has an alpha channel \(LA\); labels must be class"):
        read_label_png(saved(tmp_path, la, "la.png"))
    rgb = Image.new("RGB", (2, 2))
    with pytest.raises(ValueError, match=r"is a colour \(RGB\) image"):
        read_label_png(saved(tmp_path, rgb, "c.png"))
    fractions = Image.fromarray(np.array([[0.5, 1.0]], np.float32))
    with pytest.raises(ValueError, match="values that are not whole numbers"):
        read_label_png(saved(tmp_path, fractions, "f.tif"))


def test_readers_take_str_paths_and_name_a_missing_file(tmp_path):
    """Every reader takes str as well as Path (a str once failed with AttributeError)."""
    Image.new("RGB", (3, 2), (10, 20, 30)).save(tmp_path / "a.png")
    Image.new("L", (3, 2), 4).save(tmp_path / "b.png")
    (tmp_path / "list.txt").write_text("x\n\n y \n")
    assert np.asarray(open_rgb(str(tmp_path / "a.png")))[0, 0].tolist() == [10, 20, 30]
    assert read_label_png(str(tmp_path / "b.png")).tolist() == [[4] * 3] * 2
    assert read_lines(str(tmp_path / "list.txt")) == ["x", "y"]
    for reader in (open_rgb, read_label_png, read_lines, load_mat):
        with pytest.raises(FileNotFoundError, match="nope"):
            reader(str(tmp_path / "nope"))
