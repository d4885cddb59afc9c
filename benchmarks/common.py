"""What every benchmark records beside its numbers: the machine and the commit they came from."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from piecewise_crf.config import load_config
from piecewise_crf.inference import Predictor
from piecewise_crf.model import build_model

CAMVID = Path(__file__).parents[2] / "shared/data/camvid"
"""The CamVid copy beside the repository, the benchmarks' default data."""


def machine(device: str | torch.device = "cpu") -> dict:
    """CPU model, cores, torch threads and version, load average, and the GPU when one is used."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    device = torch.device(device)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(info: dict) -> str:
    text = f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads"
    text += f", torch {info['torch']}, load {info['load_average'][0]:.1f}"
    return text + (f", GPU {info['gpu']}" if "gpu" in info else "")


def commit() -> str:
    """HEAD's short hash, with "+changes" when the tracked files other than the result files
    differ from it (a run of several benchmarks rewrites those as it goes)."""
    root = Path(__file__).parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git(
        "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"
    )
    return head + ("+changes" if changed else "")


def timed(parts: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each part, repeats interleaved, after one warm-up run each."""
    for run in parts.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(repeats):
        for name, run in parts.items():
            tic = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(t) for name, t in times.items()}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint and --config, the two ways `build_predictor` takes a model."""
    parser.add_argument("--checkpoint", type=Path, help="a trained model (default: untrained)")
    parser.add_argument("--config", default="camvid", help="when no --checkpoint")


def build_predictor(checkpoint: Path | None, config: str) -> Predictor:
    """A trained checkpoint's Predictor on CPU, or without one the `config`'s model untrained
    (every stage does the same work, but mean-field stops sooner on near-zero pairwise scores)."""
    if checkpoint:
        return Predictor.from_checkpoint(checkpoint, device="cpu")
    cfg = load_config(config)
    model = build_model(cfg.model, load_weights=False)
    return Predictor(model, crf=cfg.crf, dense=cfg.dense_crf, device="cpu")


def model_name(checkpoint: Path | None, config: str) -> str:
    """How the result files name the model `build_predictor` built."""
    return str(checkpoint or f"configs/{config}.yaml (untrained weights)")
