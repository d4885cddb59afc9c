"""Time our PyTorch dense CRF against pydensecrf on CamVid frames (480x360, K=11, 5 iterations).

Usage: python benchmarks/dense_crf.py [--camvid DIR] [--repeats N] [--out JSON]
Prints a table (median seconds), the time ratio and where our time goes (lattice build vs
mean-field iterations), a batch of 8 images, and the machine; writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import commit, describe, machine
from PIL import Image

from piecewise_crf.densecrf import dense_crf
from piecewise_crf.densecrf.dense import _bilateral_lattice, _gaussian_lattice, mean_field

PARAMS = dict(pos_xy_std=3.0, pos_weight=3.0, bi_xy_std=80.0, bi_rgb_std=13.0, bi_weight=10.0)


def load_frames(
    root: Path, count: int, k: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """CamVid val frames with noisy softmax unaries built from the ground truth."""
    rng = np.random.default_rng(seed)
    frames = []
    for line in (root / "val.txt").read_text().split("\n")[:count]:
        image_path, label_path = line.split()
        image = np.array(Image.open(root / image_path).convert("RGB"))
        label = np.minimum(np.array(Image.open(root / label_path)), k - 1)
        onehot = torch.nn.functional.one_hot(torch.from_numpy(label).long(), k).permute(2, 0, 1)
        smooth = torch.nn.functional.avg_pool2d(3.0 * onehot[None].float(), 9, 1, 4)[0]
        logits = smooth + torch.from_numpy(rng.normal(0, 1.5, smooth.shape)).float()
        frames.append((image, torch.softmax(logits, 0).numpy()))
    return frames


def median_times(fns: dict, repeats: int) -> dict:
    """Median seconds of each function; runs alternate so that load noise hits all of them."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def pydensecrf_run(image: np.ndarray, probs: np.ndarray, iterations: int) -> np.ndarray:
    import pydensecrf.densecrf as dcrf

    k, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.maximum(probs, 1e-5)).reshape(k, -1)))
    crf.addPairwiseGaussian(sxy=PARAMS["pos_xy_std"], compat=PARAMS["pos_weight"])
    crf.addPairwiseBilateral(
        sxy=PARAMS["bi_xy_std"], srgb=PARAMS["bi_rgb_std"], rgbim=image, compat=PARAMS["bi_weight"]
    )
    return np.asarray(crf.inference(iterations)).reshape(k, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--camvid", type=Path, default=Path(__file__).parents[2] / "shared/data/camvid"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results/dense_crf.json"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
    it, k = args.iterations, 11
    frames = load_frames(args.camvid, 8, k)
    image, probs = frames[0]
    h, w = image.shape[:2]

    results: dict = {
        "machine": machine(),
        "commit": commit(),
        "size": [w, h],
        "labels": k,
        "iterations": it,
    }
    results["params"] = PARAMS
    try:
        ref = pydensecrf_run(image, probs, it)
    except ImportError:
        ref = None
    ours = dense_crf(image, probs, it, **PARAMS)

    img_t = torch.from_numpy(image)[None]
    logp = torch.from_numpy(probs).clamp(min=1e-5).log().permute(1, 2, 0).reshape(-1, k)
    weights = [PARAMS["pos_weight"], PARAMS["bi_weight"]]
    gauss = _gaussian_lattice(1, h, w, PARAMS["pos_xy_std"], torch.float32, torch.device("cpu"))
    bilateral = _bilateral_lattice(img_t, PARAMS["bi_xy_std"], PARAMS["bi_rgb_std"], torch.float32)
    images = np.stack([f[0] for f in frames])
    batch = np.stack([f[1] for f in frames])
    fns = {
        "ours_s": lambda: dense_crf(image, probs, it, **PARAMS),
        # Lattice build = the bilateral lattice with its normalisation; the Gaussian one is
        # cached per image size (built once, ~0.1 s), as in every call after the first.
        "ours_lattice_build_s": lambda: _bilateral_lattice(
            img_t, PARAMS["bi_xy_std"], PARAMS["bi_rgb_std"], torch.float32
        ),
        "ours_iterations_s": lambda: mean_field([gauss, bilateral], logp, weights, it),
        "ours_gaussian_uncached_s": lambda: (
            _gaussian_lattice.cache_clear(),
            _gaussian_lattice(1, h, w, PARAMS["pos_xy_std"], torch.float32, torch.device("cpu")),
        ),
    }
    if ref is not None:
        fns["pydensecrf_s"] = lambda: pydensecrf_run(image, probs, it)
    results |= median_times(fns, args.repeats)

    # The machine may be shared: intra-op threads then wait on each other, so also time 1 thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    fns_1 = {"ours_1thread_s": fns["ours_s"]}
    if ref is not None:
        fns_1["pydensecrf_again_s"] = fns["pydensecrf_s"]
    one = median_times(fns_1, args.repeats)
    torch.set_num_threads(threads)
    results |= one

    results["batch"] = len(frames)
    fns_b = {"ours_batch_s": lambda: dense_crf(images, batch, it, **PARAMS)}
    if ref is not None:
        fns_b["pydensecrf_batch_s"] = lambda: [pydensecrf_run(i, p, it) for i, p in frames]
    results |= median_times(fns_b, max(3, args.repeats // 2))
    if ref is not None:
        results["label_agreement"] = float((ref.argmax(0) == ours.argmax(0)).mean())
        results["max_abs_diff"] = float(np.abs(ref - ours).max())
        results["ratio_ours_over_pydensecrf"] = results["ours_s"] / results["pydensecrf_s"]
        results["ratio_1thread_over_pydensecrf"] = (
            results["ours_1thread_s"] / results["pydensecrf_again_s"]
        )
        results["ratio_batch_over_pydensecrf"] = (
            results["ours_batch_s"] / results["pydensecrf_batch_s"]
        )

    print(f"machine: {describe(results['machine'])}")
    print(f"{w}x{h}, K={k}, {it} iterations, median of {args.repeats}")
    print(f"{'':32}{'seconds':>10}")
    for key in sorted(x for x in results if x.endswith("_s")):
        print(f"{key:32}{results[key]:10.4f}")
    for key in sorted(x for x in results if x.startswith(("ratio", "label", "max_abs"))):
        if key in results:
            print(f"{key:32}{results[key]:10.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
