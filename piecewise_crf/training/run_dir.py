"""The run folder: what it holds, the refusal to replace a run by mistake, its lock, its log.

RUN_DIR receives:

    config.yaml   the resolved config          log.csv      one row per epoch
    last.pt       every epoch, to resume from  best.pt      best validation mIoU so far
    final.pt      the finished model           curves.png   losses and mIoU per epoch
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_yaml,
    load_config,
)
from piecewise_crf.errors import ArgumentError
from piecewise_crf.files import atomic_write, atomic_write_text, ensure_writable, remove_stale_temps
from piecewise_crf.outputs import locked, resolved

log = logging.getLogger(__name__)
LOG_FIELDS = (
    "epoch", "step", "lr", "unary_loss", "pairwise_loss", "val_unary_miou", "val_crf_miou",
    "seconds",
)  # fmt: skip
RUN_FILES = ("last.pt", "best.pt", "final.pt", "log.csv", "curves.png")  # such a folder holds a run
CONFIG = "config.yaml"  # the resolved config, written with every last.pt
ASIDE = ".replaced-run"  # the run --overwrite replaces, kept until the new one has a checkpoint


def check_run_dir(out: Path, *, resume: bool, overwrite: bool, inputs: Iterable[Path]) -> bool:
    """Refuse, before anything is written, to replace a user's results or inputs without being
    told to. `inputs` are the files the run reads; returns whether the run may write its
    config.yaml (not where that file is the config it was given)."""
    if out.exists() and not out.is_dir():
        raise ArgumentError(
            lambda name: f"{name('out')} {out} is a file, not a folder; choose another"
        )
    read = {resolved(Path(p), "input") for p in inputs}
    clashes = [name for name in RUN_FILES if resolved(out / name, "out") in read]
    if clashes:
        raise ArgumentError(
            lambda name: (
                f"{name('out')} {out}: the run would write {', '.join(clashes)}, which "
                "it reads; choose another folder"
            )
        )
    writes_config = resolved(out / CONFIG, "out") not in read
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not resume and not overwrite:
        raise ArgumentError(
            lambda name: (
                f"{out} already holds a run ({', '.join(existing)}); pass "
                f"{name('resume')} to continue it or {name('overwrite')} to replace it"
            )
        )
    if writes_config and (out / CONFIG).exists() and not (existing or resume or overwrite):
        raise ArgumentError(
            lambda name: (
                f"{out / CONFIG} is no run's (the folder holds no checkpoint) and "
                f"training would replace it: pass it as {name('config')}, move it, or pass "
                f"{name('overwrite')}"
            )
        )
    finished = [name for name in ("final.pt", "best.pt") if (out / name).exists()]
    if resume and not (out / "last.pt").exists() and finished and not overwrite:
        raise ArgumentError(
            lambda name: (
                f"cannot resume {out}: it has {', '.join(finished)} but no last.pt to "
                f"continue from; pass {name('overwrite')} (without {name('resume')}) to train it anew"
            )
        )
    return writes_config


def recover(out: Path) -> None:
    """Put back a run that an overwrite set aside when the new run never reached a checkpoint
    (its process was killed); let it go when the new run did."""
    aside = out / ASIDE
    if not aside.is_dir():
        return
    if any((out / name).exists() for name in ("last.pt", "final.pt")):
        shutil.rmtree(aside)
        return
    for path in aside.iterdir():
        os.replace(path, out / path.name)
    aside.rmdir()
    log.info(f"note: put back the run in {out} that an interrupted overwrite had set aside")


@dataclass
class RunFolder:
    """RUN_DIR held by the training process. With `overwrite` the old run's files wait in
    RUN_DIR/.replaced-run until the new run has written its first checkpoint."""

    out: Path
    writes_config: bool  # False where config.yaml is the config the run was given
    aside: Path | None = None

    def keep(self) -> None:
        """The new run has a checkpoint: the old run is let go."""
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def restore(self) -> None:
        """The new run failed before its first checkpoint: the old run comes back whole."""
        if self.aside is None:
            return
        for name in RUN_FILES:
            (self.out / name).unlink(missing_ok=True)
        for path in self.aside.iterdir():
            os.replace(path, self.out / path.name)
        self.aside.rmdir()
        self.aside = None


@contextmanager
def claimed(
    out: Path, *, resume: bool, overwrite: bool, writes_config: bool, main: bool
) -> Iterator[RunFolder]:
    """RUN_DIR made and held for the block (a second training process is refused); the temp
    files of a killed run removed; with `overwrite` the old run set aside, and put back when
    the block fails before `RunFolder.keep`. Enter it once every check has passed."""
    ensure_writable(out)
    folder = RunFolder(out, writes_config)
    if not main:
        yield folder
        return
    with locked(out, "out"):
        removed = remove_stale_temps(out, (*RUN_FILES, CONFIG))
        if removed:
            log.info(f"note: removed {len(removed)} temp files left by an interrupted run in {out}")
        names = [*RUN_FILES, *([CONFIG] if writes_config else [])]
        old = [out / name for name in names if (out / name).exists()]
        if overwrite and not resume and old:
            folder.aside = out / ASIDE
            folder.aside.mkdir()
            for path in old:
                os.replace(path, folder.aside / path.name)
        try:
            yield folder
        except BaseException:
            folder.restore()
            raise
        folder.keep()


def save_config(config: Config, path: Path) -> None:
    """The resolved config as YAML, atomically."""
    atomic_write_text(config_yaml(config), path)


def write_log(history: list[dict[str, Any]], path: Path) -> None:
    """log.csv, rewritten from the checkpointed history (so a resumed run never duplicates rows)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOG_FIELDS})
    atomic_write_text(buffer.getvalue(), path)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training losses and validation mIoU per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [r["unary_loss"] for r in history], "o-", label="unary NLL")
    left.plot(epochs, [r["pairwise_loss"] for r in history], "o-", label="pairwise NLL")
    left.set(xlabel="epoch", ylabel="training loss", title="piecewise loss")
    left.legend()
    val = [r for r in history if r.get("val_unary_miou") is not None]
    for key, label in (("val_unary_miou", "unary"), ("val_crf_miou", "CRF")):
        points = [(r["epoch"], 100 * r[key]) for r in val if r.get(key) is not None]
        if points:
            right.plot(*zip(*points, strict=True), "o-", label=label)
    right.set(xlabel="epoch", ylabel="mIoU (%)", title="validation mIoU")
    if val:
        right.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def summary_writer(out: Path) -> Any:
    """TensorBoard's writer in RUN_DIR/tensorboard when it is installed (an optional extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def resume_config(out: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config of the run in `out`, with `section.key=value` overrides: the one saved in its
    last.pt (what the weights were trained with), else its config.yaml (no epoch done yet)."""
    out = Path(out)
    path, last = out / "config.yaml", out / "last.pt"
    if not last.is_file():
        if not path.is_file():
            raise ArgumentError(
                lambda name: f"{path} not found: pass {name('config')} to start or resume this run"
            )
        return load_config(path, overrides)
    saved = config_to_dict(load_checkpoint(last).config)
    try:
        same = path.is_file() and config_to_dict(load_config(path)) == saved
    except (ValueError, OSError):  # truncated or hand-edited into an invalid file
        same = False
    if not same:
        log.info(
            f"note: {path} is missing or differs from the config saved in {last}; resuming with "
            "the saved one (give a config to resume with another)"
        )
    return config_from_dict(apply_overrides(saved, overrides))
