"""Time the drop-in against pydensecrf where vertex codes overflow int64: a 480x360 CamVid
frame as an 8-channel image (RGB, the RGB 3 px to the right, grey, grey 3 px down), so
``create_pairwise_bilateral`` gives 10-D features; K=11, 5 iterations, beside the usual Gaussian.

Usage: python -m benchmarks.dense_crf_dims [--camvid DIR] [--repeats N] [--threads T]
Prints the median seconds of building the 10-D kernel and of mean-field, per implementation
(repeats interleaved), the labels' agreement with pydensecrf and the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import permutocrf.compat as compat
from benchmarks.common import CAMVID, describe, machine, timed
from benchmarks.dense_crf import load_frames


def eight_channels(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float32)
    grey = rgb.mean(2, keepdims=True)
    return np.concatenate([rgb, np.roll(rgb, 3, 1), grey, np.roll(grey, 3, 0)], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import pydensecrf.densecrf as ref

    image, probs = load_frames(args.camvid, 1, 11)[0]
    k, h, w = probs.shape
    unary = compat.unary_from_softmax(probs)
    feats = compat.create_pairwise_bilateral((80, 80), (13,) * 8, eight_channels(image), chdim=2)
    runs = {
        "pydensecrf": (ref, {}),
        "numba": (compat, {"backend": "numba"}),
        "torch": (compat, {"backend": "torch"}),
    }
    seconds = {}

    def crf(name: str):
        module, kwargs = runs[name]
        c = module.DenseCRF2D(w, h, k, **kwargs)
        c.setUnaryEnergy(unary)
        c.addPairwiseGaussian(sxy=3, compat=3)
        start = time.perf_counter()
        c.addPairwiseEnergy(feats, compat=10)
        seconds.setdefault(name, []).append(time.perf_counter() - start)
        return c

    built = {name: crf(name) for name in runs}
    inference = timed({n: lambda n=n: built[n].inference(5) for n in runs}, args.repeats)
    for _ in range(args.repeats - 1):
        for name in runs:
            crf(name)
    q_ref = np.asarray(built["pydensecrf"].inference(5))
    print(f"{feats.shape[0]}-D features, {h}x{w}, K={k}, 5 iterations")
    for name in runs:
        q = np.asarray(built[name].inference(5))
        agree = (q.argmax(0) == q_ref.argmax(0)).mean()
        print(
            f"{name}: kernel {np.median(seconds[name]):.3f} s, mean-field {inference[name]:.3f} s,"
            f" labels equal {100 * agree:.2f} %, max |dQ| {np.abs(q - q_ref).max():.1e}"
        )
    print("machine:", describe(machine()))


if __name__ == "__main__":
    main()
