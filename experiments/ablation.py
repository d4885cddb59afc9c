"""The paper's ablation on CamVid: each row adds one component; every row trains the same epochs.

    python -m experiments.ablation --row fcn --seed 1 --data-root ../shared/data/camvid \
        --weights ../shared/weights/mobilenet_v2_imagenet.pth
    python -m experiments.ablation --table          # the docs table from the committed JSON

Rows, all from the shipped camvid config (--config):
  fcn         one input scale (the recipe's largest), no pyramid pooling, unary only
  pool        + sliding pyramid pooling
  multiscale  + the recipe's second input scale
  pairwise    + CNN pairwise potentials trained piecewise, scored after mean-field; this row also
              writes "dense": the same model with dense-CRF refinement (nothing more to train)
Protocol: every row trains for the recipe's `train.epochs` (no minute budget: `train.minutes` 0)
with seed --seed, on `train_without_0001TP` (CamVid train minus the 62 frames of drive 0001TP),
without validation during training. The pairwise row is scored with the CRF and dense-CRF
settings of --config (the recipe's, chosen on the choice set with the recipe's 60-epoch model),
whatever the checkpoint holds, so `--score-only` rescores a trained row after the recipe's
settings change. Each row is scored on two splits: `train_0001TP` ("choice", a drive the model
never trained on, for choices made from this table) and `val`.
Each (row, seed) writes benchmarks/results/ablation/ablation_<row>_seed<S>.json (the pairwise row
also ablation_dense_seed<S>.json) with the commit, command and machine; run folders go to
--out/<row>_seed<S>. The table averages the seeds of a row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.common import commit, describe, machine
from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.config import Config, load_config, prediction_settings
from piecewise_crf.evaluation import open_dataset, score, subset_indices, summarise
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor
from piecewise_crf.training.loop import train

ROWS = ("fcn", "pool", "multiscale", "pairwise", "dense")
TRAINED = ROWS[:-1]
RESULTS = Path(__file__).parents[1] / "benchmarks" / "results" / "ablation"
TRAIN_SPLIT = "train_without_0001TP"
SPLITS = {"choice": "train_0001TP", "val": "val"}  # JSON key -> split scored
METRICS = ("mean_iou", "pixel_accuracy", "mean_accuracy")


def row_config(row: str, args: argparse.Namespace) -> Config:
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
    config.train.seed = args.seed
    config.train.minutes = 0.0  # the recipe's epochs end training, not a clock
    # no validation inside training: the row is scored once, below
    data = dataclasses.replace(config.data, train_split=TRAIN_SPLIT, val_split="")
    return dataclasses.replace(config, data=data)


def prediction_seconds(predictor: Predictor, data: Any, stage: str, count: int = 5) -> float:
    """Median seconds per image of `data` for one stage (after one warm-up image)."""
    times = []
    for i in range(count + 1):
        image = data[i][0]
        tic = time.perf_counter()
        predictor(image[None], (stage,))
        times.append(time.perf_counter() - tic)
    return statistics.median(times[1:])


def score_splits(
    predictor: Predictor, config: Config, stages: tuple[str, ...], args: argparse.Namespace
) -> tuple[dict[str, dict[str, dict]], Any]:
    """{stage: {"choice"/"val": metrics}} of `stages`, and the val dataset (for the timing)."""
    out: dict[str, dict[str, dict]] = {s: {} for s in stages}
    for key, split in SPLITS.items():
        data = open_dataset(config, split, root=args.data_root)
        indices = subset_indices(len(data), args.limit)
        print(f"scoring {stages} on {split} ({len(indices)} images)")
        with tqdm(total=len(indices), desc=split) as bar:
            matrices = score(predictor, data, indices=indices, stages=stages, progress=bar.update)
        for stage, m in summarise(matrices, data.classes).items():
            out[stage][key] = {
                "split": split,
                "images": len(indices),
                **{k: m[k] for k in METRICS},
                "per_class_iou": dict(zip(m["classes"], m["per_class_iou"], strict=True)),
            }
    return out, data


def run_row(row: str, args: argparse.Namespace) -> list[Path]:
    config = row_config(row, args)
    folder = args.out / f"{row}_seed{args.seed}"
    checkpoint = folder / "final.pt"  # what the row is scored from
    if args.score_only:
        if not checkpoint.is_file():
            raise SystemExit(f"--score-only: {checkpoint} not found; train the row first")
        saved = load_checkpoint(checkpoint).run
        history, train_s = saved.history, saved.train_seconds
    else:
        tic = time.perf_counter()
        history = train(config, folder, root=args.data_root, overwrite=args.overwrite).history
        train_s = time.perf_counter() - tic

    common: dict[str, Any] = {
        "seed": args.seed,
        "commit": commit(),
        "command": shlex.join(["python", *sys.argv]),
        "train_split": TRAIN_SPLIT,
        "epochs": history[-1]["epoch"],
        "steps": history[-1]["step"],
        "train_seconds": round(train_s, 1),
        "scored_only": args.score_only,  # then `commit` is the scoring's, not the training's
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
        predictor = Predictor.from_checkpoint(checkpoint, dense_enabled=False)
        scores, val = score_splits(predictor, config, ("unary",), args)
        common["machine"] = machine(predictor.device)
        seconds = prediction_seconds(predictor, val, "unary")
        return [write_row(row, "unary", scores["unary"], seconds, common, args.results)]

    predictor = Predictor.from_checkpoint(checkpoint, **prediction_settings(config))
    scores, val = score_splits(predictor, config, ("unary", "crf", "crf+dense"), args)
    crf = predictor.crf
    common["machine"] = machine(predictor.device)
    common["unary_of_this_model"] = {
        key: {k: s[k] for k in METRICS} for key, s in scores["unary"].items()
    }
    common["crf"] = dataclasses.asdict(crf)
    common["dense_crf"] = dataclasses.asdict(predictor.dense)
    crf_s = prediction_seconds(predictor, val, "crf")
    dense_s = prediction_seconds(predictor, val, "crf+dense")
    return [
        write_row("pairwise", "crf", scores["crf"], crf_s, common, args.results),
        write_row("dense", "crf+dense", scores["crf+dense"], dense_s, common, args.results),
    ]


def write_row(
    row: str, stage: str, scores: dict[str, dict], seconds: float, common: dict, folder: Path
) -> Path:
    record = {
        "row": row,
        "stage": stage,
        **scores,
        "predict_seconds_per_image": round(seconds, 3),
        **common,
    }
    path = folder / f"ablation_{row}_seed{common['seed']}.json"
    write_json(record, path)
    print(
        f"{row:<11} choice mIoU {scores['choice']['mean_iou']:.3f}  "
        f"val mIoU {scores['val']['mean_iou']:.3f}  "
        f"val pixel acc {scores['val']['pixel_accuracy']:.3f}  {seconds:.2f} s/image  -> {path}"
    )
    return path


def seed_records(folder: Path, row: str) -> list[dict]:
    """The row's JSON records, by seed."""
    found = []
    for path in folder.glob(f"ablation_{row}_seed*.json"):
        match = re.fullmatch(rf"ablation_{row}_seed(\d+)\.json", path.name)
        if match:
            found.append((int(match[1]), json.loads(path.read_text())))
    return [r for _, r in sorted(found, key=lambda x: x[0])]


