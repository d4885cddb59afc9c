"""Mean-field with a unary temperature, scored on held-out frames: an upper bound, not a setting.

Usage: python -m experiments.mean_field_temperature --checkpoint CKPT --split train_0006R0
       [--camvid DIR] [--settings A,R,T ...] [--json OUT]

`crf.pairwise_scale` sets one number: how much the pairwise scores count against the unary. A
unary temperature adds a second, how sharp the marginals that mean-field passes around are:

    Q = grid_mean_field(A * unary, R * A * interaction scores, T)    (scores, higher = likelier)

so A = 1 is the library's mean-field at interaction weight R, and at any A the ratio of
pairwise to unary stays R. Every setting is scored from one forward pass per frame, at full
resolution, against the unary of the same pass. Chosen on the scored frames themselves, the best
setting's gain bounds what calibrating A could add.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import commit, describe, machine
from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.crf import grid_mean_field
from piecewise_crf.evaluation import open_split
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor
from piecewise_crf.metrics import ConfusionMatrix

# (A, R, T): the library's mean-field at four weights, then A < 1, then more iterations
SETTINGS = (
    *((1.0, r, 3) for r in (0.00023, 0.001, 0.003, 0.01)),
    *((0.5, r, 3) for r in (0.003, 0.01, 0.03)),
    *((0.25, r, 3) for r in (0.01, 0.03)),
    (1.0, 0.003, 10),
    (0.5, 0.01, 10),
)


def setting(text: str) -> tuple[float, float, int]:
    """'A,R,T' -> (unary scale, pairwise weight relative to it, iterations)."""
    try:
        a, r, t = text.split(",")
        parsed = float(a), float(r), int(t)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected A,R,T such as 0.5,0.003,3, got {text!r}"
        ) from error
    if parsed[0] <= 0 or parsed[1] < 0 or parsed[2] < 1:
        raise argparse.ArgumentTypeError(f"need A > 0, R >= 0, T >= 1, got {text!r}")
    return parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--camvid", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--split", required=True, help="held-out frames, e.g. train_0006R0")
    parser.add_argument("--settings", type=setting, nargs="+", default=list(SETTINGS))
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.json is not None and args.json.exists():
        parser.error(f"{args.json} exists; choose another --json path")

    ckpt = load_checkpoint(args.checkpoint)
    predictor = Predictor.from_checkpoint(ckpt, dense_enabled=False)
    data = open_split(ckpt.config, ckpt.classes, args.split, root=args.camvid)
    model, box = predictor.model, predictor.crf.box_fraction
    k, ignore = model.num_classes, getattr(data, "ignore_index", model.ignore_index)
    unary = ConfusionMatrix(k, ignore)
    matrices = {s: ConfusionMatrix(k, ignore) for s in args.settings}
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(len(data)):
            image, label = data[i]
            x, label = image[None].to(predictor.device), label[None]
            size = tuple(x.shape[-2:])
            potentials = model(x, box_fraction=box)
            scores = potentials.unary.float()
            unary.update(model.upsample(scores.softmax(1), size).argmax(1).cpu(), label)
            pairwise = [(o, z.float()) for _, o, z in potentials.scores.pairwise]
            for a, r, t in args.settings:  # interaction scores: centred in mean-field
                weights = [a * r] * len(pairwise)
                q = grid_mean_field(a * scores, pairwise, t, weights, centred=True)
                matrices[(a, r, t)].update(model.upsample(q, size).argmax(1).cpu(), label)
    seconds = time.perf_counter() - start

    base = unary.compute()["mean_iou"]
    rows = [
        {"A": a, "R": r, "T": t, "miou": m.compute()["mean_iou"]}
        for (a, r, t), m in matrices.items()
    ]
    info = machine(predictor.device)
    print(f"{args.checkpoint} on {args.split} ({len(data)} frames, box {box}), {seconds:.0f} s")
    print(f"machine: {describe(info)}")
    print(f"{'A':>5} {'R':>8} {'T':>3} {'mIoU':>6} {'- unary':>8}")
    print(f"{'unary':>18} {100 * base:6.2f}")
    for row in rows:
        gain = 100 * (row["miou"] - base)
        print(f"{row['A']:5g} {row['R']:8g} {row['T']:3d} {100 * row['miou']:6.2f} {gain:+8.2f}")
    if args.json is not None:
        record = {
            "checkpoint": str(args.checkpoint),
            "split": args.split,
            "frames": len(data),
            "box_fraction": box,
            "unary_miou": base,
            "settings": rows,
            "seconds": seconds,
            "machine": info,
            "commit": commit(),
        }
        write_json(record, args.json)


if __name__ == "__main__":
    main()
