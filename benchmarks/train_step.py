"""Time and memory of one training step: unary-only FCN vs piecewise CRF vs joint (mean-field) training.

    python benchmarks/train_step.py                 # cpu preset, 360x480, batch 1
    python benchmarks/train_step.py --preset paper --device cuda --batch 4

Rows, all on the same FeatMap-Net:
  (a) fcn        unary-only fully convolutional baseline (no relations)
  (b) piecewise  the full model trained piecewise (unary + pairwise likelihoods, no inference)
  (c) joint      back-propagation through `--iterations` mean-field updates (inference in training)
Each row runs in its own process so peak memory is its own. Prints a table with the ratios b/a and
c/b (this machine is noisy, ratios from one run are what to compare) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from piecewise_crf.config import PRESETS
from piecewise_crf.model import build_model

ROWS = ("fcn", "piecewise", "joint")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_row(row: str, args: argparse.Namespace, out: mp.Queue) -> None:
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = PRESETS[args.preset]()
    config.model.backbone_weights = None  # timing only: random weights cost the same
    config.model.num_classes = args.classes
    if row == "fcn":
        config.model.relations = ()
    model = build_model(config.model, max_edges=config.train.max_edges).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    h, w = args.size
    images = torch.rand(args.batch, 3, h, w, device=device)
    labels = torch.randint(0, args.classes, (args.batch, h, w), device=device)

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        if row == "joint":
            loss = model.mean_field_loss(images, labels, iterations=args.iterations)
        else:
            loss = model.loss(
                images,
                labels,
                pairwise_weight=config.train.pairwise_weight,
                edge_fraction=config.train.edge_fraction,
            ).total
        sync(device)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        t2 = time.perf_counter()
        return {"forward": t1 - t0, "backward": t2 - t1, "step": t2 - t0}

    # the features alone, forward and backward: the share of the step FeatMap-Net takes
    def featmap_step() -> float:
        t0 = time.perf_counter()
        model.featmap(images).sum().backward()
        sync(device)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [step() for _ in range(args.steps)]
    featmap = statistics.median(featmap_step() for _ in range(max(2, args.steps // 2)))
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    grid = model.grid_size(h, w)
    edges = sum(
        (grid[0] - abs(dy)) * (grid[1] - abs(dx))
        for r in model.relations
        for dy, dx in r.offsets(*grid)
        if abs(dy) < grid[0] and abs(dx) < grid[1]
    )
    out.put(
        {
            "row": row,
            "step_s": statistics.median(t["step"] for t in times),
            "forward_s": statistics.median(t["forward"] for t in times),
            "backward_s": statistics.median(t["backward"] for t in times),
            "featmap_fwd_bwd_s": featmap,
            "peak_mem_mb": peak_mb,
            "rss_before_timing_mb": base_rss / 1024,
            "grid": list(grid),
            "edges_per_image": edges,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--iterations", type=int, default=3, help="mean-field iterations in (c)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="benchmarks/results/train_step.json")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    results = {}
    for row in ROWS:
        queue = ctx.Queue()
        proc = ctx.Process(target=run_row, args=(row, args, queue))
        proc.start()
        results[row] = queue.get()
        proc.join()

    print(f"machine: {machine()}; device {args.device}")
    print(
        f"preset {args.preset}, {args.size[0]}x{args.size[1]}, batch {args.batch}, "
        f"K={args.classes}, grid {results['piecewise']['grid']}, "
        f"{results['piecewise']['edges_per_image']} edges/image"
    )
    header = f"{'row':<10} {'step s':>8} {'fwd s':>8} {'bwd s':>8} {'featmap s':>10} {'peak MB':>9}"
    print(header)
    for row in ROWS:
        r = results[row]
        print(
            f"{row:<10} {r['step_s']:>8.3f} {r['forward_s']:>8.3f} {r['backward_s']:>8.3f} "
            f"{r['featmap_fwd_bwd_s']:>10.3f} {r['peak_mem_mb']:>9.0f}"
        )
    ratios = {
        "piecewise/fcn": results["piecewise"]["step_s"] / results["fcn"]["step_s"],
        "joint/piecewise": results["joint"]["step_s"] / results["piecewise"]["step_s"],
    }
    print("ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"machine": machine(), "args": vars(args), "rows": results, "ratios": ratios}, indent=2
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
