"""The `piecewise-crf` command: train, evaluate, predict, calibrate, tune-dense-crf, demo, export.

Errors a user can fix (missing files, bad labels, unknown config keys, a checkpoint that does not
fit, a diverged run) print one `error: ...` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

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
# ImportError: a missing optional package; our messages say what to install.
USER_ERRORS = (ValueError, OSError, FloatingPointError, ImportError, MemoryError)


class Parser(argparse.ArgumentParser):
    """argparse with the one-line `error: ...` (exit 2) of every other mistake, not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def one_line(err: BaseException) -> str:
    """The message of `err` as one line. An error raised in a DataLoader worker reaches the main
    process as the same type with the worker's whole traceback as its text: keep its last line."""
    text = str(err).strip() or type(err).__name__
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def _number(kind: type, low: float, *, open_low: bool = False, high: float | None = None):
    """An argparse `type` for a finite number >= low (> low when `open_low`), <= high."""
    noun = "a whole number" if kind is int else "a number"
    need = f"{noun} {'>' if open_low else '>='} {low:g}" + (f" and <= {high:g}" if high else "")

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        above = value > low if open_low else value >= low
        if not (math.isfinite(value) and above and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"expected {need}, got {text!r}")
        return value

    return parse


POSITIVE = _number(float, 0.0, open_low=True)  # scales, standard deviations, minutes
NON_NEGATIVE = _number(float, 0.0)  # weights, pairwise scales
FRACTION = _number(float, 0.0, open_low=True, high=1.0)  # box fractions
COUNT = _number(int, 1)  # --limit, --top
ITERATIONS = _number(int, 0)  # mean-field iterations (0 = the unary's softmax)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and `kill` send): handled as Ctrl-C, exit status 143."""


def _terminate(signum: int, frame: object) -> NoReturn:
    raise Terminated


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
        max_size=args.max_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"{len(written)} predictions written to {args.out}")


def _calibrate(args: argparse.Namespace) -> None:
    from piecewise_crf.calibrate import calibrate_checkpoint

    calibrate_checkpoint(
        args.checkpoint,
        out=args.out,
        dataset=args.dataset,
        root=args.root,
        split=args.split,
        limit=args.limit,
        rings=args.rings,
        modes=args.modes,
        steps=args.steps,
        objective=args.objective,
        device=args.device,
    )


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

    run_demo(args.out, args.minutes, overwrite=args.overwrite)


