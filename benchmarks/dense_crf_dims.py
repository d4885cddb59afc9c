"""Time the drop-in against pydensecrf as the bilateral features' dimension D grows: a 480x360
CamVid frame as an image of D - 2 channels (grey; RGB; and shifted copies of RGB and grey), so
``create_pairwise_bilateral`` gives D-dimensional features; K=11, 5 iterations, beside the usual
Gaussian. From D = 10 the lattice's vertex codes overflow int64 and vertices are hashed by their
full coordinate rows (``lattice_numba._number_rows``), as pydensecrf's table always does.

Usage: python -m benchmarks.dense_crf_dims [--camvid DIR] [--repeats N] [--json JSON]
For each D: the median seconds of building the D-dimensional kernel and of mean-field, ours
(``compat``, numba) and pydensecrf's, repeats interleaved; the lattice's vertices; the labels'
agreement with pydensecrf and the largest marginal difference. Prints a table and the machine;
writes JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import permutocrf.compat as compat
from benchmarks.common import CAMVID, commit, describe, machine, timed
from benchmarks.dense_crf import load_frames
from permutocrf import lattice_numba
from piecewise_crf.files import write_json

DIMS = (3, 5, 7, 10, 14)


def channels(image: np.ndarray, count: int) -> np.ndarray:
    """``count`` (up to 14) channels of an RGB image: grey alone for 1, else RGB, then copies of
    RGB and grey shifted by 3 pixels (right, down, diagonally) until there are ``count``."""
    rgb = image.astype(np.float32)
    grey = rgb.mean(2, keepdims=True)
    if count == 1:
        return grey
    shifted = (np.roll(rgb, 3, 1), np.roll(rgb, (3, 3), (0, 1)), np.roll(rgb, 3, 0))
    pool = [rgb, shifted[0], grey, np.roll(grey, 3, 0), *shifted[1:]]
    return np.concatenate(pool, 2)[..., :count]


def dimension_row(image, probs, d: int, repeats: int) -> dict:
    """Ours against pydensecrf at D-dimensional bilateral features."""
    import pydensecrf.densecrf as ref

    k, h, w = probs.shape
    unary = compat.unary_from_softmax(probs)
    feats = compat.create_pairwise_bilateral(
        (80, 80), (13,) * (d - 2), channels(image, d - 2), chdim=2
    )
    modules = {"ours": compat, "pydensecrf": ref}
    built = {}

    def build(name: str) -> None:
        crf = modules[name].DenseCRF2D(w, h, k)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseEnergy(feats, compat=10)
        built[name] = crf

    builds: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(repeats):
        for name in modules:
            start = time.perf_counter()
            build(name)
            builds[name].append(time.perf_counter() - start)
    inference = timed({n: lambda n=n: built[n].inference(5) for n in modules}, repeats)
    q = {name: np.asarray(crf.inference(5)) for name, crf in built.items()}
    lattice = lattice_numba.build(np.ascontiguousarray(feats.T))
    return {
        "dimension": d,
        "vertices": int(lattice.num_vertices),
        "build_s": float(np.median(builds["ours"])),
        "pydensecrf_build_s": float(np.median(builds["pydensecrf"])),
        "inference_s": inference["ours"],
        "pydensecrf_inference_s": inference["pydensecrf"],
        "label_agreement": float((q["ours"].argmax(0) == q["pydensecrf"].argmax(0)).mean()),
        "max_abs_diff": float(np.abs(q["ours"] - q["pydensecrf"]).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results/dense_crf_dims.json"
    )
    args = parser.parse_args()
    image, probs = load_frames(args.camvid, 1, 11)[0]
    rows = [dimension_row(image, probs, d, args.repeats) for d in DIMS]
    results = {
        "machine": machine(),
        "commit": commit(),
        "size": [image.shape[1], image.shape[0]],
        "labels": probs.shape[0],
        "iterations": 5,
        "repeats": args.repeats,
        "rows": rows,
    }
    print(f"machine: {describe(results['machine'])}; ours on {torch.get_num_threads()} threads")
    print(
        f"{'D':>3}{'vertices':>10}{'build s':>9}{'ref':>7}{'mean-field s':>14}{'ref':>7}{'labels':>8}"
    )
    for r in rows:
        print(
            f"{r['dimension']:>3}{r['vertices']:>10}{r['build_s']:9.3f}"
            f"{r['pydensecrf_build_s']:7.3f}{r['inference_s']:14.3f}"
            f"{r['pydensecrf_inference_s']:7.3f}{100 * r['label_agreement']:7.2f}%"
        )
    write_json(results, args.json)


if __name__ == "__main__":
    main()
