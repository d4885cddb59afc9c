"""Time and memory of one training step: unary-only FCN vs piecewise CRF vs joint (mean-field) training.

    python -m benchmarks.train_step                    # the cpu config, 360x480, batch 1
    python -m benchmarks.train_step --config paper --device cuda --batch 4
    python -m benchmarks.train_step --config camvid --size 160 224 --batch 4 \
        --freeze-layers 4                           # the CamVid recipe's steps, stem frozen or not

Rows, all on the same FeatMap-Net:
  (a) fcn        unary-only fully convolutional baseline (no relations)
  (b) piecewise  the full model trained piecewise (unary + pairwise likelihoods, no inference)
  (c) joint      back-propagation through `--iterations` mean-field updates (inference in training)
  (d) frozen     (b) with `train.freeze_layers` = `--freeze-layers` (only when that is > 0)
Timed steps of the rows are interleaved in one process (so load from elsewhere hits all alike);
peak memory comes from a separate process per row. Prints a table with the ratios b/a, c/b and
d/b (this machine is noisy: compare ratios from one run) and writes JSON.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch

from benchmarks.common import commit, describe, machine
from piecewise_crf.config import CRFConfig, load_config
from piecewise_crf.files import write_json
from piecewise_crf.model import build_model
from piecewise_crf.training.losses import mean_field_loss, piecewise_loss
from piecewise_crf.training.optim import freeze_layers

ROWS = ("fcn", "piecewise", "joint", "frozen")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Row:
    """One row's model, optimizer and inputs; `step()` runs and times one training step."""

    def __init__(self, row: str, args: argparse.Namespace) -> None:
        torch.manual_seed(0)
        self.row = row
        self.args = args
        self.device = torch.device(args.device)
        config = load_config(args.config)
        config.model.backbone_weights = None  # timing only: random weights cost the same
        config.model.num_classes = args.classes
        if row == "fcn":
            config.model.relations = ()
        self.config = config
        self.model = build_model(config.model, max_edges=config.train.max_edges)
        if row == "frozen":
            freeze_layers(self.model, args.freeze_layers)
        self.model.to(self.device).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        h, w = args.size
        self.images = torch.rand(args.batch, 3, h, w, device=self.device)
        self.labels = torch.randint(0, args.classes, (args.batch, h, w), device=self.device)

    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.row == "joint":
            crf = CRFConfig(iterations=self.args.iterations)
            loss = mean_field_loss(self.model, self.images, self.labels, crf)
        else:
            loss = piecewise_loss(self.model, self.images, self.labels, self.config.train).total
        sync(self.device)
        t1 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        sync(self.device)
        t2 = time.perf_counter()
        return {"forward": t1 - t0, "backward": t2 - t1, "step": t2 - t0}

    def grid_and_edges(self) -> tuple[tuple[int, int], int]:
        grid = self.model.grid_size(*self.args.size)
        edges = sum(
            (grid[0] - abs(dy)) * (grid[1] - abs(dx))
            for r in self.model.relations
            for dy, dx in r.offsets(*grid)
            if abs(dy) < grid[0] and abs(dx) < grid[1]
        )
        return grid, edges


def peak_memory(row: str, args: argparse.Namespace, out: mp.Queue) -> None:
    """Peak memory of two steps of one row, in a fresh process so the peak is its own (MB)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    r = Row(row, args)
    if r.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(r.device)
    for _ in range(2):
        r.step()
    if r.device.type == "cuda":
        out.put(torch.cuda.max_memory_allocated(r.device) / 2**20)
    else:
        out.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", default="cpu", help="the config to take the model from: a file or a name"
    )
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--iterations", type=int, default=3, help="mean-field iterations in (c)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--freeze-layers", type=int, default=0, help="adds row (d) when > 0")
    parser.add_argument("--json", default="benchmarks/results/train_step.json")
    args = parser.parse_args()
    row_names = ROWS if args.freeze_layers else ROWS[:3]

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = mp.get_context("spawn")
    peaks = {}
    for row in row_names:
        queue = ctx.Queue()
        proc = ctx.Process(target=peak_memory, args=(row, args, queue))
        proc.start()
        peaks[row] = queue.get()
        proc.join()

    # Steps of the three rows are interleaved so that load from elsewhere hits all of them alike.
    rows = {row: Row(row, args) for row in row_names}
    for _ in range(args.warmup):
        for r in rows.values():
            r.step()
    times: dict[str, list[dict[str, float]]] = {row: [] for row in row_names}
    for _ in range(args.steps):
        for row, r in rows.items():
            times[row].append(r.step())
    grid, edges = rows["piecewise"].grid_and_edges()
    results = {
        row: {
            "step_s": statistics.median(t["step"] for t in times[row]),
            "forward_s": statistics.median(t["forward"] for t in times[row]),
            "backward_s": statistics.median(t["backward"] for t in times[row]),
            "peak_mem_mb": peaks[row],
        }
        for row in row_names
    }

    print(f"machine: {describe(machine(args.device))}; device {args.device}")
    print(
        f"{args.config}, {args.size[0]}x{args.size[1]}, batch {args.batch}, "
        f"K={args.classes}, grid {grid}, {edges} edges/image"
    )
    header = f"{'row':<10} {'step s':>8} {'fwd s':>8} {'bwd s':>8} {'peak MB':>9}"
    print(header)
    for row in row_names:
        r = results[row]
        print(
            f"{row:<10} {r['step_s']:>8.3f} {r['forward_s']:>8.3f} {r['backward_s']:>8.3f} "
            f"{r['peak_mem_mb']:>9.0f}"
        )
    ratios = {
        "piecewise/fcn": results["piecewise"]["step_s"] / results["fcn"]["step_s"],
        "joint/piecewise": results["joint"]["step_s"] / results["piecewise"]["step_s"],
    }
    if "frozen" in results:
        ratios["frozen/piecewise"] = results["frozen"]["step_s"] / results["piecewise"]["step_s"]
    print("ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    record = {
        "machine": machine(args.device),
        "commit": commit(),
        "args": vars(args),
        "grid": grid,
        "edges_per_image": edges,
        "rows": results,
        "ratios": ratios,
    }
    write_json(record, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
