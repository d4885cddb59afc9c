"""FeatMap-Net's CPU memory format, channels_last (the default) against (B, C, H, W), side by side.

Usage: python -m benchmarks.layout [--config camvid] [--frame PNG] [--threads 2] [--repeats 7]
       [--json benchmarks/results/layout.json]

Rows, each timed for both models (same weights, random: the time is the same), repeats
interleaved, medians:
  featmap      FeatMap-Net on one 480x360 frame, no autograd
  unary        the Predictor's unary stage on that frame
  crf+dense    the Predictor's full model on that frame
  train step   one step of the config's recipe: `train.batch_size` random crops of
               `data.crop_size`, its frozen layers, the piecewise loss, backward, SGD
The ratio is channels_last / (B, C, H, W). Also the largest difference of the two models'
node features and crf+dense marginals on the frame.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import CAMVID, commit, describe, machine
from piecewise_crf.config import load_config
from piecewise_crf.data.io import open_rgb
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor
from piecewise_crf.model import build_model
from piecewise_crf.training.losses import piecewise_loss
from piecewise_crf.training.optim import freeze_layers, sgd

FRAME = CAMVID / "train/0001TP_006690.png"
LAYOUTS = {"channels_last": True, "nchw": False}


def rows(config, channels_last: bool, state: dict, frame: torch.Tensor) -> dict[str, Callable]:
    """The timed rows for one layout: closures over a model with `state`'s weights."""
    tc = config.train
    model = build_model(config.model, load_weights=False, max_edges=tc.max_edges,
                        channels_last=channels_last)  # fmt: skip
    model.load_state_dict(state)
    predictor = Predictor(model, crf=config.crf, dense=config.dense_crf, device="cpu")
    learner = build_model(config.model, load_weights=False, max_edges=tc.max_edges,
                          channels_last=channels_last)  # fmt: skip
    learner.load_state_dict(state)
    learner.train()
    freeze_layers(learner, tc.freeze_layers)
    optimizer = sgd(learner, tc)
    generator = torch.Generator().manual_seed(0)
    crops = torch.rand(tc.batch_size, 3, *config.data.crop_size, generator=generator)
    k = config.model.num_classes
    labels = torch.randint(0, k, (tc.batch_size, *config.data.crop_size), generator=generator)

    def featmap() -> object:
        with torch.no_grad():
            return predictor.model.featmap(frame)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        piecewise_loss(learner, crops, labels, tc).total.backward()
        optimizer.step()

    return {
        "featmap": featmap,
        "unary": lambda: predictor(frame, ("unary",)),
        "crf+dense": lambda: predictor(frame, ("crf+dense",)),
        "train step": train_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="camvid")
    parser.add_argument("--frame", type=Path, default=FRAME)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/layout.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.config)
    state = build_model(config.model, load_weights=False).state_dict()
    rgb = np.asarray(open_rgb(args.frame))
    frame = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255).contiguous()
    runs = {name: rows(config, flag, state, frame) for name, flag in LAYOUTS.items()}
    outputs = {
        name: (run["featmap"](), run["crf+dense"]()["crf+dense"]) for name, run in runs.items()
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for row in runs["nchw"]:
            for name, run in runs.items():
                tic = time.perf_counter()
                run[row]()
                times.setdefault((row, name), []).append(time.perf_counter() - tic)
    med = {key: statistics.median(t) for key, t in times.items()}
    (f_cl, q_cl), (f_nchw, q_nchw) = outputs["channels_last"], outputs["nchw"]
    table = [
        {
            "row": row,
            "channels_last_ms": round(1000 * med[(row, "channels_last")], 1),
            "nchw_ms": round(1000 * med[(row, "nchw")], 1),
            "ratio": round(med[(row, "channels_last")] / med[(row, "nchw")], 2),
        }
        for row in runs["nchw"]
    ]
    info = machine()
    print(f"FeatMap-Net layout, configs/{args.config}.yaml: {describe(info)}")
    print(f"{'row':<12} {'channels_last ms':>17} {'nchw ms':>9} {'ratio':>6}")
    for r in table:
        print(
            f"{r['row']:<12} {r['channels_last_ms']:>17.1f} {r['nchw_ms']:>9.1f} {r['ratio']:>6.2f}"
        )
    differences = {
        "features": float((f_cl - f_nchw).abs().max()),
        "crf+dense marginals": float(np.abs(np.asarray(q_cl) - np.asarray(q_nchw)).max()),
    }
    print("largest difference: " + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()))
    record = {
        "commit": commit(),
        "machine": info,
        "config": args.config,
        "frame": args.frame.name,
        "size": [rgb.shape[1], rgb.shape[0]],
        "batch": config.train.batch_size,
        "crop": list(config.data.crop_size),
        "repeats": args.repeats,
        "rows": table,
        "largest_difference": differences,
    }
    write_json(record, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
