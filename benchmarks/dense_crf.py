"""Time our dense CRF against pydensecrf: a CamVid frame (480x360, K=11, 5 iterations) on 2 and
1 threads (``dense_crf`` and the pydensecrf drop-in ``compat``), a batch of 8, image size from
0.1 to 2 megapixels, 2 to 60 labels, and numba's first-call cost.

Usage: python -m benchmarks.dense_crf [--camvid DIR] [--repeats N] [--quick] [--out JSON]
Every row times ours and pydensecrf in the same run, their repeats interleaved so that load
from other jobs hits both; medians. Prints tables and the machine; writes the numbers as JSON.
``--quick`` skips the size and label sweeps and the first-call timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numba
import numpy as np
import torch
from PIL import Image

import permutocrf.compat as compat
from benchmarks.common import CAMVID, commit, describe, machine, timed
from permutocrf import (
    bilateral_kernel,
    dense_crf,
    gaussian_kernel,
    kernels,
    mean_field,
    unary_scores,
)

PARAMS = dict(pos_xy_std=3.0, pos_weight=3.0, bi_xy_std=80.0, bi_rgb_std=13.0, bi_weight=10.0)
MEGAPIXELS = (0.1, 0.25, 0.5, 1.0, 2.0)
LABELS = (2, 5, 11, 21, 40, 60)
FIRST_CALL = """
import time, numpy as np
start = time.perf_counter()
from permutocrf import dense_crf
imported = time.perf_counter()
image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
dense_crf(image, np.full((3, 48, 64), 1 / 3, np.float32))
print(imported - start, time.perf_counter() - imported)
"""


def load_frames(
    root: Path, count: int, k: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """CamVid val frames with noisy softmax unaries over ``k`` labels built from the ground
    truth (class c becomes label c mod k; for k > 11 the extra labels only get noise)."""
    rng = np.random.default_rng(seed)
    frames = []
    for line in (root / "val.txt").read_text().split("\n")[:count]:
        image_path, label_path = line.split()
        image = np.array(Image.open(root / image_path).convert("RGB"))
        label = np.minimum(np.array(Image.open(root / label_path)), 10) % k
        onehot = torch.nn.functional.one_hot(torch.from_numpy(label).long(), k).permute(2, 0, 1)
        smooth = torch.nn.functional.avg_pool2d(3.0 * onehot[None].float(), 9, 1, 4)[0]
        logits = smooth + torch.from_numpy(rng.normal(0, 1.5, smooth.shape)).float()
        frames.append((image, torch.softmax(logits, 0).numpy()))
    return frames


def resized(image: np.ndarray, probs: np.ndarray, megapixels: float):
    """The frame and its marginals bilinearly resized to about ``megapixels``, same aspect."""
    h, w = image.shape[:2]
    f = math.sqrt(megapixels * 1e6 / (h * w))
    size = (round(h * f), round(w * f))
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    img = torch.nn.functional.interpolate(img, size, mode="bilinear", align_corners=False)
    img = img[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).contiguous().numpy()
    p = torch.nn.functional.interpolate(torch.from_numpy(probs)[None], size, mode="bilinear")
    return img, (p[0] / p[0].sum(0)).numpy()


def pydensecrf_run(image: np.ndarray, probs: np.ndarray, iterations: int) -> np.ndarray:
    import pydensecrf.densecrf as dcrf

    return api_run(dcrf, image, probs, iterations)


def api_run(dcrf, image: np.ndarray, probs: np.ndarray, iterations: int, params=PARAMS):
    """pydensecrf's API as its users write it, the CRF's construction included, on ``dcrf``:
    ``pydensecrf.densecrf`` or its drop-in ``permutocrf``; kernel ``params`` as ``PARAMS``."""
    k, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.maximum(probs, 1e-5)).reshape(k, -1)))
    crf.addPairwiseGaussian(sxy=params["pos_xy_std"], compat=params["pos_weight"])
    crf.addPairwiseBilateral(
        sxy=params["bi_xy_std"], srgb=params["bi_rgb_std"], rgbim=image, compat=params["bi_weight"]
    )
    return np.asarray(crf.inference(iterations)).reshape(k, h, w)


def versus(image: np.ndarray, probs: np.ndarray, it: int, repeats: int) -> dict:
    """Ours and pydensecrf on one input: median seconds and their ratio."""
    t = timed(
        {
            "ours_s": lambda: dense_crf(image, probs, iterations=it, **PARAMS),
            "pydensecrf_s": lambda: pydensecrf_run(image, probs, it),
        },
        repeats,
    )
    return t | {"ratio": t["ours_s"] / t["pydensecrf_s"]}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def first_call_seconds() -> dict:
    """In a new process: seconds to the first result of a small float32 ``dense_crf`` with an
    empty numba cache (compiling), then with the cache that run wrote; and the second run's
    import of ``permutocrf`` (numba)."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = os.environ | {"NUMBA_CACHE_DIR": cache}
        for kind in ("compile", "cached"):
            run = subprocess.run(
                [sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True
            )
            out["import_s"], out[f"jit_{kind}_first_call_s"] = map(float, run.stdout.split())
    return out


def camvid_rows(frames, it: int, repeats: int) -> dict:
    """The CamVid frame on 2 (this machine's default) and 1 thread, with where our time goes,
    and the batch of 8 frames."""
    image, probs = frames[0]
    k, h, w = probs.shape
    scores = unary_scores(probs).reshape(k, -1)
    weights = [PARAMS["pos_weight"], PARAMS["bi_weight"]]
    rows: dict = {}
    threads = torch.get_num_threads()
    for n, suffix in ((threads, ""), (1, "_1thread")):
        torch.set_num_threads(n)
        gauss = gaussian_kernel(h, w, PARAMS["pos_xy_std"])
        bilateral = bilateral_kernel(image, PARAMS["bi_xy_std"], PARAMS["bi_rgb_std"])
        t = timed(
            {
                f"ours{suffix}_s": lambda: dense_crf(image, probs, iterations=it, **PARAMS),
                f"pydensecrf{suffix}_s": lambda: pydensecrf_run(image, probs, it),
                f"compat{suffix}_s": lambda: api_run(compat, image, probs, it),
                # The Gaussian kernel is cached per image size, as in every call after the first.
                f"ours{suffix}_bilateral_kernel_s": lambda: bilateral_kernel(
                    image, PARAMS["bi_xy_std"], PARAMS["bi_rgb_std"]
                ),
                f"ours{suffix}_iterations_s": lambda g=gauss, b=bilateral: mean_field(
                    scores, [g, b], weights, it
                ),
                f"ours{suffix}_gaussian_uncached_s": lambda: (
                    kernels._gaussian_lattice.cache_clear(),
                    gaussian_kernel(h, w, PARAMS["pos_xy_std"]),
                ),
            },
            repeats,
        )
        rows |= t
        for name in ("ours", "compat"):
            rows[f"ratio{suffix}_{name}_over_pydensecrf"] = (
                t[f"{name}{suffix}_s"] / t[f"pydensecrf{suffix}_s"]
            )
    torch.set_num_threads(threads)
    images = np.stack([f[0] for f in frames])
    batch = np.stack([f[1] for f in frames])
    t = timed(
        {
            "ours_batch_s": lambda: dense_crf(images, batch, iterations=it, **PARAMS),
            "pydensecrf_batch_s": lambda: [pydensecrf_run(i, p, it) for i, p in frames],
        },
        max(3, repeats // 2),
    )
    rows |= t | {"batch": len(frames)}
    rows["ratio_batch_over_pydensecrf"] = t["ours_batch_s"] / t["pydensecrf_batch_s"]
    ref = pydensecrf_run(image, probs, it)
    ours = dense_crf(image, probs, iterations=it, **PARAMS)
    rows["label_agreement"] = float((ref.argmax(0) == ours.argmax(0)).mean())
    rows["max_abs_diff"] = float(np.abs(ref - ours).max())
    drop_in = api_run(compat, image, probs, it)
    rows["label_agreement_compat"] = float((ref.argmax(0) == drop_in.argmax(0)).mean())
    rows["max_abs_diff_compat"] = float(np.abs(ref - drop_in).max())
    return rows


def print_table(title: str, rows: list[dict], names: list[str]) -> None:
    print(f"\n{title}")
    print(f"{'':>12}{'ours s':>10}{'pydensecrf s':>14}{'ratio':>8}")
    for name, row in zip(names, rows, strict=True):
        print(f"{name:>12}{row['ours_s']:10.4f}{row['pydensecrf_s']:14.4f}{row['ratio']:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="only the CamVid rows")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results/dense_crf.json"
    )
    args = parser.parse_args()
    it, k = args.iterations, 11
    frames = load_frames(args.camvid, 8, k)
    h, w = frames[0][0].shape[:2]
    results: dict = {
        "machine": machine(),
        "commit": commit(),
        "size": [w, h],
        "labels": k,
        "iterations": it,
        "params": PARAMS,
    }
    results |= camvid_rows(frames, it, args.repeats)
    results["numba"] = f"{numba.__version__}, threading layer {numba.threading_layer()}"
    if not args.quick:
        image, probs = frames[0]
        sizes = []
        for mp in MEGAPIXELS:
            img, p = resized(image, probs, mp)
            sizes.append({"megapixels": mp, "size": [img.shape[1], img.shape[0]]})
            sizes[-1] |= versus(img, p, it, args.repeats)
        results["sizes"] = sizes
        pixels = [s["size"][0] * s["size"][1] for s in sizes]
        results["size_slope_ours"] = slope(pixels, [s["ours_s"] for s in sizes])
        results["size_slope_pydensecrf"] = slope(pixels, [s["pydensecrf_s"] for s in sizes])
        sweep = []
        for labels in LABELS:
            img, p = load_frames(args.camvid, 1, labels)[0]
            sweep.append({"labels": labels} | versus(img, p, it, args.repeats))
        results["labels_sweep"] = sweep
        results |= first_call_seconds()

    print(f"machine: {describe(results['machine'])}; numba {results['numba']}")
    print(f"{w}x{h}, K={k}, {it} iterations, median of {args.repeats}")
    print(f"{'':36}{'seconds':>10}")
    for key in sorted(x for x in results if x.endswith("_s")):
        print(f"{key:36}{results[key]:10.4f}")
    for key in sorted(x for x in results if x.startswith(("ratio", "label_", "max_abs", "size_"))):
        print(f"{key:36}{results[key]:10.4f}")
    if "sizes" in results:
        threads = f"ours on {torch.get_num_threads()} threads"
        sizes = [f"{sw}x{sh}" for sw, sh in (row["size"] for row in results["sizes"])]
        print_table(f"image size, K={k}, {threads}", results["sizes"], sizes)
        labels = [f"K={row['labels']}" for row in results["labels_sweep"]]
        print_table(f"labels, {w}x{h}, {threads}", results["labels_sweep"], labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
