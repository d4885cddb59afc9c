"""Time our PyTorch dense CRF against pydensecrf on CamVid frames (480x360, K=11, 5 iterations).

Usage: python benchmarks/dense_crf.py [--camvid DIR] [--repeats N] [--out JSON]
Prints a table (median seconds), the time ratio and where our time goes (lattice build vs
mean-field iterations), a batch of 8 images, and the machine; writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from piecewise_crf.densecrf import dense_crf
from piecewise_crf.densecrf.dense import _features, _groups, mean_field
from piecewise_crf.densecrf.lattice import build

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


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def machine() -> dict:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            x.split(":", 1)[1].strip()
            for x in cpuinfo.read_text().split("\n")
            if x.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
    }


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

    results: dict = {"machine": machine(), "size": [w, h], "labels": k, "iterations": it}
    results["params"] = PARAMS
    try:
        ref = pydensecrf_run(image, probs, it)
        results["pydensecrf_s"] = median_time(
            lambda: pydensecrf_run(image, probs, it), args.repeats
        )
    except ImportError:
        ref = None
    ours = dense_crf(image, probs, it, **PARAMS)
    results["ours_s"] = median_time(lambda: dense_crf(image, probs, it, **PARAMS), args.repeats)

    img_t, logp = torch.from_numpy(image)[None], torch.from_numpy(probs).clamp(min=1e-5).log()
    logp = logp.permute(1, 2, 0).reshape(-1, k)
    feats = _features(
        img_t, PARAMS["pos_xy_std"], PARAMS["bi_xy_std"], PARAMS["bi_rgb_std"], torch.float32
    )
    group = _groups(1, h, w, img_t)
    weights = [PARAMS["pos_weight"], PARAMS["bi_weight"]]
    results["ours_lattice_build_s"] = median_time(lambda: build(feats, group), args.repeats)
    lattice = build(feats, group)
    setup = median_time(lambda: mean_field(lattice, logp, weights, 0), args.repeats)
    full = median_time(lambda: mean_field(lattice, logp, weights, it), args.repeats)
    results["ours_normalisation_s"] = setup
    results["ours_iterations_s"] = full - setup

    # The machine may be shared: intra-op threads then wait on each other, so also time 1 thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results["ours_1thread_s"] = median_time(
        lambda: dense_crf(image, probs, it, **PARAMS), args.repeats
    )
    torch.set_num_threads(threads)

    images = np.stack([f[0] for f in frames])
    batch = np.stack([f[1] for f in frames])
    results["batch"] = len(frames)
    results["ours_batch_s"] = median_time(
        lambda: dense_crf(images, batch, it, **PARAMS), max(3, args.repeats // 2)
    )
    if ref is not None:
        results["pydensecrf_batch_s"] = len(frames) * results["pydensecrf_s"]
        results["label_agreement"] = float((ref.argmax(0) == ours.argmax(0)).mean())
        results["max_abs_diff"] = float(np.abs(ref - ours).max())
        results["ratio_ours_over_pydensecrf"] = results["ours_s"] / results["pydensecrf_s"]

    print(f"machine: {results['machine']}")
    print(f"{w}x{h}, K={k}, {it} iterations, median of {args.repeats}")
    print(f"{'':32}{'seconds':>10}")
    for key in sorted(x for x in results if x.endswith("_s")):
        print(f"{key:32}{results[key]:10.4f}")
    for key in ("ratio_ours_over_pydensecrf", "label_agreement", "max_abs_diff"):
        if key in results:
            print(f"{key:32}{results[key]:10.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
