"""`piecewise-crf export`: a checkpoint's crf stage as an ONNX graph (`piecewise_crf.export`)."""

from __future__ import annotations

import argparse

from piecewise_crf.config import setting_overrides
from piecewise_crf.export import export_onnx


def run(args: argparse.Namespace) -> None:
    settings = setting_overrides(args.overrides)
    exported = export_onnx(
        args.checkpoint, args.out, tuple(args.size), overwrite=args.overwrite, settings=settings
    )
    print(exported.summary())
