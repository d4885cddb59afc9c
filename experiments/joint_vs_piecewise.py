"""Piecewise vs joint training, measured: the same initial model fine-tuned on the same budget.

    python -m experiments.joint_vs_piecewise --checkpoint runs/camvid/final.pt \
        --data-root ../shared/data/camvid --minutes 10 --threads 1

Methods, each from the checkpoint's weights, in a process of its own (so peak memory is its own):
  piecewise  the piecewise loss (unary + pairwise likelihoods; no inference in training)
  joint3     -log of the mean-field marginals after 3 iterations, back-propagated through them
  joint5     the same through 5 iterations
Joint training runs mean-field with the checkpoint's pairwise mode and scale (or
--pairwise-mode/--pairwise-scale), the inference that prediction uses. Each method trains for
--minutes of wall-clock time (lr decays with elapsed time), then val is scored with that same
inference (and 3 or T iterations for the joint rows).
Reports seconds per step, peak memory, steps done and val mIoU; writes JSON. The paper's claim is
the first two columns: piecewise steps cost no inference, so more of them fit the budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import commit, describe, machine
from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.devices import resolve_device
from piecewise_crf.evaluation import open_dataset, score, summarise
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor
from piecewise_crf.training.loop import training_set
from piecewise_crf.training.losses import class_weights, mean_field_loss, piecewise_loss
from piecewise_crf.training.optim import freeze_layers, lr_factor, sgd

METHODS = {"piecewise": 0, "joint3": 3, "joint5": 5}  # name -> mean-field iterations in training


def fine_tune(method: str, args: argparse.Namespace, out: mp.Queue) -> None:
    """Train one method for the budget, then score val; puts a result dict on `out`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    model, config = ckpt.build_model(str(args.checkpoint)), ckpt.config
    if args.pairwise_mode is not None:
        config.crf.pairwise_mode = args.pairwise_mode
    if args.pairwise_scale is not None:  # 0 is a valid scale (the unary alone)
        config.crf.pairwise_scale = args.pairwise_scale
    model.to(device).train()
    tc = config.train
    data = training_set(config, args.data_root)
    weights = class_weights(tc.class_balance, data, device)
    freeze_layers(model, tc.freeze_layers)
    optimizer = sgd(model, dataclasses.replace(tc, lr=tc.lr * args.lr_mult))
    joint = dataclasses.replace(config.crf, iterations=METHODS[method])
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=tc.batch_size,
        shuffle=True,
        num_workers=config.data.num_workers,
        generator=torch.Generator().manual_seed(0),
        drop_last=True,
    )
    iterations = METHODS[method]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    budget = 60 * args.minutes
    step_times: list[float] = []
    started = time.perf_counter()
    done = False
    while not done:
        for images, labels in loader:
            elapsed = time.perf_counter() - started
            if elapsed >= budget:
                done = True
                break
            factor = lr_factor(0, 1, tc.lr_power, elapsed, budget)  # the clock alone: no step count
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            tic = time.perf_counter()
            images, labels = images.to(device), labels.to(device)
            if iterations == 0:
                loss = piecewise_loss(model, images, labels, tc, weights=weights).total
            else:
                loss = mean_field_loss(model, images, labels, joint, weights=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - tic)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux

    val = open_dataset(config, config.data.val_split, root=args.data_root)
    sweep = {}
    if iterations and iterations != config.crf.iterations:
        sweep[f"crf T={iterations}"] = dataclasses.replace(config.crf, iterations=iterations)
    predictor = Predictor(model, crf=config.crf, sweep=sweep, amp=config.train.amp, device=device)
    indices = range(0, len(val), args.val_stride)
    matrices = score(predictor, val, indices=indices, stages=("unary", "crf", *sweep))
    scores = summarise(matrices, val.classes)
    out.put(
        {
            "steps": len(step_times),
            "pairwise": {"mode": config.crf.pairwise_mode, "scale": config.crf.pairwise_scale},
            "seconds_per_step": statistics.median(step_times[1:] or step_times),
            "peak_memory_mb": round(peak_mb),
            "val_mean_iou": {stage: scores[stage]["mean_iou"] for stage in scores},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the initial model")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per method")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--lr-mult", type=float, default=0.1, help="fine-tuning lr / train.lr")
    parser.add_argument("--pairwise-mode", choices=["raw", "interaction"], help="default: ckpt's")
    parser.add_argument("--pairwise-scale", type=float, help="default: the checkpoint's")
    parser.add_argument("--val-stride", type=int, default=1, help="score every Nth val image")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).parents[1] / "benchmarks" / "results" / "joint_vs_piecewise.json",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ctx = mp.get_context("spawn")
    results = {}
    for method in args.methods:
        queue = ctx.Queue()
        proc = ctx.Process(target=fine_tune, args=(method, args, queue))
        proc.start()
        results[method] = queue.get()
        proc.join()
        r = results[method]
        print(
            f"{method:<10} {r['seconds_per_step']:.2f} s/step  {r['steps']} steps  "
            f"{r['peak_memory_mb']} MB  val mIoU "
            + ", ".join(f"{k} {v:.3f}" for k, v in r["val_mean_iou"].items()),
            flush=True,
        )

    info = machine(resolve_device(args.device))
    print(f"machine: {describe(info)}; budget {args.minutes} min per method")
    print(f"{'method':<10} {'s/step':>8} {'steps':>7} {'peak MB':>8} {'val mIoU':>9}")
    for method, r in results.items():
        print(
            f"{method:<10} {r['seconds_per_step']:>8.2f} {r['steps']:>7} "
            f"{r['peak_memory_mb']:>8} {r['val_mean_iou']['crf']:>9.3f}"
        )
    if "piecewise" in results:
        base = results["piecewise"]["seconds_per_step"]
        for method in results:
            if method != "piecewise":
                ratio = results[method]["seconds_per_step"] / base
                print(f"{method}/piecewise step time: {ratio:.2f}")
    record = {
        "commit": commit(),
        "command": shlex.join(["python", *sys.argv]),
        "machine": info,
        "budget_minutes": args.minutes,
        "methods": results,
    }
    write_json(record, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
