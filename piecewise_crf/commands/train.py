"""`piecewise-crf train`: a config into a run folder, with a progress bar."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from piecewise_crf.config import load_config
from piecewise_crf.errors import ArgumentError
from piecewise_crf.training.loop import Step, train
from piecewise_crf.training.run_dir import resume_config

DEFAULT_CONFIG = "cpu"  # what trains in reasonable time on the machine most users start on


def run(args: argparse.Namespace) -> None:
    if args.config is None and args.dataset is None and not args.resume:
        raise ArgumentError(
            lambda name: (
                f"train needs {name('config')} (a YAML file or a shipped config's name), "
                f"{name('dataset')} (trained with the {DEFAULT_CONFIG} config), or "
                f"{name('resume')} to continue the run in {name('out')}"
            )
        )
    overrides = [*([f"data.dataset={args.dataset}"] if args.dataset else []), *args.overrides]
    if args.config is None and args.resume:
        config = resume_config(args.out, overrides)
    else:
        if args.config is None:
            print(f"note: no --config: the shipped {DEFAULT_CONFIG!r} config (piecewise-crf "
                  "configs lists them all)")  # fmt: skip
        config = load_config(args.config or DEFAULT_CONFIG, overrides)
    bar = ProgressBar(enabled=not args.quiet)
    try:
        history = train(
            config,
            args.out,
            root=args.root,
            resume=args.resume,
            overwrite=args.overwrite,
            inputs=[args.config] if args.config and Path(args.config).is_file() else [],
            on_step=bar.update,
        ).history
    finally:
        bar.close()
    if history:
        last = history[-1]
        print(
            f"done: epoch {last['epoch']}, step {last['step']}; final model {Path(args.out) / 'final.pt'}"
        )


class ProgressBar:
    """The steps of a run on a tqdm bar: epoch, losses and, with a budget, the minutes left."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None

    def update(self, step: Step) -> None:
        if not self.enabled:
            return
        if self.bar is None:  # the first step says where the run starts (a resumed one)
            self.bar = tqdm(
                total=step.total_steps, initial=step.step - 1, desc="train", dynamic_ncols=True
            )
        self.bar.update()
        shown = {
            "epoch": step.epoch,
            "unary": f"{step.unary:.3f}",
            "pairwise": f"{step.pairwise:.3f}",
        }
        if step.seconds_left is not None:
            shown["left"] = f"{step.seconds_left / 60:.1f} min"
        self.bar.set_postfix(shown)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
