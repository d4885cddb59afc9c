"""`piecewise-crf evaluate`: every stage of a checkpoint scored on a split, in one pass."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.config import replace_settings, setting_overrides
from piecewise_crf.evaluation import (
    describe,
    format_table,
    mean_classes,
    open_split,
    plot_confusion,
    score,
    subset_indices,
    summarise,
    sweep_settings,
)
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor
from piecewise_crf.outputs import OutputPlan, inputs_of


def run(args: argparse.Namespace) -> None:
    plan = OutputPlan()
    plan.read(args.checkpoint)
    json_path = plan.write(args.json, "json", suffix=".json", replace=args.overwrite)
    confusion = plan.write(args.confusion, "confusion", suffix=".png", replace=args.overwrite)
    plan.check()  # before the checkpoint is read: what can be refused now is
    given = {
        "iterations": args.iterations,
        "pairwise_mode": args.pairwise_mode,
        "pairwise_scale": args.pairwise_scale,
        "box_fraction": args.box_fraction,
        "dense_enabled": False if args.no_dense else None,
    }
    overrides = setting_overrides(args.overrides)  # the flags above win over --set
    overrides.update({key: value for key, value in given.items() if value is not None})
    ckpt = load_checkpoint(args.checkpoint)
    crf = replace_settings(ckpt.config, overrides).crf
    modes = args.sweep_modes if args.pairwise_scales else ()
    predictor = Predictor.from_checkpoint(
        ckpt,
        device=args.device,
        scales=args.scales,
        flip=args.flip,
        sweep=sweep_settings(crf, args.pairwise_scales, modes),
        **overrides,
    )
    name = args.dataset or ckpt.config.data.dataset
    data = open_split(ckpt.config, ckpt.classes, args.split, name=name, root=args.root)
    plan.read(*inputs_of(data))
    plan.check()
    plan.folders()
    indices = subset_indices(len(data), args.limit)
    with tqdm(total=len(indices), desc="evaluate", disable=args.quiet, dynamic_ncols=True) as bar:
        matrices = score(predictor, data, indices=indices, progress=bar.update)
    classes = list(data.classes)
    results = summarise(matrices, classes, mean_classes(data))
    box = predictor.crf.box_fraction or ckpt.config.model.box_fraction
    setting = describe(predictor.crf)
    print(f"{name} {args.split}: {len(indices)} of {len(data)} images, CRF {setting}, box {box:g}")
    print(format_table(results, classes))
    if not predictor.dense.enabled:
        print("note: crf+dense skipped: dense CRF disabled")
    if json_path is not None:
        write_json(results, json_path)
        print(f"metrics written to {json_path}")
    if confusion is not None:
        plot_confusion(matrices, classes, confusion)
        print(f"confusion matrices written to {confusion}")
