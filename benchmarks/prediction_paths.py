"""Two inference paths against what they replaced, side by side on one 480x360 CamVid frame.

Usage: python -m benchmarks.prediction_paths [--checkpoint CKPT | --config camvid] [--frame PNG]
       [--threads 2] [--repeats 15] [--json benchmarks/results/prediction_paths.json]

Rows, each a pair timed with repeats interleaved, medians:
  featmap        FeatMap-Net with MobileNetV2's eval BatchNorms folded into their convs
                 (`backbones.mobilenet.conv_bn`) against conv, BatchNorm and ReLU6 run one by
                 one (the reference patches the two forwards for the length of its run)
  crf scores     the pairwise scores and the crf's mean-field in interaction mode: the (K-1)^2
                 interaction rows (`GridPotentials.scores_for("interaction")`) against the
                 K*K scores centred inside mean-field (`GridPotentials.scores`)
with the largest difference of each pair's outputs. Time a trained --checkpoint: an untrained
CRF stops mean-field after a few updates.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

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
from piecewise_crf.backbones.mobilenet import ConvBNReLU, InvertedResidual
from piecewise_crf.data.io import open_rgb
from piecewise_crf.files import write_json
from piecewise_crf.inference import grid_marginals
from piecewise_crf.model import GridPotentials

SIDES = ("new", "reference")
FRAME = CAMVID / "val/0016E5_07959.png"


@contextmanager
def layer_by_layer():
    """MobileNetV2 as before the folding: every conv, BatchNorm and ReLU6 its own op."""

    def residual(self: InvertedResidual, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)

    with (
        mock.patch.object(ConvBNReLU, "forward", nn.Sequential.forward),
        mock.patch.object(InvertedResidual, "forward", residual),
    ):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--frame", type=Path, default=FRAME)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/prediction_paths.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = build_predictor(args.checkpoint, args.config)
    model, crf = predictor.model, predictor.crf
    rgb = np.asarray(open_rgb(args.frame))
    images = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255).contiguous()

    def layered_featmap() -> torch.Tensor:
        with layer_by_layer():
            return model.featmap(images)

    with torch.no_grad():
        potentials = model(images, box_fraction=crf.box_fraction)

        def crf_scores(mode: str | None) -> torch.Tensor:
            fresh = GridPotentials(potentials.unary, potentials.pairwise)  # nothing cached
            scores = fresh.scores if mode is None else fresh.scores_for(mode)
            return grid_marginals(scores, crf)

        pairs = {
            "featmap": (lambda: model.featmap(images), layered_featmap),
            "crf scores": (lambda: crf_scores("interaction"), lambda: crf_scores(None)),
        }
        parts = {
            f"{row} {side}": run
            for row, pair in pairs.items()
            for side, run in zip(SIDES, pair, strict=True)
        }
        seconds = timed(parts, args.repeats)
        gaps = {row: float((new() - old()).abs().max()) for row, (new, old) in pairs.items()}
    table = [
        {
            "row": row,
            "new_ms": round(1000 * seconds[f"{row} new"], 1),
            "reference_ms": round(1000 * seconds[f"{row} reference"], 1),
            "ratio": round(seconds[f"{row} new"] / seconds[f"{row} reference"], 3),
            "max_abs_diff": gaps[row],
        }
        for row in pairs
    ]
    info = machine()
    print(f"prediction paths, one {rgb.shape[1]}x{rgb.shape[0]} frame: {describe(info)}")
    print(f"{'row':<12} {'new ms':>8} {'reference ms':>13} {'ratio':>6} {'max |diff|':>11}")
    for r in table:
        print(
            f"{r['row']:<12} {r['new_ms']:>8.1f} {r['reference_ms']:>13.1f} {r['ratio']:>6.3f} "
            f"{r['max_abs_diff']:>11.2e}"
        )
    record = {
        "commit": commit(),
        "machine": info,
        "model": model_name(args.checkpoint, args.config),
        "frame": args.frame.name,
        "repeats": args.repeats,
        "crf": {"pairwise_mode": crf.pairwise_mode, "iterations": crf.iterations},
        "rows": table,
    }
    write_json(record, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
