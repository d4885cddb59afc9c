"""Time the Predictor's stages on CamVid frames (480x360): one frame, a batch, and a split.

Usage: python -m benchmarks.predict [--checkpoint CKPT | --config camvid]
       [--camvid DIR] [--batch 4] [--images 16] [--threads 2] [--json OUT]

Rows, each the median of interleaved repeats in one run:
  forward     FeatMap-Net + Unary-Net (the plain network, no CRF): the reference
  unary       the unary stage (forward, softmax, upsampling)
  crf         forward + pairwise potentials + mean-field + upsampling
  crf+dense   all of that and the dense CRF
  crf+dense, every iteration   the same with crf.tolerance=0 (no early stop of mean-field)
  plain       the reference a user without this project runs: the unary stage, then pydensecrf
              with the same dense-CRF settings (`plain` in ../shared/tools/latency.py)
for one frame and for a batch of --batch frames (time per frame), then scoring --images val
frames through `evaluation.score` one frame at a time against batches of --batch. The early
stop depends on the weights (a trained CRF takes more iterations than an untrained one, whose
pairwise scores are near zero): time a trained --checkpoint for figures worth quoting.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydensecrf.densecrf as dcrf
import torch

from benchmarks.common import (
    CAMVID,
    add_model_arguments,
    build_predictor,
    commit,
    describe,
    machine,
    model_name,
    timed,
)
from piecewise_crf.data import CamVid
from piecewise_crf.evaluation import score
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor
from piecewise_crf.settings import DenseCRFConfig

STAGES = ("unary", "crf", "crf+dense")


def pydensecrf_refine(images: torch.Tensor, probs: torch.Tensor, d: DenseCRFConfig) -> list:
    """pydensecrf on each image's marginals (K, H, W), the dense settings of `d`."""
    out = []
    for image, p in zip(images, probs, strict=True):
        rgb = np.ascontiguousarray((image.permute(1, 2, 0) * 255).round().byte().numpy())
        k, h, w = p.shape
        crf = dcrf.DenseCRF2D(w, h, k)
        energy = -np.log(np.clip(p.numpy(), 1e-8, 1)).reshape(k, -1)
        crf.setUnaryEnergy(np.ascontiguousarray(energy, np.float32))
        crf.addPairwiseGaussian(sxy=d.pos_xy_std, compat=d.pos_weight)
        crf.addPairwiseBilateral(sxy=d.bi_xy_std, srgb=d.bi_rgb_std, rgbim=rgb, compat=d.bi_weight)
        out.append(np.array(crf.inference(d.iterations)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--batch", type=int, default=4, help="frames per batch")
    parser.add_argument("--images", type=int, default=16, help="val frames scored per method")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/predict.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    predictor = build_predictor(args.checkpoint, args.config)
    val = CamVid(args.camvid, "val")
    frames = torch.stack([val[i][0] for i in range(args.batch)])
    model = predictor.model
    every = Predictor(
        model, crf=replace(predictor.crf, tolerance=0.0), dense=predictor.dense, device="cpu"
    )

    def forward(images: torch.Tensor):
        with torch.no_grad():
            return model.unary_net(model.featmap(images))

    rows = []
    for count in (1, args.batch):
        images = frames[:count]
        timers = {"forward": lambda x=images: forward(x)}
        for stage in STAGES:
            timers[stage] = lambda x=images, s=stage: predictor(x, (s,))
        timers["crf+dense, every iteration"] = lambda x=images: every(x, ("crf+dense",))
        timers["plain"] = lambda x=images: pydensecrf_refine(
            x, predictor(x, ("unary",))["unary"], predictor.dense
        )
        for name, seconds in timed(timers, args.repeats).items():  # repeats interleaved
            rows.append(
                {"batch": count, "row": name, "seconds_per_frame": round(seconds / count, 4)}
            )

    indices = list(range(min(args.images, len(val))))
    split = {}
    for batch_size in (1, args.batch, 1, args.batch):  # interleaved: load changes over minutes
        tic = time.perf_counter()
        score(predictor, val, indices=indices, stages=STAGES, batch_size=batch_size)
        split.setdefault(batch_size, []).append((time.perf_counter() - tic) / len(indices))
    split = {b: min(t) for b, t in split.items()}

    info = machine()
    print(f"Predictor stages on CamVid 480x360 frames: {describe(info)}")
    forward_1 = rows[0]["seconds_per_frame"]  # batch 1, forward
    print(f"{'batch':>5}  {'row':<28} {'ms/frame':>9} {'x forward':>9} {'x plain':>8}")
    for r in rows:
        same = {x["row"]: x["seconds_per_frame"] for x in rows if x["batch"] == r["batch"]}
        r["over_plain"] = round(r["seconds_per_frame"] / same["plain"], 3)
        print(
            f"{r['batch']:>5}  {r['row']:<28} {1000 * r['seconds_per_frame']:>9.1f} "
            f"{r['seconds_per_frame'] / same['forward']:>9.2f} {r['over_plain']:>8.2f}"
        )
    ratio = split[args.batch] / split[1]
    print(
        f"scoring {len(indices)} val frames, all stages: {1000 * split[1]:.0f} ms/frame one at a "
        f"time, {1000 * split[args.batch]:.0f} ms/frame in batches of {args.batch} "
        f"(ratio {ratio:.2f}); forward alone, one frame: {1000 * forward_1:.0f} ms"
    )
    record = {
        "commit": commit(),
        "machine": info,
        "model": model_name(args.checkpoint, args.config),
        "crf": {
            k: getattr(predictor.crf, k)
            for k in ("pairwise_mode", "pairwise_scale", "iterations", "tolerance")
        },
        "dense_iterations": predictor.dense.iterations,
        "rows": rows,
        "score_seconds_per_frame": {str(b): round(t, 4) for b, t in split.items()},
        "batched_over_single": round(ratio, 3),
    }
    write_json(record, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
