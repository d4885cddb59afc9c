"""How many mean-field updates a trained CRF takes under each `crf.tolerance`, and their time.

Usage: python -m benchmarks.mean_field_stop --checkpoint CKPT [--camvid DIR]
       [--split train_0001TP] [--frames 12] [--tolerances 0 0.001 0.003 0.01 0.03]
       [--threads 2] [--json benchmarks/results/mean_field_stop.json]

For every --frames'th frame of the split (spread over it), the pairwise scores are computed once
and mean-field is run with the checkpoint's CRF settings but each tolerance. The update count is
found independently of the stop: run 1, 2, ... updates with no tolerance, and take the first
whose update moved no marginal by more than the tolerance (the iterations' cap if none did).
Times are the mean-field alone, tolerances interleaved, medians over frames. The accuracy of a
tolerance is `piecewise-crf evaluate ... --set crf.tolerance=T` on the same split.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import CAMVID, commit, describe, machine
from piecewise_crf.data import CamVid
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor, grid_marginals


def updates_needed(steps: list[torch.Tensor], tolerance: float) -> int:
    """The updates mean-field runs under `tolerance`: `steps[n]` is the marginals after n
    updates (steps[0] the start), so update n moved them by |steps[n] - steps[n-1]|."""
    cap = len(steps) - 1
    if tolerance <= 0:
        return cap
    for n in range(1, cap + 1):
        if (steps[n] - steps[n - 1]).abs().max() <= tolerance:
            return n
    return cap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--split", default="train_0001TP")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0, 1e-3, 3e-3, 1e-2, 3e-2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/mean_field_stop.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    crf = predictor.crf
    dataset = CamVid(args.camvid, args.split)
    picked = sorted({i * len(dataset) // args.frames for i in range(args.frames)})
    counts: dict[float, list[int]] = {t: [] for t in args.tolerances}
    times: dict[float, list[float]] = {t: [] for t in args.tolerances}
    for index in picked:
        image = dataset[index][0][None]
        with torch.no_grad():
            potentials = predictor.model(image, box_fraction=crf.box_fraction)
            scores = potentials.scores_for(crf.pairwise_mode)
            steps = [
                grid_marginals(scores, replace(crf, iterations=n, tolerance=0.0))
                for n in range(crf.iterations + 1)
            ]
            for tolerance in args.tolerances:
                counts[tolerance].append(updates_needed(steps, tolerance))
            settings = {t: replace(crf, tolerance=t) for t in args.tolerances}
            grid_marginals(scores, crf)  # warm-up
            for tolerance, setting in settings.items():
                tic = time.perf_counter()
                grid_marginals(scores, setting)
                times[tolerance].append(time.perf_counter() - tic)
    rows = [
        {
            "tolerance": t,
            "updates_median": statistics.median(counts[t]),
            "updates_mean": round(statistics.fmean(counts[t]), 2),
            "updates_max": max(counts[t]),
            "mean_field_ms": round(1000 * statistics.median(times[t]), 1),
        }
        for t in args.tolerances
    ]
    info = machine()
    print(
        f"{args.checkpoint}, {len(picked)} frames of {args.split}, at most {crf.iterations} "
        f"updates: {describe(info)}"
    )
    print(f"{'tolerance':>9} {'updates (median / mean / max)':>30} {'mean-field ms':>14}")
    for r in rows:
        updates = f"{r['updates_median']:g} / {r['updates_mean']:.1f} / {r['updates_max']}"
        print(f"{r['tolerance']:>9g} {updates:>30} {r['mean_field_ms']:>14.1f}")
    record = {
        "commit": commit(),
        "machine": info,
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "frames": picked,
        "iterations": crf.iterations,
        "rows": rows,
    }
    write_json(record, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
