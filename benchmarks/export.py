"""ONNX export of the crf stage: size, export time, agreement and speed against the Predictor.

Usage: python -m benchmarks.export [--checkpoint CKPT | --config camvid]
       [--camvid DIR] [--size 360 480] [--repeats 5] [--threads 2] [--json OUT]

Without --checkpoint the model of --config is built untrained and saved as a checkpoint in a
temporary folder (timing does not depend on the weights; agreement on untrained weights with a
small pairwise scale is mostly the unary's, tests/test_export.py checks a trained model). The
graph and the Predictor's "crf" stage run on the same CamVid val frames, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from benchmarks.common import CAMVID, add_model_arguments, commit, describe, machine
from piecewise_crf.checkpoint import Checkpoint, save_checkpoint
from piecewise_crf.config import load_config
from piecewise_crf.data import CamVid
from piecewise_crf.export import export_onnx
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor
from piecewise_crf.model import build_model


def untrained_checkpoint(source: str, folder: Path) -> Path:
    """The model of config `source`, untrained, as a checkpoint in `folder`."""
    config = load_config(source)
    model = build_model(config.model, load_weights=False)
    path = folder / "untrained.pt"
    palette = np.asarray(CamVid.palette).astype(int).tolist()
    save_checkpoint(Checkpoint(model.state_dict(), config, list(CamVid.classes), palette), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/export.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint or untrained_checkpoint(args.config, folder)
        exported = export_onnx(checkpoint, folder / "model.onnx", tuple(args.size))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(exported.path), options, ["CPUExecutionProvider"])
        predictor = Predictor.from_checkpoint(checkpoint, device="cpu")

        val = CamVid(args.camvid, "val")
        frames = torch.stack([val[i][0] for i in range(2)])
        frames = F.interpolate(frames, tuple(args.size), mode="bilinear", align_corners=False)
        graph = session.run(None, {"images": frames.numpy()})[0]
        ours = predictor(frames, ("crf",))["crf"].numpy()
        max_dq = float(np.abs(graph - ours).max())
        labels_equal = float((graph.argmax(1) == ours.argmax(1)).mean())

        one = frames[:1]
        runs = {
            "onnxruntime": lambda: session.run(None, {"images": one.numpy()}),
            "predictor": lambda: predictor(one, ("crf",)),
        }
        for run in runs.values():
            run()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved: the load changes over seconds
            for name, run in runs.items():
                tic = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - tic)
        seconds = {name: statistics.median(t) for name, t in times.items()}

    info = machine()
    ratio = seconds["onnxruntime"] / seconds["predictor"]
    print(f"ONNX export of the crf stage at {args.size[0]}x{args.size[1]}: {describe(info)}")
    print(f"graph {exported.bytes / 1e6:.1f} MB, exported in {exported.seconds:.1f} s")
    print(
        f"agreement on 2 CamVid val frames: max |dQ| {max_dq:.2e}, labels equal {labels_equal:.2%}"
    )
    print(
        f"crf stage, one frame: onnxruntime {seconds['onnxruntime']:.3f} s, Predictor "
        f"{seconds['predictor']:.3f} s (ratio {ratio:.2f})"
    )
    record = {
        "commit": commit(),
        "machine": info,
        "model": str(args.checkpoint or f"{args.config} (untrained)"),
        "size": args.size,
        "graph_mb": round(exported.bytes / 1e6, 2),
        "export_seconds": round(exported.seconds, 1),
        "max_abs_dq": max_dq,
        "labels_equal": labels_equal,
        "crf_stage_seconds": {k: round(v, 4) for k, v in seconds.items()},
        "onnxruntime_over_predictor": round(ratio, 3),
    }
    write_json(record, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