def cell(values: list[float]) -> str:
    """Percent: one value, or the mean then each seed's, e.g. '57.3 (56.9, 57.7)'."""
    text = f"{100 * statistics.mean(values):.1f}"
    if len(values) > 1:
        text += " (" + ", ".join(f"{100 * v:.1f}" for v in values) + ")"
    return text


def table(folder: Path) -> str:
    """Markdown table of the rows measured so far (a missing row says so)."""
    lines = [
        "| row | seeds | choice-set mIoU | val mIoU | pixel acc. (val) | epochs | train min "
        "| predict s/image | commit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        records = seed_records(folder, row)
        if not records:
            lines.append(f"| {row} | not run yet | | | | | | | |")
            continue

        def mean(key: str, records: list[dict] = records) -> float:
            return statistics.mean(r[key] for r in records)

        seeds = ", ".join(str(r["seed"]) for r in records)
        epochs = ", ".join(sorted({str(r["epochs"]) for r in records}))
        commits = ", ".join(sorted({r["commit"] for r in records}))
        trained = f"| {epochs} | {mean('train_seconds') / 60:.0f} "
        tail = trained + f"| {mean('predict_seconds_per_image'):.2f} | {commits} |"
        if row == "pairwise":  # the same model before mean-field: what the CRF stage adds
            unary = [r["unary_of_this_model"] for r in records]
            lines.append(
                f"| pairwise, its unary | {seeds} {score_cells(unary)}{trained}"
                f"| not timed | {commits} |"
            )
        lines.append(f"| {row} | {seeds} {score_cells(records)}{tail}")
    return "\n".join(lines)


def score_cells(scored: list[dict]) -> str:
    """The choice-set mIoU, val mIoU and val pixel-accuracy cells of a row's seeds."""
    return (
        f"| {cell([s['choice']['mean_iou'] for s in scored])} "
        f"| {cell([s['val']['mean_iou'] for s in scored])} "
        f"| {100 * statistics.mean(s['val']['pixel_accuracy'] for s in scored):.1f} "
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--row", choices=TRAINED, help="the row to train and score")
    parser.add_argument("--table", action="store_true", help="print the table of measured rows")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of the row")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--weights", help="MobileNetV2 ImageNet state dict (or 'hed' for VGG-16)")
    parser.add_argument("--config", default="camvid", help="a YAML file or a shipped config")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--limit", type=int, help="score only N images per split (spread)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="run folders")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON rows")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run of this row and seed"
    )
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="do not train: rescore the row's final.pt in --out with --config's settings "
        "(its JSON is replaced)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.score_only and args.overwrite:
        parser.error("--score-only keeps the trained run: drop --overwrite")
    if args.table:
        print(table(args.results))
        return
    if args.row is None:
        parser.error("pass --row ROW (or --table)")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {describe(machine())}")
    try:
        run_row(args.row, args)
    except (ValueError, OSError) as err:  # e.g. an earlier run of this row and seed: kept
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
