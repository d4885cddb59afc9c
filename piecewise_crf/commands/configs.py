"""`piecewise-crf configs`: the shipped configs, and one written out as a file to edit."""

from __future__ import annotations

import argparse
from pathlib import Path

from piecewise_crf.config import (
    config_summary,
    shipped_config_file,
    shipped_config_text,
    shipped_configs,
)
from piecewise_crf.files import atomic_write
from piecewise_crf.outputs import OutputPlan


def run(args: argparse.Namespace) -> None:
    if args.name is None:
        names = shipped_configs()
        width = max(map(len, names))
        for name in names:
            print(f"{name:{width}}  {config_summary(name)}")
        print("write one out to edit: piecewise-crf configs NAME --out FILE.yaml")
        return
    text = shipped_config_text(args.name)
    if args.out is None:
        print(text, end="")
        return
    plan = OutputPlan()
    if isinstance(shipped := shipped_config_file(args.name), Path):
        plan.read(shipped)  # the package's own copy is never the one written over
    out = plan.write(args.out, "out", suffix=".yaml", replace=args.overwrite)
    plan.check()
    plan.folders()
    atomic_write(out, lambda f: f.write(text.encode()))
    print(f"wrote {out}: train with --config {out}")
