"""Where the Predictor's "crf+dense" stage spends its time on one 480x360 CamVid frame.

Usage: python -m benchmarks.profile_crf [--checkpoint CKPT | --config camvid] [--frame PNG]
       [--threads 2] [--repeats 5] [--json benchmarks/results/profile_crf.json]

Each part runs on its own, on the inputs the stage hands it, repeats interleaved (load from
other jobs hits every part alike), medians:
  featmap         FeatMap-Net (backbone at both scales, block 6, pyramid pooling)
  unary_net       Unary-Net on the node features
  pairwise_maps   the Pairwise-Nets' first layer, once per image (W_a F + b, W_b F)
  pairwise_scores the K*K scores of every edge (`PairwiseNet.span_scores`; their (K-1)^2
                  interaction rows in "interaction" mode)
  mean_field      the crf's mean-field iterations on the node grid (`grid_numba`)
  upsample        grid marginals to image size
  dense_inputs    the dense CRF's inputs: uint8 RGB, the clamped log of the marginals
  dense_lattice   the bilateral lattice of the frame (features, build, normalisation)
  dense_iterations the dense mean-field on the cached Gaussian and that bilateral lattice
then the whole stage, and torch.profiler's operators of one run of it (self time). Every part
but mean_field does the same work whatever the weights; mean_field stops on the tolerance,
after few updates when the model is untrained (near-zero pairwise scores) and after most of them
when it is trained: profile a trained --checkpoint for the stage as users run it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

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
from permutocrf import bilateral_kernel, gaussian_kernel, mean_field, unary_scores
from piecewise_crf.data.io import open_rgb
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor, grid_marginals

FRAME = CAMVID / "train/0001TP_006690.png"


def stage_parts(predictor: Predictor, images: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The stage's parts, each a closure over the inputs the stage gives it."""
    model, crf, dense = predictor.model, predictor.crf, predictor.dense
    features = model.featmap(images)
    potentials = model(images, box_fraction=crf.box_fraction)
    relations = list(potentials.pairwise.values())
    interaction = crf.pairwise_mode == "interaction"
    scores = potentials.scores_for(crf.pairwise_mode)
    grid = grid_marginals(scores, crf)
    size = tuple(images.shape[-2:])
    probs = model.upsample(grid, size)
    rgb = (images.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8)
    h, w = size
    gauss = gaussian_kernel(h, w, dense.pos_xy_std)
    bilateral = bilateral_kernel(rgb[0].numpy(), dense.bi_xy_std, dense.bi_rgb_std)
    logp = unary_scores(probs[0].numpy()).reshape(probs.shape[1], -1)

    def dense_inputs() -> object:
        uint8 = (images.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8)
        return uint8, unary_scores(probs).contiguous()

    def dense_iterations() -> object:
        kernels, weights = [gauss, bilateral], [dense.pos_weight, dense.bi_weight]
        return mean_field(logp, kernels, weights, dense.iterations)

    return {
        "featmap": lambda: model.featmap(images),
        "unary_net": lambda: model.unary_net(features),
        "pairwise_maps": lambda: [r.net.first_layer_maps(features) for r in relations],
        "pairwise_scores": lambda: [
            r.net.span_scores(r.maps, chunk, interaction) for r in relations for chunk in r.chunks()
        ],
        "mean_field": lambda: grid_marginals(scores, crf),
        "upsample": lambda: model.upsample(grid, size),
        "dense_inputs": dense_inputs,
        "dense_lattice": lambda: bilateral_kernel(
            rgb[0].numpy(), dense.bi_xy_std, dense.bi_rgb_std
        ),
        "dense_iterations": dense_iterations,
        "stage": lambda: predictor(images, ("crf+dense",)),
    }


def operators(predictor: Predictor, images: torch.Tensor, top: int = 12) -> list[dict]:
    """torch.profiler's operators of one run of the stage, by self CPU time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        predictor(images, ("crf+dense",))
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1000, 1)}
        for e in events[:top]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--frame", type=Path, default=FRAME)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/profile_crf.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = build_predictor(args.checkpoint, args.config)
    rgb = np.asarray(open_rgb(args.frame))
    images = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).contiguous()
    with torch.no_grad():
        seconds = timed(stage_parts(predictor, images), args.repeats)
        ops = operators(predictor, images)
    info = machine()
    stage = seconds["stage"]
    print(f"crf+dense stage, one {rgb.shape[1]}x{rgb.shape[0]} frame: {describe(info)}")
    print(f"{'part':<18} {'ms':>7} {'of stage':>9}")
    for name, s in seconds.items():
        print(f"{name:<18} {1000 * s:>7.1f} {100 * s / stage:>8.0f}%")
    print(f"{'operator (torch.profiler)':<44} {'calls':>6} {'self ms':>8}")
    for op in ops:
        print(f"{op['op'][:44]:<44} {op['calls']:>6} {op['self_ms']:>8.1f}")
    record = {
        "commit": commit(),
        "machine": info,
        "model": model_name(args.checkpoint, args.config),
        "frame": args.frame.name,
        "size": [rgb.shape[1], rgb.shape[0]],
        "crf_iterations": predictor.crf.iterations,
        "crf_tolerance": predictor.crf.tolerance,
        "dense_iterations": predictor.dense.iterations,
        "seconds": {name: round(s, 4) for name, s in seconds.items()},
        "operators": ops,
    }
    write_json(record, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
