"""Where one training step of a config's recipe spends its time, on real CamVid frames.

Usage: python -m benchmarks.profile_train [--config camvid] [--data-root DIR] [--threads 2]
       [--repeats 5] [--json benchmarks/results/profile_train.json]

One batch of the config's training set (its crops, batch size, frozen layers and class
balancing; backbone weights random: the time is the same), steps repeated, medians:
  data      the batch itself: decode, scale, flip, crop of `train.batch_size` frames, the work
            the DataLoader's workers do on the same cores beside the step
  featmap   FeatMap-Net's forward pass alone, with autograd recording
  forward   the piecewise loss: FeatMap-Net, Unary-Net, the Pairwise-Nets over every edge, NLLs
  backward  its gradients
  optimizer SGD's update
  step      zero_grad + forward + backward + update, as the training loop runs them
then torch.profiler's operators of one step (self time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import default_collate

from benchmarks.common import CAMVID, commit, describe, machine, timed
from piecewise_crf.config import load_config
from piecewise_crf.files import write_json
from piecewise_crf.model import build_model
from piecewise_crf.training.loop import training_set
from piecewise_crf.training.losses import piecewise_loss
from piecewise_crf.training.optim import freeze_layers, sgd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="camvid")
    parser.add_argument("--data-root", type=Path, default=CAMVID)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/profile_train.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.config)
    tc = config.train
    model = build_model(config.model, max_edges=tc.max_edges, load_weights=False).train()
    freeze_layers(model, tc.freeze_layers)
    optimizer = sgd(model, tc)
    dataset = training_set(config, root=args.data_root)
    # Class balancing changes the loss's weights, not its cost: uniform weights stand in.
    weights = torch.ones(config.model.num_classes) if tc.class_balance else None
    batch = [dataset[i] for i in range(tc.batch_size)]
    images, labels = default_collate(batch)

    def data() -> object:
        return default_collate([dataset[i] for i in range(tc.batch_size)])

    def loss() -> torch.Tensor:
        return piecewise_loss(model, images, labels, tc, weights=weights).total

    def backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()

    def step() -> None:
        backward()
        optimizer.step()

    def forward_backward() -> tuple[float, float]:
        tic = time.perf_counter()
        total = loss()
        mid = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        return mid - tic, time.perf_counter() - mid

    parts = {
        "data": data,
        "featmap": lambda: model.featmap(images),
        "step": step,
        "optimizer": optimizer.step,
    }
    seconds = timed(parts, args.repeats)
    split = [forward_backward() for _ in range(args.repeats)]
    seconds["forward"] = statistics.median(f for f, _ in split)
    seconds["backward"] = statistics.median(b for _, b in split)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [
        {"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1000, 1)}
        for e in events[:14]
    ]
    order = ["data", "featmap", "forward", "backward", "optimizer", "step"]
    seconds = {name: seconds[name] for name in order}
    info = machine()
    grid = model.grid_size(*images.shape[-2:])
    print(
        f"training step, {args.config}: batch {tc.batch_size} of {tuple(images.shape[-2:])} "
        f"crops, grid {grid}, freeze_layers {tc.freeze_layers}; {describe(info)}"
    )
    print(f"{'part':<10} {'ms':>8} {'of step':>8}")
    for name, s in seconds.items():
        print(f"{name:<10} {1000 * s:>8.1f} {100 * s / seconds['step']:>7.0f}%")
    print(f"{'operator (torch.profiler)':<50} {'calls':>6} {'self ms':>8}")
    for op in ops:
        print(f"{op['op'][:50]:<50} {op['calls']:>6} {op['self_ms']:>8.1f}")
    record = {
        "commit": commit(),
        "machine": info,
        "config": args.config,
        "batch": tc.batch_size,
        "crop": list(images.shape[-2:]),
        "grid": list(grid),
        "freeze_layers": tc.freeze_layers,
        "seconds": {name: round(s, 4) for name, s in seconds.items()},
        "operators": ops,
    }
    write_json(record, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
