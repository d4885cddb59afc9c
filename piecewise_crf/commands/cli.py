"""The `piecewise-crf` command line: its arguments, and the dispatch to one module per command.

Only argparse lives here (and nothing that imports torch, so `--help` answers at once); each
subcommand's work is `run(args)` in `piecewise_crf.commands.<name>`, imported when it runs.
Errors a user can fix print one `error: ...` line and exit with status 2; the library names a
parameter it refuses (`errors.ArgumentError`), and here it is spelt as this command's flag.
"""

from __future__ import annotations

import _thread
import argparse
import importlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from tqdm import tqdm

from piecewise_crf import __version__
from piecewise_crf.config import DENSE_GRID, PAIRWISE_MODES, STAGES
from piecewise_crf.errors import ArgumentError

# ImportError: a missing optional package; our messages say what to install.
USER_ERRORS = (ValueError, OSError, FloatingPointError, ImportError, MemoryError)
# The default longer side for predict. Peak RSS predicting one 2048x1536 image on 2 CPU cores
# with the tests' tiny model (getrusage): unary 0.57 GB, crf 3.9 GB, crf+dense 4.5 GB (80 s); at
# 1024x768, crf+dense 1.3 GB. An 8000x6000 photo at full size was killed above 10 GB. The CRF's
# range box grows with the node grid, so a real model's cost grows faster than the pixels: 1024
# keeps every stage within a few GB, at about twice the width of CamVid's 480 px frames.
MAX_SIZE = 1024


class Parser(argparse.ArgumentParser):
    """argparse with the one-line `error: ...` (exit 2) of every other mistake, not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _number(kind: type) -> Callable[[str], float]:
    """An argparse `type` for a finite number (an int for `kind` int); ranges are the library's."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            noun = "a whole number" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}")
        return value

    return parse


NUMBER, COUNT = _number(float), _number(int)


def _checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a .pt file written by train")


def _data(p: argparse.ArgumentParser, split: str | None, use: str) -> None:
    """--dataset, --data-root (alias --root) and --split of a command that reads a split."""
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument(
        "--data-root", "--root", dest="root", help="dataset folder (default: its data.root)"
    )
    default = f"default: {split}" if split else "default: the checkpoint's data.train_split"
    p.add_argument("--split", default=split, help=f"split to {use} ({default})")


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _overwrite(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def _limit(p: argparse.ArgumentParser, default: int | None = None) -> None:
    shown = f" ({default})" if default else ""
    p.add_argument(
        "--limit",
        type=COUNT,
        default=default,
        help=f"use this many images, spread over the split{shown}",
    )


def _settings(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="prediction settings instead of the checkpoint's, e.g. crf.iterations=5 "
        "dense_crf.bi_xy_std=60 (the line tune-dense-crf prints); may be repeated",
    )


def _variants(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scales",
        type=NUMBER,
        nargs="+",
        default=[1.0],
        help="test scales whose predictions are averaged (default: 1)",
    )
    p.add_argument("--flip", action="store_true", help="also average the mirrored image")


def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="a YAML file or a shipped config: demo, cpu, paper, camvid, ... (default: cpu with "
        "--dataset; the run's own with --resume)",
    )
    p.add_argument("--dataset", help="dataset name (overrides data.dataset), e.g. folder")
    p.add_argument(
        "--data-root",
        "--root",
        dest="root",
        help="dataset folder (overrides data.root; the run keeps it)",
    )
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.csv, curves.png")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.lr=0.01 (may be repeated)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    _quiet(p)


