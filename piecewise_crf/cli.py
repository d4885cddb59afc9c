"""The `piecewise-crf` command: train, evaluate, predict, tune-dense-crf, demo.

Errors a user can fix (missing files, bad labels, unknown config keys, a checkpoint that does not
fit, a diverged run) print one `error: ...` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from piecewise_crf.config import load_config

# DeepLab's search ranges (Chen et al. 2015); piecewise_crf.tune.DEFAULT_GRID is the same, kept
# here so that parsing arguments does not import torch.
DEFAULT_DENSE_GRID = {
    "bi_weight": (3.0, 4.0, 5.0),
    "bi_xy_std": (50.0, 67.0, 80.0),
    "bi_rgb_std": (3.0, 5.0, 10.0, 13.0),
    "pos_weight": (3.0,),
    "pos_xy_std": (1.0, 3.0),
    "iterations": (5,),
}
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def _train(args: argparse.Namespace) -> None:
    from piecewise_crf.train import resume_config, train

    if args.config is None and not args.resume:
        raise ValueError("train needs --config FILE (or --resume to continue a run in --out)")
    if args.config is None:
        config = resume_config(args.out, args.set)
    else:
        config = load_config(args.config, args.set)
    history = train(
        config,
        args.out,
        data_root=args.data_root,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
    ).history
    if history:
        last = history[-1]
        print(f"done: epoch {last['epoch']}, step {last['step']}; final model {args.out}/final.pt")


def _evaluate(args: argparse.Namespace) -> None:
    from piecewise_crf.evaluate import evaluate_checkpoint

    evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        root=args.root,
        split=args.split,
        json_path=args.json,
        confusion_path=args.confusion,
        iterations=args.iterations,
        pairwise_mode=args.pairwise_mode,
        pairwise_scale=args.pairwise_scale,
        box_fraction=args.box_fraction,
        sweep_scales=args.pairwise_scales,
        sweep_modes=args.sweep_modes,
        dense=not args.no_dense,
        scales=args.scales,
        flip=args.flip,
        limit=args.limit,
        device=args.device,
        progress=not args.quiet,
    )


def _predict(args: argparse.Namespace) -> None:
    from piecewise_crf.predict import predict_files

    written = predict_files(
        args.checkpoint,
        args.inputs,
        args.out,
        stage=args.stage,
        save_probs=args.save_probs,
        scales=args.scales,
        flip=args.flip,
        device=args.device,
        progress=not args.quiet,
    )
    print(f"{len(written)} predictions written to {args.out}")


def _tune_dense_crf(args: argparse.Namespace) -> None:
    from piecewise_crf.tune import dense_grid, tune_dense_crf_checkpoint

    grid = dense_grid(
        args.bi_weights,
        args.bi_xy_stds,
        args.bi_rgb_stds,
        args.pos_weights,
        args.pos_xy_stds,
        args.iterations,
    )
    tune_dense_crf_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        root=args.root,
        split=args.split,
        limit=args.limit,
        grid=grid,
        pairwise_mode=args.pairwise_mode,
        pairwise_scale=args.pairwise_scale,
        json_path=args.json,
        device=args.device,
        top=args.top,
        progress=not args.quiet,
    )


def _demo(args: argparse.Namespace) -> None:
    from piecewise_crf.demo import run_demo

    run_demo(args.out, args.minutes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piecewise-crf",
        description="Deep structured models for semantic segmentation (Lin et al., CVPR 2016).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a model (piecewise) into a run folder")
    p.add_argument("--config", help="YAML config (may name a preset: paper, cpu, demo)")
    p.add_argument("--data-root", help="dataset folder (overrides data.root)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.csv, curves.png")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. train.lr=0.01")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_train)

    def inference_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", required=True, help="a .pt file written by train")
        p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test scales")
        p.add_argument("--flip", action="store_true", help="also average the mirrored image")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = commands.add_parser("evaluate", help="score unary, CRF and CRF + dense CRF on a split")
    inference_options(p)
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--root", help="dataset folder (default: the checkpoint's data.root)")
    p.add_argument("--split", default="test")
    p.add_argument("--json", help="write the metrics here (and a confusion-matrix PNG beside it)")
    p.add_argument("--confusion", help="confusion-matrix PNG path")
    p.add_argument("--iterations", type=int, help="mean-field iterations (default: checkpoint's)")
    p.add_argument("--pairwise-mode", choices=["raw", "interaction"])
    p.add_argument("--pairwise-scale", type=float)
    p.add_argument(
        "--box-fraction",
        type=float,
        help="range box of the relations at prediction (default: the checkpoint's "
        "crf.box_fraction, else the trained model.box_fraction)",
    )
    p.add_argument(
        "--pairwise-scales",
        type=float,
        nargs="+",
        default=[],
        help="also score these pairwise scales (for every --sweep-modes) in the same pass",
    )
    p.add_argument(
        "--sweep-modes", nargs="+", default=["raw", "interaction"], choices=["raw", "interaction"]
    )
    p.add_argument("--no-dense", action="store_true", help="skip the dense-CRF stage")
    p.add_argument("--limit", type=int, help="use this many images, spread over the split")
    p.set_defaults(run=_evaluate)

    p = commands.add_parser("predict", help="label images: palette PNGs and overlays")
    inference_options(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--stage", default="crf+dense", choices=["unary", "crf", "crf+dense"])
    p.add_argument("--save-probs", action="store_true", help="also save <name>_probs.npy (K,H,W)")
    p.set_defaults(run=_predict)

    p = commands.add_parser(
        "tune-dense-crf", help="grid-search the dense-CRF parameters on a validation subset"
    )
    p.add_argument("--checkpoint", required=True, help="a .pt file written by train")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--root", help="dataset folder (default: the checkpoint's data.root)")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, help="use this many images, spread over the split")
    for key, values in DEFAULT_DENSE_GRID.items():
        if key != "iterations":
            p.add_argument(
                "--" + key.replace("_", "-") + "s",
                type=float,
                nargs="+",
                default=list(values),
                metavar="V",
                help=f"values to try (default: {' '.join(f'{v:g}' for v in values)})",
            )
    p.add_argument(
        "--iterations",
        type=int,
        nargs="+",
        default=list(DEFAULT_DENSE_GRID["iterations"]),
        metavar="N",
        help="dense-CRF mean-field iterations to try (default: 5)",
    )
    p.add_argument("--pairwise-mode", choices=["raw", "interaction"], help="default: checkpoint's")
    p.add_argument("--pairwise-scale", type=float, help="default: the checkpoint's")
    p.add_argument("--json", help="write every result here")
    p.add_argument("--top", type=int, default=10, help="rows of the printed table")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_tune_dense_crf)

    p = commands.add_parser("demo", help="train on generated data and write an HTML report")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--minutes", type=float, help="fit the number of epochs to this budget")
    p.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a run resumes from its last.pt with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
