"""`piecewise-crf tune-dense-crf`: the dense-CRF parameters grid-searched for a checkpoint.

The CRF marginals use the checkpoint's crf settings, or --pairwise-mode / --pairwise-scale when
given (tune the dense CRF on the CRF you will use). Prints the ranking and the best setting as a
`--set` line and as YAML; --json keeps every result; --write stores the best setting (and the
CRF it was tuned on) in the checkpoint, with a record under "dense_tuning" that keeps the
settings of before the first --write.
"""

from __future__ import annotations

import argparse
import dataclasses

from tqdm import tqdm

from piecewise_crf.checkpoint import Checkpoint, load_checkpoint, update_checkpoint
from piecewise_crf.config import CRFConfig, DenseCRFConfig, config_to_dict
from piecewise_crf.errors import ArgumentError
from piecewise_crf.evaluation import describe, mean_classes, open_split, subset_indices
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor
from piecewise_crf.outputs import OutputPlan, inputs_of
from piecewise_crf.tuning import dense_grid, format_ranking, params, rank_results, tune_dense_crf


def run(args: argparse.Namespace) -> None:
    grid = dense_grid(
        args.bi_weights,
        args.bi_xy_stds,
        args.bi_rgb_stds,
        args.pos_weights,
        args.pos_xy_stds,
        args.iterations,
    )
    if args.top < 1:
        raise ArgumentError(lambda name: f"{name('top')} must be at least 1, got {args.top}")
    plan = OutputPlan()
    if args.write:  # in place, atomically, as calibrate does
        plan.write(args.checkpoint, "checkpoint", suffix=".pt")
    else:
        plan.read(args.checkpoint)
    plan.write(args.json, "json", suffix=".json", replace=args.overwrite)
    plan.check()
    given = {"pairwise_mode": args.pairwise_mode, "pairwise_scale": args.pairwise_scale}
    ckpt = load_checkpoint(args.checkpoint)
    predictor = Predictor.from_checkpoint(
        ckpt, device=args.device, **{k: v for k, v in given.items() if v is not None}
    )
    name = args.dataset or ckpt.config.data.dataset
    data = open_split(ckpt.config, ckpt.classes, args.split, name=name, root=args.root)
    plan.read(*inputs_of(data))
    plan.check()
    plan.folders()
    classes = list(data.classes)
    indices = subset_indices(len(data), args.limit)
    print(
        f"{name} {args.split}: {len(indices)} of {len(data)} images, CRF "
        f"{describe(predictor.crf)}, {len(grid)} dense-CRF settings"
    )
    bar = tqdm(total=len(indices), desc="tune dense CRF", disable=args.quiet, dynamic_ncols=True)
    with bar:
        baseline, matrices = tune_dense_crf(
            predictor, data, grid, indices=indices, progress=bar.update
        )
    base, rows = rank_results(baseline, matrices, grid, classes, mean_classes(data))
    best = DenseCRFConfig(**rows[0]["params"])
    print(format_ranking(base, rows, args.top))
    print(f"best dense CRF (mean IoU {100 * (rows[0]['mean_iou'] or 0):.2f}):")
    print(f"  --set {set_line(best)}")
    print(yaml_section(best).rstrip())
    about = {"dataset": name, "split": args.split, "images": len(indices), "indices": indices}
    if args.json is not None:
        result = {
            **about,
            "classes": classes,
            "crf": dataclasses.asdict(predictor.crf),
            "checkpoint_dense_crf": dataclasses.asdict(ckpt.config.dense_crf),
            "baseline": base,
            "best": rows[0],
            "results": rows,
        }
        write_json(result, args.json)
        print(f"all {len(rows)} results written to {args.json}")
    if args.write:
        record = {**about, "settings_tried": len(grid), "baseline": base, "best": rows[0]}
        _store(args.checkpoint, predictor.crf, best, record)


def _store(checkpoint: str, crf: CRFConfig, best: DenseCRFConfig, record: dict) -> None:
    """Write the best setting into `checkpoint`, disabled when it does not beat no dense CRF."""
    helps = (record["best"]["mean_iou"] or 0) > (record["baseline"]["mean_iou"] or 0)
    if not helps:
        print("note: no setting beats the crf stage without a dense CRF here: stored disabled")
    chosen = dataclasses.replace(best, enabled=helps)
    update_checkpoint(checkpoint, lambda c: tuned(c, crf, chosen, record))
    print(f"wrote {checkpoint}: this dense CRF after this crf setting (the previous ones under "
          "'dense_tuning')")  # fmt: skip


def tuned(ckpt: Checkpoint, crf: CRFConfig, dense: DenseCRFConfig, record: dict) -> Checkpoint:
    """`ckpt` predicting with `dense` after `crf`, and the record, which keeps the settings of
    before the first --write (a second one does not lose them)."""
    saved = config_to_dict(ckpt.config)
    previous = (ckpt.dense_tuning or {}).get(
        "previous", {k: saved[k] for k in ("crf", "dense_crf")}
    )
    config = dataclasses.replace(ckpt.config, crf=crf, dense_crf=dense)
    return dataclasses.replace(ckpt, config=config, dense_tuning={**record, "previous": previous})


def set_line(dense: DenseCRFConfig) -> str:
    """The setting as `--set` overrides, ready to paste into another command."""
    return " ".join(f"dense_crf.{k}={_number(v)}" for k, v in params(dense).items())


def yaml_section(dense: DenseCRFConfig) -> str:
    """The setting as the dense_crf section of a config file."""
    return "dense_crf:\n" + "".join(f"  {k}: {_number(v)}\n" for k, v in params(dense).items())


def _number(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