def _export(args: argparse.Namespace) -> None:
    from piecewise_crf.export import export_onnx

    print(export_onnx(args.checkpoint, args.out, args.size, overwrite=args.overwrite).summary())


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="piecewise-crf",
        description="Deep structured models for semantic segmentation (Lin et al., CVPR 2016).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE before the command, e.g. one that registers a backbone, dataset or "
        "relation (see README: Extending); repeatable; the current folder is searched first",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a model (piecewise) into a run folder")
    p.add_argument("--config", help="YAML config (may name a preset: paper, cpu, demo)")
    p.add_argument("--data-root", help="dataset folder (overrides data.root)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.csv, curves.png")
    p.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.lr=0.01 (may be repeated)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_train)

    def inference_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", required=True, help="a .pt file written by train")
        p.add_argument(
            "--scales",
            type=POSITIVE,
            nargs="+",
            default=[1.0],
            help="test scales whose predictions are averaged (default: 1)",
        )
        p.add_argument("--flip", action="store_true", help="also average the mirrored image")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = commands.add_parser("evaluate", help="score unary, CRF and CRF + dense CRF on a split")
    inference_options(p)
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--root", help="dataset folder (default: the checkpoint's data.root)")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--json", help="write the metrics here (and a confusion-matrix PNG beside it)")
    p.add_argument("--confusion", help="confusion-matrix PNG path")
    p.add_argument(
        "--iterations", type=ITERATIONS, help="mean-field iterations (default: checkpoint's)"
    )
    p.add_argument(
        "--pairwise-mode",
        choices=["raw", "interaction"],
        help="pairwise scores as trained (raw) or double-centred (default: checkpoint's)",
    )
    p.add_argument(
        "--pairwise-scale", type=NON_NEGATIVE, help="pairwise weight (default: checkpoint's)"
    )
    p.add_argument(
        "--box-fraction",
        type=FRACTION,
        help="range box of the relations at prediction (default: the checkpoint's "
        "crf.box_fraction, else the trained model.box_fraction)",
    )
    p.add_argument(
        "--pairwise-scales",
        type=NON_NEGATIVE,
        nargs="+",
        default=[],
        help="also score these pairwise scales (for every --sweep-modes) in the same pass",
    )
    p.add_argument(
        "--sweep-modes",
        nargs="+",
        default=["raw", "interaction"],
        choices=["raw", "interaction"],
        help="pairwise modes of the --pairwise-scales sweep (default: both)",
    )
    p.add_argument("--no-dense", action="store_true", help="skip the dense-CRF stage")
    p.add_argument("--limit", type=COUNT, help="use this many images, spread over the split")
    p.set_defaults(run=_evaluate)

    p = commands.add_parser("predict", help="label images: palette PNGs and overlays")
    inference_options(p)
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGES_OR_DIRS",
        help="image files, or folders whose images (not subfolders) are all predicted",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder, not an input folder: images from one folder are written flat "
        "(in/x.png -> OUT/x.png), images from several under their folders relative to the "
        "folders' common parent (a/x.png -> OUT/a/x.png, b/x.png -> OUT/b/x.png)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace predictions already in --out (an input image is never replaced)",
    )
    p.add_argument(
        "--stage",
        default="crf+dense",
        choices=["unary", "crf", "crf+dense"],
        help="which prediction to write (default: crf+dense, the full method)",
    )
    p.add_argument(
        "--save-probs",
        action="store_true",
        help="also save <name>_probs.npy, float32 (K, H, W) at the processed (--max-size) size",
    )
    p.add_argument(
        "--max-size",
        type=int,
        default=1024,  # predict.MAX_SIZE, not imported: parsing arguments does not import torch
        metavar="N",
        help="downscale images whose longer side exceeds N pixels before the network and the "
        "CRFs; labels and overlays are still written at the original size (default: 1024; "
        "0: never downscale)",
    )
    p.set_defaults(run=_predict)

    p = commands.add_parser(
        "calibrate",
        help="learn the pairwise weights through mean-field (nets frozen), into the checkpoint",
    )
    p.add_argument("--checkpoint", required=True, help="a .pt file written by train")
    p.add_argument(
        "--out",
        help="write the calibrated checkpoint here (a new file); default: update --checkpoint "
        "in place, keeping its previous crf settings under 'calibration'",
    )
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--root", help="dataset folder (default: the checkpoint's data.root)")
    p.add_argument("--split", help="split to fit on (default: the checkpoint's data.train_split)")
    p.add_argument("--limit", type=COUNT, default=8, help="images, spread over the split (8)")
    p.add_argument(
        "--rings",
        type=COUNT,
        default=1,
        help="weights per relation: one per offset ring 1..N, the last for farther ones (1)",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["raw", "interaction"],
        default=["raw", "interaction"],
        help="pairwise modes to fit; the one with the lower loss is kept (both)",
    )
    p.add_argument("--steps", type=_number(int, 0), default=20, help="gradient steps (20)")
    p.add_argument(
        "--objective",
        choices=["nll", "error"],
        default="nll",
        help="loss over labelled nodes: nll, -log Q(y), or error, 1 - Q(y), bounded (nll)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(run=_calibrate)

    p = commands.add_parser(
        "tune-dense-crf", help="grid-search the dense-CRF parameters on a validation subset"
    )
    p.add_argument("--checkpoint", required=True, help="a .pt file written by train")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--root", help="dataset folder (default: the checkpoint's data.root)")
    p.add_argument("--split", default="val", help="split to tune on (default: val)")
    p.add_argument("--limit", type=COUNT, help="use this many images, spread over the split")
    for key, values in DEFAULT_DENSE_GRID.items():
        if key != "iterations":
            p.add_argument(
                "--" + key.replace("_", "-") + "s",
                type=NON_NEGATIVE if key.endswith("weight") else POSITIVE,
                nargs="+",
                default=list(values),
                metavar="V",
                help=f"values to try (default: {' '.join(f'{v:g}' for v in values)})",
            )
    p.add_argument(
        "--iterations",
        type=ITERATIONS,
        nargs="+",
        default=list(DEFAULT_DENSE_GRID["iterations"]),
        metavar="N",
        help="dense-CRF mean-field iterations to try (default: 5)",
    )
    p.add_argument("--pairwise-mode", choices=["raw", "interaction"], help="default: checkpoint's")
    p.add_argument("--pairwise-scale", type=NON_NEGATIVE, help="default: the checkpoint's")
    p.add_argument("--json", help="write every result here")
    p.add_argument("--top", type=COUNT, default=10, help="rows of the printed table")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_tune_dense_crf)

    p = commands.add_parser("demo", help="train on generated data and write an HTML report")
    p.add_argument(
        "--out",
        default="demo_out",
        help="folder for the run and the report (default: demo_out); a folder that holds "
        "anything but an earlier demo is refused unless --overwrite",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run and report in a used --out"
    )
    p.add_argument("--minutes", type=POSITIVE, help="fit the number of epochs to this budget")
    p.set_defaults(run=_demo)

    p = commands.add_parser(
        "export", help="write the crf stage (network + mean-field) as an ONNX graph"
    )
    p.add_argument("--checkpoint", required=True, help="a .pt file written by train")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--size",
        type=_number(int, 32),  # export.MIN_SIZE, not imported: parsing does not import torch
        nargs=2,
        required=True,
        metavar=("H", "W"),
        help="the image size the graph takes (fixed: it sets the CRF's node grid; the batch "
        "size is free)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(run=_export)
    return parser


def import_extensions(modules: Sequence[str]) -> None:
    """Import the user's modules (`--import`), from the current folder first, as `python -m`
    would: registering a backbone, dataset or relation is a side effect of importing them."""
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name.split(".")[0]:
                raise  # the module was found and itself failed to import something
            raise ModuleNotFoundError(
                f"--import {name}: no module {name!r} in {os.getcwd()} or on the Python path; "
                f"run from the folder holding {name.replace('.', '/')}.py or install it"
            ) from None


def _version() -> str:
    try:
        return version("piecewise-crf")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version (0) or a bad argument (2), already printed
        return int(stop.code or 0)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        import_extensions(args.imports)
        args.run(args)
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        why = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        print(
            f"{why}: the files already written are complete (each is written atomically); "
            "a training run continues from its last.pt with --resume",
            file=sys.stderr,
        )
        return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    except RuntimeError as err:
        if type(err).__name__ != "OutOfMemoryError":  # torch's (CUDA) OOM; anything else is a bug
            raise
        print(
            "error: out of GPU memory; lower train.batch_size or data.crop_size (training), "
            "--max-size or --scales (predict), or pass --device cpu",
            file=sys.stderr,
        )
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
