"""The dense CRF on a GPU (torch lattices) against our numba CPU path and pydensecrf, in one run.

Usage: python -m benchmarks.dense_crf_cuda [--camvid DIR] [--device cuda] [--repeats N] [--out JSON]

A CamVid frame (480x360, K=11) with noisy softmax unaries (`dense_crf.load_frames`) at the three
parameter sets of `dense_crf_params`; a batch of 8 frames; `DenseCRFLayer`'s forward and backward
(batch 4, the CRF-as-RNN use); image sizes up to 8 megapixels (against numba only: `dense_crf`
has pydensecrf's sizes). Each row times the device and the CPU references in the same run,
repeats interleaved, medians, the device's times up to its synchronisation. The parameter-set
and size rows time what a numpy user pays, the copies to the device and of the marginals back
included; the batch and layer rows start from tensors already there and keep the result there.
pydensecrf rows are left out where it is not installed. Prints tables and the machine; writes
JSON.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import CAMVID, commit, describe, machine, timed
from benchmarks.dense_crf import api_run, load_frames, resized
from benchmarks.dense_crf_params import parameter_sets
from permutocrf import DenseCRFLayer, dense_crf
from piecewise_crf.files import write_json

MEGAPIXELS = (0.17, 0.5, 1.0, 2.0, 4.0, 8.0)


def synced(device: torch.device, run: Callable[[], object]) -> Callable[[], object]:
    """``run`` followed by waiting for the device, so that a timer sees the whole of it."""

    def call() -> object:
        out = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return call


def on_device(image: np.ndarray, probs: np.ndarray, device: torch.device, params: dict, it: int):
    """``dense_crf`` on ``device`` as a numpy user calls it: copies there and back included."""
    img = torch.from_numpy(image).to(device)
    p = torch.from_numpy(probs).to(device)
    return dense_crf(img, p, iterations=it, **params).cpu().numpy()


def pydensecrf_module():
    try:
        import pydensecrf.densecrf as pydensecrf
    except ImportError:
        return None
    return pydensecrf


def versus(image, probs, device, params, it, repeats, reference: bool = True) -> dict:
    """Median seconds on the device, of our numba path and (``reference``) of pydensecrf;
    ratios, agreement."""
    parts = {
        "device_s": synced(device, lambda: on_device(image, probs, device, params, it)),
        "numba_s": lambda: dense_crf(image, probs, iterations=it, **params),
    }
    pydensecrf = pydensecrf_module() if reference else None
    if pydensecrf is not None:
        parts["pydensecrf_s"] = lambda: api_run(pydensecrf, image, probs, it, params)
    t = timed(parts, repeats)
    ours = on_device(image, probs, device, params, it)
    numba = dense_crf(image, probs, iterations=it, **params)
    row = t | {
        "ratio_numba": t["device_s"] / t["numba_s"],
        "max_abs_vs_numba": float(np.abs(ours - numba).max()),
        "label_agreement_numba": float((ours.argmax(0) == numba.argmax(0)).mean()),
    }
    if pydensecrf is not None:
        ref = api_run(pydensecrf, image, probs, it, params)
        row["ratio_pydensecrf"] = t["device_s"] / t["pydensecrf_s"]
        row["label_agreement_pydensecrf"] = float((ours.argmax(0) == ref.argmax(0)).mean())
    return row


def batch_row(frames, device, params, it, repeats) -> dict:
    """A batch of frames in one call on the device (one lattice per kernel for the batch)
    against the numba path's batch call; seconds per frame."""
    images = np.stack([f[0] for f in frames])
    probs = np.stack([f[1] for f in frames])
    img, p = torch.from_numpy(images).to(device), torch.from_numpy(probs).to(device)
    t = timed(
        {
            "device_s": synced(device, lambda: dense_crf(img, p, iterations=it, **params)),
            "numba_s": lambda: dense_crf(images, probs, iterations=it, **params),
        },
        repeats,
    )
    n = len(frames)
    return {"batch": n} | {f"{key[:-2]}_per_frame_s": v / n for key, v in t.items()}


def layer_row(frames, device, params, it, repeats) -> dict:
    """``DenseCRFLayer`` (batch of frames, learnable weights): forward, forward + backward."""
    layer = DenseCRFLayer(11, it, **params).to(device)
    images = torch.from_numpy(np.stack([f[0] for f in frames])).to(device)
    scores = torch.from_numpy(np.log(np.stack([f[1] for f in frames]))).to(device)
    scores.requires_grad_(True)

    def forward_backward() -> None:
        layer(images, scores).square().sum().backward()

    t = timed(
        {
            "forward_s": synced(device, lambda: layer(images, scores)),
            "forward_backward_s": synced(device, forward_backward),
        },
        repeats,
    )
    return (
        {"batch": len(frames)}
        | t
        | {"backward_over_forward": t["forward_backward_s"] / t["forward_s"] - 1}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results/dense_crf_cuda.json"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    frames = load_frames(args.camvid, 8, 11)
    image, probs = frames[0]
    sets = parameter_sets()
    rows = [
        {"set": name, "iterations": it} | versus(image, probs, device, params, it, args.repeats)
        for name, (params, it) in sets.items()
    ]
    recipe, it = sets["CamVid recipe"]
    sizes = []
    for mp in MEGAPIXELS:
        img, p = resized(image, probs, mp)
        row = {"megapixels": mp, "size": [img.shape[1], img.shape[0]]}
        sizes.append(row | versus(img, p, device, recipe, it, max(3, args.repeats // 2), False))
    results = {
        "machine": machine(device),
        "commit": commit(),
        "size": [image.shape[1], image.shape[0]],
        "labels": probs.shape[0],
        "parameter_sets": rows,
        "batch": batch_row(frames, device, recipe, it, args.repeats),
        "layer": layer_row(frames[:4], device, recipe, it, args.repeats),
        "sizes": sizes,
    }
    print(f"machine: {describe(results['machine'])}")
    print(f"{image.shape[1]}x{image.shape[0]}, K=11; {args.device} against numba on the CPU")
    head = (
        f"{'':<22}{'device s':>9}{'numba s':>9}{'pydensecrf s':>13}{'/numba':>8}{'/pydensecrf':>12}"
    )
    print(head)
    labels = [r["set"] for r in rows] + [f"{s['size'][0]}x{s['size'][1]} recipe" for s in sizes]
    for name, r in zip(labels, rows + sizes, strict=True):
        ref = f"{r['pydensecrf_s']:13.4f}" if "pydensecrf_s" in r else f"{'-':>13}"
        ratio = f"{r['ratio_pydensecrf']:12.3f}" if "ratio_pydensecrf" in r else f"{'-':>12}"
        print(
            f"{name:<22}{r['device_s']:9.4f}{r['numba_s']:9.4f}{ref}{r['ratio_numba']:8.3f}{ratio}"
        )
    b, lay = results["batch"], results["layer"]
    print(
        f"batch of {b['batch']}, recipe: {b['device_per_frame_s']:.4f} s per frame on the device, "
        f"{b['numba_per_frame_s']:.4f} numba"
    )
    print(
        f"DenseCRFLayer, batch {lay['batch']}: forward {lay['forward_s']:.4f} s, forward + "
        f"backward {lay['forward_backward_s']:.4f} s"
    )
    write_json(results, args.out)


if __name__ == "__main__":
    main()
