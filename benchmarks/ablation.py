"""The paper's ablation on CamVid: each row adds one component, each trains on the same budget.

    python benchmarks/ablation.py --row fcn --data-root ../shared/data/camvid \
        --weights ../shared/weights/mobilenet_v2_imagenet.pth --minutes 20
    python benchmarks/ablation.py --table          # the README table from the committed JSON

Rows, all from configs/camvid.yaml:
  fcn         one input scale (the recipe's largest), no pyramid pooling, unary only
  pool        + sliding pyramid pooling
  multiscale  + the recipe's second input scale
  pairwise    + CNN pairwise potentials trained piecewise, scored after mean-field; this row also
              writes "dense": the same model with dense-CRF refinement (nothing more to train)
Each row trains for --minutes of training steps on this machine (train.minutes: the poly lr
follows elapsed time), so slower rows take fewer steps; evaluation is timed apart. The pairwise
row sweeps the pairwise mode and scale on val, and refines the best of them with the dense CRF.
There is no held-out split beside val here, so that choice is made and scored on the same images
(stated in the JSON).
Each row writes benchmarks/results/ablation_<row>.json with the commit, command and machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from common import commit, describe, machine

from piecewise_crf.config import load_config
from piecewise_crf.evaluate import score, summarise, sweep_settings
from piecewise_crf.inference import Predictor
from piecewise_crf.runtime import open_dataset
from piecewise_crf.train import train, training_set

ROWS = ("fcn", "pool", "multiscale", "pairwise", "dense")
TRAINED = ROWS[:-1]
RESULTS = Path(__file__).parent / "results"
SWEEP_SCALES = (0.001, 0.003, 0.01, 0.1, 1.0)
METRICS = ("mean_iou", "pixel_accuracy", "mean_accuracy")


def row_config(row: str, args: argparse.Namespace):
    config = load_config(args.config, args.set)
    m = config.model
    m.backbone_weights = args.weights
    if row in ("fcn", "pool"):
        m.scales = (max(m.scales),)
    if row == "fcn":
        m.pool_windows = ()
    if row != "pairwise":
        m.relations = ()
        m.custom_relations = {}
    return config


def prediction_seconds(predictor: Predictor, val, stages, count: int = 5) -> float:
    """Median seconds per val image for the given stages (after one warm-up image)."""
    times = []
    for i in range(count + 1):
        image = val[i][0]
        tic = time.perf_counter()
        predictor(image[None], stages)
        times.append(time.perf_counter() - tic)
    return statistics.median(times[1:])


def run_row(row: str, args: argparse.Namespace) -> list[Path]:
    config = row_config(row, args)
    config.train.minutes = args.minutes
    config.train.epochs = 10**6  # the budget ends training
    # no validation inside training: the row is scored once, below
    training = dataclasses.replace(config, data=dataclasses.replace(config.data, val_split=""))
    tic = time.perf_counter()
    result = train(training, args.out / row, data_root=args.data_root, overwrite=True)
    train_s = time.perf_counter() - tic
    model = result.model.eval()
    steps = result.history[-1]["step"]
    per_epoch = math.ceil(len(training_set(config, args.data_root)) / config.train.batch_size)
    val = open_dataset(
        config.data.dataset,
        args.data_root,
        config.data.val_split,
        num_classes=config.model.num_classes,
    )

    common = {
        "commit": commit(),
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine(),
        "budget_minutes": args.minutes,
        "steps": steps,
        "epochs": round(steps / per_epoch, 1),
        "train_seconds": round(train_s, 1),
        "model": {
            "backbone": config.model.backbone,
            "scales": list(config.model.scales),
            "pool_windows": list(config.model.pool_windows),
            "relations": list(config.model.relations),
            "box_fraction": config.model.box_fraction,
            "prediction_box_fraction": config.crf.box_fraction,
        },
    }
    if row != "pairwise":
        predictor = Predictor(model, crf=config.crf, amp=config.train.amp)
        matrices = score(predictor, val, stages=("unary",), progress=True)
        metrics = summarise(matrices, val.classes)["unary"]
        seconds = prediction_seconds(predictor, val, ("unary",))
        return [write_row(row, common, metrics, seconds, stage="unary", folder=args.results)]

    sweep = sweep_settings(config.crf, SWEEP_SCALES, ("raw", "interaction"))
    predictor = Predictor(model, crf=config.crf, sweep=sweep, amp=config.train.amp)
    matrices = score(predictor, val, stages=("unary", *sweep), progress=True)
    sweep_results = summarise(matrices, val.classes)
    unary = sweep_results.pop("unary")
    name = max(sweep_results, key=lambda s: sweep_results[s]["mean_iou"])
    chosen = sweep[name]
    predictor = Predictor(model, crf=chosen, dense=config.dense_crf, amp=config.train.amp)
    refined = summarise(
        score(predictor, val, stages=("crf", "crf+dense"), progress=True), val.classes
    )
    common["unary_of_this_model"] = {k: unary[k] for k in METRICS}
    common["sweep"] = {
        s: {
            "mode": c.pairwise_mode,
            "scale": c.pairwise_scale,
            "mean_iou": sweep_results[s]["mean_iou"],
        }
        for s, c in sweep.items()
    }
    common["chosen"] = {
        "mode": chosen.pairwise_mode,
        "scale": chosen.pairwise_scale,
        "chosen_on": "val",
    }
    crf_seconds = prediction_seconds(predictor, val, ("crf",))
    dense_seconds = prediction_seconds(predictor, val, ("crf+dense",))
    return [
        write_row("pairwise", common, refined["crf"], crf_seconds, stage=name, folder=args.results),
        write_row(
            "dense",
            common,
            refined["crf+dense"],
            dense_seconds,
            stage="crf+dense",
            folder=args.results,
        ),
    ]


def write_row(
    row: str, common: dict, metrics: dict, seconds: float, *, stage: str, folder: Path
) -> Path:
    record = {
        "row": row,
        "stage": stage,
        **{k: metrics[k] for k in METRICS},
        "per_class_iou": dict(zip(metrics["classes"], metrics["per_class_iou"], strict=True)),
        "predict_seconds_per_image": round(seconds, 3),
        **common,
    }
    path = folder / f"ablation_{row}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{row:<11} mIoU {record['mean_iou']:.3f}  pixel acc {record['pixel_accuracy']:.3f}  "
        f"mean acc {record['mean_accuracy']:.3f}  {seconds:.2f} s/image  -> {path}"
    )
    return path


def table(folder: Path) -> str:
    """Markdown table of the rows measured so far (a missing row says so)."""
    lines = [
        "| row | mIoU | pixel acc. | mean acc. | epochs | train min | predict s/image | commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        path = folder / f"ablation_{row}.json"
        if not path.exists():
            lines.append(f"| {row} | not run yet | | | | | | |")
            continue
        r = json.loads(path.read_text())
        lines.append(
            f"| {row} | {100 * r['mean_iou']:.1f} | {100 * r['pixel_accuracy']:.1f} | "
            f"{100 * r['mean_accuracy']:.1f} | {r['epochs']} | {r['train_seconds'] / 60:.0f} | "
            f"{r['predict_seconds_per_image']:.2f} | {r['commit']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--row", choices=TRAINED, help="the row to train and score")
    parser.add_argument("--table", action="store_true", help="print the table of measured rows")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--weights", help="MobileNetV2 ImageNet state dict (or 'hed' for VGG-16)")
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs/camvid.yaml"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--minutes", type=float, default=20.0, help="budget per row")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="run folders")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON rows")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.table:
        print(table(args.results))
        return
    if args.row is None:
        parser.error("pass --row ROW (or --table)")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {describe(machine())}")
    run_row(args.row, args)


if __name__ == "__main__":
    main()
