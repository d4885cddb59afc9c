"""`piecewise-crf export`: a checkpoint's crf stage as an ONNX graph (`piecewise_crf.export`)."""

from __future__ import annotations

import argparse

from piecewise_crf.export import export_onnx


def run(args: argparse.Namespace) -> None:
    print(
        export_onnx(args.checkpoint, args.out, tuple(args.size), overwrite=args.overwrite).summary()
    )
