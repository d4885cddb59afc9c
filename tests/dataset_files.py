"""Writers of tiny datasets in each real on-disk format, for the reader tests."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from piecewise_crf.data.base import bit_palette


def rng_image(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def blocks(height: int, width: int, values: list[int], seed: int = 0) -> np.ndarray:
    """A label map of 4x4-pixel blocks drawn from `values`."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(values, ((height + 3) // 4, (width + 3) // 4))
    return np.kron(coarse, np.ones((4, 4), int))[:height, :width].astype(np.uint8)


def save(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write a PNG/JPEG; with `palette`, a single-channel array becomes a palette ("P") PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette is not None:
        colours = np.zeros((256, 3), np.uint8)
        colours[: len(palette)] = palette
        image.putpalette(colours.ravel().tolist())  # "L" -> "P", indices unchanged
    image.save(path)
    return path


def make_camvid(root: Path, n_train: int = 3, n_val: int = 2) -> Path:
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            name = f"0001TP_{split}{i:03d}.png"
            save(root / split / name, rng_image(i, 36, 48))
            save(root / f"{split}annot" / name, blocks(36, 48, list(range(12)), seed=i))
            lines.append(f"{split}/{name} {split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_folder(root: Path, n: int = 3, size: tuple[int, int] = (10, 12)) -> Path:
    """A folder dataset: images/ (PNG and JPEG) and labels/ with matching stems, classes 0..2."""
    for i in range(n):
        save(root / "images" / f"img{i}.{'png' if i % 2 else 'jpg'}", rng_image(i, *size))
        save(root / "labels" / f"img{i}.png", blocks(*size, [0, 1, 2, 255], i))
    return root


def voc_label(seed: int, height: int = 20, width: int = 30) -> np.ndarray:
    """Classes 0..20 with a 255 void border around objects, as VOC annotations have."""
    label = blocks(height, width, [0, 0, 5, 12, 20], seed)
    edges = np.zeros_like(label, bool)
    edges[:, 1:] |= label[:, 1:] != label[:, :-1]
    edges[1:, :] |= label[1:, :] != label[:-1, :]
    label[edges] = 255
    return label


def make_voc(root: Path, *, sbd: bool = False, aug: bool = False) -> Path:
    """VOC train {a, b}, val {c}; SBD train {b, c, d}, val {e}; SegmentationClassAug a..e."""
    voc = root / "VOCdevkit" / "VOC2012"
    ids = ["2007_a", "2007_b", "2007_c", "2008_d", "2008_e", "2008_f"]
    for k, i in enumerate(ids):
        save(voc / "JPEGImages" / f"{i}.jpg", rng_image(k, 20, 30))
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_a\n2007_b\n")
    (lists / "val.txt").write_text("2007_c\n")
    (lists / "trainval.txt").write_text("2007_a\n2007_b\n2007_c\n")
    for k, i in enumerate(ids[:3]):
        save(voc / "SegmentationClass" / f"{i}.png", voc_label(k), bit_palette(256))
    if sbd:
        cls = root / "benchmark_RELEASE" / "dataset" / "cls"
        cls.mkdir(parents=True)
        for k, i in enumerate(ids[1:5], 1):
            seg = blocks(20, 30, [0, 7, 15], seed=k)
            gt = {"Segmentation": seg, "CategoriesPresent": np.unique(seg)[:, None]}
            scipy.io.savemat(cls / f"{i}.mat", {"GTcls": gt})
        (cls.parent / "train.txt").write_text("2007_b\n2008_d\n2007_c\n")
        (cls.parent / "val.txt").write_text("2008_e\n")
    if aug:
        for k, i in enumerate(ids[:5]):
            save(voc / "SegmentationClassAug" / f"{i}.png", blocks(20, 30, [0, 3, 9], seed=k + 10))
    return root


CONTEXT_IDS = {  # 459-class ids of some of the 59 classes, as in PASCAL-Context's labels.txt
    "aeroplane": 2, "bag": 9, "bedclothes": 19, "cloth": 80, "table": 397, "wood": 458,
}  # fmt: skip


def make_context(root: Path, *, raw: bool = True) -> Path:
    """VOC2010 images, split lists, and either raw LabelMap .mat files or converted PNGs."""
    from piecewise_crf.data.context import CLASSES

    voc = root / "VOCdevkit" / "VOC2010"
    ids = ["2008_000002", "2008_000003", "2010_000001"]
    for k, i in enumerate(ids):
        save(voc / "JPEGImages" / f"{i}.jpg", rng_image(k, 12, 16))
    (root / "train.txt").write_text("2008_000002\n2008_000003\n")
    (root / "val.txt").write_text("2010_000001\n")
    if not raw:
        for k, i in enumerate(ids):
            save(voc / "SegmentationClassContext" / f"{i}.png", blocks(12, 16, [0, 1, 59], k))
        return root
    # labels.txt: the 59 names at their real ids (alphabetical order), fillers elsewhere.
    real = [2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104,
            105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295,
            296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427,
            440, 445, 454, 458]  # fmt: skip
    names = {i: f"other{i}" for i in range(1, 460)} | dict(zip(real, CLASSES[1:], strict=True))
    (root / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in names.items()))
    (root / "trainval").mkdir()
    values = np.array([0, 1, 2, 9, 19, 80, 397, 458, 459], np.uint16)
    for k, i in enumerate(ids):
        label_map = np.random.default_rng(k).choice(values, (12, 16)).astype(np.uint16)
        scipy.io.savemat(root / "trainval" / f"{i}.mat", {"LabelMap": label_map})
    return root


NYU_SIZE = (6, 8)  # (H, W) of the fixture; the real data is 480 x 640


def make_nyud(root: Path, n: int = 5) -> Path:
    """nyu_depth_v2_labeled.mat as MATLAB v7.3 writes it: HDF5 behind a 512-byte header, arrays
    transposed; splits.mat and classMapping40.mat as v5 files. Returns root; the true (H, W, 3)
    images and 0..894 labels are in root/truth.npz."""
    root.mkdir(parents=True, exist_ok=True)
    h, w = NYU_SIZE
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    labels = rng.integers(0, 895, (n, h, w)).astype(np.uint16)
    labels[:, 0, :] = 0  # an unlabelled row
    path = root / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["images"] = images.transpose(0, 3, 2, 1)  # (N, 3, W, H)
        f["labels"] = labels.transpose(0, 2, 1)  # (N, W, H)
        f["depths"] = np.zeros((n, w, h), np.float32)
    with open(path, "r+b") as f:
        f.write(
            b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 1 00:00:00 2024 HDF5 schema 1.00 ."
        )
    scipy.io.savemat(
        root / "splits.mat",
        {"trainNdxs": np.array([[1.0], [3.0], [4.0]]), "testNdxs": np.array([[2.0], [5.0]])},
    )
    map_class = (np.arange(894) % 40 + 1).astype(np.float64)[
        None, :
    ]  # 1 -> 2, ..., 40 -> 1, 41 -> 2
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": map_class})
    np.savez(root / "truth.npz", images=images, labels=labels)
    return root


SIFT_DIR = "spatial_envelope_256x256_static_8outdoorcategories"
SIFT_NAMES = ["coast_arnat59", "coast_bea1", "forest_for15", "highway_bost183", "street_par21"]


def make_siftflow(root: Path) -> Path:
    """Five 16x16 images, S labels (double, as MATLAB saves them), backslash TestSet1.txt listing
    the first two; test labels use classes 1..3 only."""
    for k, name in enumerate(SIFT_NAMES):
        save(root / "Images" / SIFT_DIR / f"{name}.jpg", rng_image(k, 16, 16))
        values = [0, 1, 2, 3] if k < 2 else [0, 5, 33]
        s = blocks(16, 16, values, k).astype(np.float64)
        (root / "SemanticLabels" / SIFT_DIR).mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "SemanticLabels" / SIFT_DIR / f"{name}.mat", {"S": s})
    lines = [f"{SIFT_DIR}\\{n}.jpg" for n in SIFT_NAMES[:2]]
    (root / "TestSet1.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return root