def _evaluate(p: argparse.ArgumentParser) -> None:
    _checkpoint(p)
    _data(p, "test", "score")
    p.add_argument("--json", help="write the metrics of every stage here (a .json file)")
    p.add_argument("--confusion", help="write the confusion matrices here (a .png file)")
    _overwrite(p, "an existing --json or --confusion file")
    p.add_argument("--iterations", type=COUNT, help="mean-field iterations (default: checkpoint's)")
    p.add_argument(
        "--pairwise-mode",
        choices=PAIRWISE_MODES,
        help="pairwise scores as trained (raw) or double-centred (default: checkpoint's)",
    )
    p.add_argument("--pairwise-scale", type=NUMBER, help="pairwise weight (default: checkpoint's)")
    p.add_argument(
        "--box-fraction",
        type=NUMBER,
        help="range box of the relations at prediction (default: the checkpoint's "
        "crf.box_fraction, else the trained model.box_fraction)",
    )
    p.add_argument(
        "--pairwise-scales",
        type=NUMBER,
        nargs="+",
        default=[],
        help="also score these pairwise scales (for every --sweep-modes) in the same pass",
    )
    p.add_argument(
        "--sweep-modes",
        nargs="+",
        default=list(PAIRWISE_MODES),
        choices=PAIRWISE_MODES,
        help="pairwise modes of the --pairwise-scales sweep (default: both)",
    )
    p.add_argument("--no-dense", action="store_true", help="skip the dense-CRF stage")
    _settings(p)
    _limit(p)
    _variants(p)
    _device(p)
    _quiet(p)


def _predict(p: argparse.ArgumentParser) -> None:
    _checkpoint(p)
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
        default=STAGES[-1],
        choices=STAGES,
        help="which prediction to write (default: crf+dense, the full method)",
    )
    p.add_argument(
        "--save-probs",
        action="store_true",
        help="also save <name>_probs.npy, float32 (K, H, W) at the processed (--max-size) size",
    )
    p.add_argument(
        "--max-size",
        type=COUNT,
        default=MAX_SIZE,
        metavar="N",
        help="downscale images whose longer side exceeds N pixels before the network and the "
        f"CRFs; labels and overlays are still written at the original size (default: {MAX_SIZE};"
        " 0: never downscale)",
    )
    _settings(p)
    _variants(p)
    _device(p)
    _quiet(p)


def _calibrate(p: argparse.ArgumentParser) -> None:
    _checkpoint(p)
    p.add_argument(
        "--out",
        help="write the calibrated checkpoint here (a new file); default: update --checkpoint "
        "in place, keeping its previous crf settings under 'calibration'",
    )
    _data(p, None, "fit on")
    _limit(p, 8)
    p.add_argument(
        "--rings",
        type=COUNT,
        default=1,
        help="weights per relation: one per offset ring 1..N, the last for farther ones (1)",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=PAIRWISE_MODES,
        default=list(PAIRWISE_MODES),
        help="pairwise modes to fit; the one with the lower loss is kept (both)",
    )
    p.add_argument("--steps", type=COUNT, default=20, help="gradient steps (20)")
    p.add_argument(
        "--objective",
        default="nll",
        help="loss over labelled nodes: nll, -log Q(y), or error, 1 - Q(y), bounded (nll)",
    )
    _device(p)


def _tune(p: argparse.ArgumentParser) -> None:
    _checkpoint(p)
    _data(p, "val", "tune on")
    _limit(p)
    for key, values in DENSE_GRID.items():
        plural = "" if key == "iterations" else "s"
        p.add_argument(
            f"--{key.replace('_', '-')}{plural}",
            dest=f"{key}{plural}",
            type=NUMBER,
            nargs="+",
            default=list(values),
            metavar="V",
            help=f"values to try (default: {' '.join(f'{v:g}' for v in values)})",
        )
    p.add_argument("--pairwise-mode", choices=PAIRWISE_MODES, help="default: the checkpoint's")
    p.add_argument("--pairwise-scale", type=NUMBER, help="default: the checkpoint's")
    p.add_argument("--json", help="write every result here (a .json file)")
    _overwrite(p, "an existing --json file")
    p.add_argument(
        "--write",
        action="store_true",
        help="store the best setting in --checkpoint (in place), as calibrate does",
    )
    p.add_argument("--top", type=COUNT, default=10, help="rows of the printed table")
    _device(p)
    _quiet(p)


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        default="demo_out",
        help="folder for the run and the report (default: demo_out); a folder that holds "
        "anything but an earlier demo is refused unless --overwrite",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run and report in a used --out"
    )
    p.add_argument("--minutes", type=NUMBER, help="fit the number of epochs to this budget")


