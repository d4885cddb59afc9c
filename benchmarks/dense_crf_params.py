"""Our dense CRF against pydensecrf at three parameter sets people use, on 2 and 1 threads, and
how time grows with the kernels' widths.

Usage: python -m benchmarks.dense_crf_params [--camvid DIR] [--repeats N] [--out JSON]

A CamVid frame (480x360, K=11) with noisy softmax unaries (`dense_crf.load_frames`), each set
timed as users call it: `dense_crf` and the pydensecrf drop-in (`compat`, construction
included) against pydensecrf, repeats interleaved, medians; pydensecrf is single-threaded, so
the thread count is ours. The sets: pydensecrf's README example, DeepLab's VOC settings, the
CamVid recipe's own (piecewise_crf/configs/camvid.yaml). The bilateral lattice's vertices say
how large each set's kernel is: fine kernels (small stds) make large lattices. Prints tables and
the machine; writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import permutocrf.compat as compat
from benchmarks.common import CAMVID, commit, describe, machine, timed
from benchmarks.dense_crf import PARAMS, api_run, load_frames
from permutocrf import bilateral_kernel, dense_crf
from piecewise_crf.config import load_config

Params = dict[str, float]


def parameter_sets() -> dict[str, tuple[Params, int]]:
    """name -> (kernel parameters, iterations)."""
    recipe = load_config("camvid").dense_crf
    keys = ("pos_xy_std", "pos_weight", "bi_xy_std", "bi_rgb_std", "bi_weight")
    return {
        "pydensecrf README": (PARAMS, 5),
        "DeepLab VOC": (
            dict(pos_xy_std=3, pos_weight=3, bi_xy_std=121, bi_rgb_std=5, bi_weight=4),
            10,
        ),
        "CamVid recipe": ({key: getattr(recipe, key) for key in keys}, recipe.iterations),
    }


def side_by_side(image: np.ndarray, probs: np.ndarray, params: Params, it: int, repeats: int):
    """Median seconds of ours, the drop-in and pydensecrf, their ratios and agreement."""
    import pydensecrf.densecrf as pydensecrf

    t = timed(
        {
            "ours_s": lambda: dense_crf(image, probs, iterations=it, **params),
            "compat_s": lambda: api_run(compat, image, probs, it, params),
            "pydensecrf_s": lambda: api_run(pydensecrf, image, probs, it, params),
        },
        repeats,
    )
    ref = api_run(pydensecrf, image, probs, it, params)
    ours = dense_crf(image, probs, iterations=it, **params)
    return t | {
        "ratio": t["ours_s"] / t["pydensecrf_s"],
        "ratio_compat": t["compat_s"] / t["pydensecrf_s"],
        "label_agreement": float((ref.argmax(0) == ours.argmax(0)).mean()),
    }


def vertices(image: np.ndarray, params: Params) -> int:
    """Vertices of the frame's bilateral lattice."""
    return int(bilateral_kernel(image, params["bi_xy_std"], params["bi_rgb_std"]).num_vertices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results/dense_crf_params.json"
    )
    args = parser.parse_args()
    image, probs = load_frames(args.camvid, 1, 11)[0]
    threads = torch.get_num_threads()
    rows = []
    for name, (params, it) in parameter_sets().items():
        for n in (threads, 1):
            torch.set_num_threads(n)
            row = {"set": name, "params": params, "iterations": it, "threads": n}
            row |= side_by_side(image, probs, params, it, args.repeats)
            rows.append(row | {"bilateral_vertices": vertices(image, params)})
    torch.set_num_threads(threads)
    recipe, it = parameter_sets()["CamVid recipe"]
    widths = []
    for rgb_std in (3, 5, 13, 30):
        for xy_std in (10, 30, 80):
            params = recipe | {"bi_xy_std": xy_std, "bi_rgb_std": rgb_std}
            row = {"bi_xy_std": xy_std, "bi_rgb_std": rgb_std, "iterations": it}
            row |= side_by_side(image, probs, params, it, max(3, args.repeats // 2))
            widths.append(row | {"bilateral_vertices": vertices(image, params)})
    results = {
        "machine": machine(),
        "commit": commit(),
        "size": [image.shape[1], image.shape[0]],
        "labels": probs.shape[0],
        "parameter_sets": rows,
        "kernel_widths": widths,
    }
    print(f"machine: {describe(results['machine'])}; {image.shape[1]}x{image.shape[0]}, K=11")
    print(
        f"{'set':<18}{'threads':>8}{'ours s':>9}{'compat s':>10}{'pydensecrf s':>14}"
        f"{'ratio':>7}{'vertices':>10}"
    )
    for r in rows:
        print(
            f"{r['set']:<18}{r['threads']:>8}{r['ours_s']:9.3f}{r['compat_s']:10.3f}"
            f"{r['pydensecrf_s']:14.3f}{r['ratio']:7.2f}{r['bilateral_vertices']:>10}"
        )
    print(f"\nkernel widths (the recipe otherwise), ours on {threads} threads")
    for r in widths:
        print(
            f"bilateral {r['bi_xy_std']:>3} / {r['bi_rgb_std']:>2}{r['ours_s']:9.3f}"
            f"{r['pydensecrf_s']:14.3f}{r['ratio']:7.2f}{r['bilateral_vertices']:>10}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
