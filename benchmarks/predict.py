"""Time the Predictor's stages on CamVid frames (480x360): one frame, a batch, and a split.

Usage: python -m benchmarks.predict [--checkpoint CKPT | --config camvid]
       [--camvid DIR] [--batch 4] [--images 16] [--threads 2] [--json OUT]

Rows, each the median of interleaved repeats in one run:
  forward     FeatMap-Net + Unary-Net (the plain network, no CRF): the reference
  unary       the unary stage (forward, softmax, upsampling)
  crf         forward + pairwise potentials + mean-field + upsampling
  crf+dense   all of that and the dense CRF
for one frame and for a batch of --batch frames (time per frame), then scoring --images val
frames through `evaluation.score` one frame at a time against batches of --batch. Timing does
not depend on the weights, so without --checkpoint the model of --config is built untrained.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import commit, describe, machine
from piecewise_crf.config import load_config
from piecewise_crf.data import CamVid
from piecewise_crf.evaluation import score
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor
from piecewise_crf.model import build_model

STAGES = ("unary", "crf", "crf+dense")


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: lazy initialisation, allocator
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        run()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a trained model (default: untrained)")
    parser.add_argument("--config", default="camvid", help="when no --checkpoint")
    parser.add_argument("--camvid", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--batch", type=int, default=4, help="frames per batch")
    parser.add_argument("--images", type=int, default=16, help="val frames scored per method")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/predict.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    else:
        config = load_config(args.config)
        model = build_model(config.model, load_weights=False)
        predictor = Predictor(model, crf=config.crf, dense=config.dense_crf, device="cpu")
    val = CamVid(args.camvid, "val")
    frames = torch.stack([val[i][0] for i in range(args.batch)])
    model = predictor.model

    def forward(images: torch.Tensor):
        with torch.no_grad():
            return model.unary_net(model.featmap(images))

    rows = []
    for count in (1, args.batch):
        images = frames[:count]
        timers = {"forward": lambda x=images: forward(x)}
        for stage in STAGES:
            timers[stage] = lambda x=images, s=stage: predictor(x, (s,))
        for name, run in timers.items():
            seconds = median_seconds(run, args.repeats) / count
            rows.append({"batch": count, "row": name, "seconds_per_frame": round(seconds, 4)})

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
    print(f"{'batch':>5}  {'row':<10} {'ms/frame':>9} {'x forward':>9}")
    for r in rows:
        base = next(
            x["seconds_per_frame"]
            for x in rows
            if x["batch"] == r["batch"] and x["row"] == "forward"
        )
        print(
            f"{r['batch']:>5}  {r['row']:<10} {1000 * r['seconds_per_frame']:>9.1f} "
            f"{r['seconds_per_frame'] / base:>9.2f}"
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
        "model": str(args.checkpoint or args.config),
        "crf": {k: getattr(predictor.crf, k) for k in ("pairwise_mode", "pairwise_scale")},
        "rows": rows,
        "score_seconds_per_frame": {str(b): round(t, 4) for b, t in split.items()},
        "batched_over_single": round(ratio, 3),
    }
    write_json(record, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