def _export(p: argparse.ArgumentParser) -> None:
    _checkpoint(p)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--size",
        type=COUNT,
        nargs=2,
        required=True,
        metavar=("H", "W"),
        help="the image size the graph takes (fixed: it sets the CRF's node grid; the batch "
        "size is free)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _settings(p)


def _configs(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a shipped config to print (default: list them)")
    p.add_argument("--out", help="write it to this .yaml file instead, to edit")
    _overwrite(p, "an existing --out file")


# name: (help, arguments, module of `run`)
COMMANDS = {
    "train": ("train a model (piecewise) into a run folder", _train, "train"),
    "evaluate": ("score unary, CRF and CRF + dense CRF on a split", _evaluate, "evaluate"),
    "predict": ("label images: palette PNGs and overlays", _predict, "predict"),
    "calibrate": (
        "learn the pairwise weights through mean-field (nets frozen), into the checkpoint",
        _calibrate,
        "calibrate",
    ),
    "tune-dense-crf": (
        "grid-search the dense-CRF parameters on a validation subset",
        _tune,
        "tune",
    ),
    "demo": ("train on generated data and write an HTML report", _demo, "demo"),
    "export": ("write the crf stage (network + mean-field) as an ONNX graph", _export, "export"),
    "configs": ("list the shipped configs, or write one out to edit", _configs, "configs"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="piecewise-crf",
        description="Deep structured models for semantic segmentation (Lin et al., CVPR 2016).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE before the command, e.g. one that registers a backbone, dataset or "
        "relation; repeatable; the current folder is searched first",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (text, arguments, _) in COMMANDS.items():
        arguments(commands.add_parser(name, help=text))
    return parser


def import_extensions(modules: Sequence[str]) -> None:
    """Import the user's modules (`--import`), from the current folder first, as `python -m`
    would: registering a backbone, dataset or relation is a side effect of importing them."""
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except SyntaxError as err:
            where = f"{err.filename} line {err.lineno}" if err.filename else name
            raise ValueError(f"--import {name}: {where}: {err.msg}; fix the module") from None
        except ModuleNotFoundError as err:
            if err.name != name.split(".")[0]:
                raise  # the module was found and itself failed to import something
            raise ModuleNotFoundError(
                f"--import {name}: no module {name!r} in {os.getcwd()} or on the Python path; "
                f"run from the folder holding {name.replace('.', '/')}.py or install it"
            ) from None


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and `kill` send): handled as Ctrl-C, exit status 143."""


@contextmanager
def _stops() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt / Terminated, and are recorded in the list
    yielded: an exception raised anywhere can break the library it lands in (measured: inside
    tqdm's lock it left an AttributeError in its place), so whatever fails after a stop was
    asked for is reported as that stop. Signal handlers exist in the main thread only."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    owner = os.getpid()
    resends: list[threading.Timer] = []

    def stop(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            # A forked DataLoader worker that has not set up its own handlers yet: it ends
            # as the signal's default would end it (ignoring SIGTERM, it outlived its parent).
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        received.append(signum)
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    def lost(unraisable: Any) -> None:
        # Python swallows an exception raised where it cannot propagate (measured: a SIGTERM
        # landing in logging's at-fork hook as a DataLoader worker started; training went on
        # for good). Such a stop is sent to the main thread again a moment later, once this
        # hook has returned (raised in here, it is swallowed too); interrupt_main does nothing
        # once the handlers are restored. Whatever else fails after a stop is not news.
        if not received:
            hook(unraisable)
        elif isinstance(unraisable.exc_value, KeyboardInterrupt):
            resends.append(threading.Timer(0.05, _thread.interrupt_main, (received[-1],)))
            resends[-1].start()

    hook = sys.unraisablehook
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    sys.unraisablehook = lost
    try:
        yield received
    finally:
        for timer in resends:
            timer.cancel()
        sys.unraisablehook = hook
        for s, handler in previous.items():
            signal.signal(s, handler)


class _Stdout(logging.Handler):
    """The library's notes, as lines on the standard output of the moment (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        tqdm.write(prefix + record.getMessage(), file=sys.stdout)  # above any progress bar


def _show_library_notes() -> None:
    for name in ("piecewise_crf", "permutocrf"):  # this package's and the dense CRF's
        logger = logging.getLogger(name)
        if not any(isinstance(h, _Stdout) for h in logger.handlers):
            logger.addHandler(_Stdout())
            logger.setLevel(logging.INFO)


def _flag_speller(parser: argparse.ArgumentParser, command: str) -> Callable[[str], str]:
    """Parameter name -> the flag of `command` whose value it is (the name itself if none)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {a.dest: a.option_strings[0] for a in sub.choices[command]._actions if a.option_strings}
    return lambda name: flags.get(name, name)


def one_line(err: BaseException, spell: Callable[[str], str]) -> str:
    """The message of `err` as one line, parameters spelt as flags. An error raised in a
    DataLoader worker reaches the main process as the same type with the worker's whole
    traceback as its text: keep its last line."""
    text = err.words(spell) if isinstance(err, ArgumentError) else str(err)
    text = text.strip() or type(err).__name__
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def _out_of_memory(err: BaseException) -> bool:
    """torch's CUDA OOM, or the CPU allocator's failure (a RuntimeError of its own)."""
    text = str(err)
    return type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError)
        and any(s in text for s in ("DefaultCPUAllocator", "not enough memory", "can't allocate"))
    )


def _exit_status(err: BaseException, stops: list[int], spell: Callable[[str], str]) -> int:
    """Print the one line an exception ends the command with; its exit status. Anything else
    is a bug in piecewise-crf, and re-raised with its traceback."""
    if stops or isinstance(err, KeyboardInterrupt):
        if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
            # The process is ending: DataLoader workers the group's SIGTERM stopped are not
            # news (torch's SIGCHLD handler would report each, as a traceback, on cleanup).
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        terminated = isinstance(err, Terminated) or signal.SIGTERM in stops
        why = "terminated (SIGTERM)" if terminated else "interrupted"
        print(
            f"{why}: the files already written are complete (each is written atomically); "
            "a training run continues from its last.pt with --resume",
            file=sys.stderr,
        )
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    if isinstance(err, USER_ERRORS):
        print(f"error: {one_line(err, spell)}", file=sys.stderr)
        return 2
    if isinstance(err, RuntimeError) and "DataLoader worker" in str(err):
        print(
            f"error: {one_line(err, spell)}: the worker was stopped from outside (often for "
            "memory); lower data.num_workers or train.batch_size, or check the memory free",
            file=sys.stderr,
        )
        return 2
    if _out_of_memory(err):
        where = "GPU" if type(err).__name__ == "OutOfMemoryError" else "CPU"
        print(
            f"error: out of {where} memory; lower train.batch_size or data.crop_size (training), "
            "--max-size or --scales (predict), model sizes (--set model.hidden=...), or --size "
            "(export)",
            file=sys.stderr,
        )
        return 2
    raise err


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version (0) or a bad argument (2), already printed
        return int(stop.code or 0)
    _show_library_notes()
    with _stops() as stops:
        try:
            import_extensions(args.imports)
            name = COMMANDS[args.command][2]
            importlib.import_module(f"piecewise_crf.commands.{name}").run(args)
        except BaseException as err:
            return _exit_status(err, stops, _flag_speller(parser, args.command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
