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
from pathlib import Path
from typing import IO, Any

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

log = logging.getLogger(__name__)
LOG_FIELDS = (
    "epoch", "step", "lr", "unary_loss", "pairwise_loss", "val_unary_miou", "val_crf_miou",
    "seconds",
)  # fmt: skip
RUN_FILES = ("last.pt", "best.pt", "final.pt", "log.csv", "curves.png", "config.yaml")


def check_run_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, to replace a user's results without being told to."""
    if out.exists() and not out.is_dir():
        raise ArgumentError(
            lambda name: f"{name('out')} {out} is a file, not a folder; choose another"
        )
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not resume and not overwrite:
        raise ArgumentError(
            lambda name: (
                f"{out} already holds a run ({', '.join(existing)}); pass "
                f"{name('resume')} to continue it or {name('overwrite')} to replace it"
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


def claim_run_dir(out: Path, *, resume: bool, overwrite: bool, main: bool) -> IO[str] | None:
    """Create RUN_DIR and lock it against a second training process (the OS drops the lock on
    any exit, kill -9 included); then delete what a killed run left behind (temp files) and,
    with `overwrite`, the old run. Called once every check has passed. Returns the lock."""
    ensure_writable(out)
    if not main:
        return None
    lock = _lock(out / ".lock")
    removed = remove_stale_temps(out, RUN_FILES)
    if removed:
        log.info(f"note: removed {len(removed)} temp files left by an interrupted run in {out}")
    if overwrite and not resume:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    return lock


def _lock(path: Path) -> IO[str] | None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; a second process is not detected
        return None
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ArgumentError(
            lambda name: (
                f"{path.parent} is in use by another training process; wait for it "
                f"to finish or choose another {name('out')}"
            )
        ) from None
    return handle


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
