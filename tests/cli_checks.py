"""What the command tests check: exit status 2, one `error:` line naming the fix, files unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

from piecewise_crf.commands.cli import main

# Settings that make a run on a tiny CamVid-format folder train in seconds.
TINY = [
    "data.dataset=camvid", "model.num_classes=11", "data.crop_size=[32,48]",
    "train.batch_size=2", "train.epochs=1", "data.num_workers=0", "model.block6_channels=16",
    "model.hidden=16", "dense_crf.iterations=2",
]  # fmt: skip


def snapshot(*folders: Path) -> dict[Path, str]:
    """sha256 of every file under `folders` (a missing folder holds none)."""
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fails(argv: list[str], capsys, match: str, *keep: Path) -> str:
    """The command exits 2 with one `error:` line holding `match`; files under `keep` unchanged."""
    before = snapshot(*keep)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and match in err, err
    assert snapshot(*keep) == before
    return err


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    """`piecewise-crf train` of the demo config, TINY, on the CamVid-format folder `data`."""
    argv = ["train", "--config", "demo", "--data-root", str(data), "--out", str(out), "--quiet"]
    return [*argv, "--set", *TINY, *extra]
