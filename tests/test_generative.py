"""The promise, on generated cases: a command exits 0, or exits 2 with one `error:` line and no
traceback, and every file that was there before is byte-identical, unless the user named it
as an output with --overwrite (or --resume for a run, or the checkpoint calibrate updates).

Each case is drawn from a seeded generator: a command, its arguments (good, bad, colliding
with files already there, odd names), and the files it meets (images of every mode PIL writes,
corrupt and empty files, links, earlier outputs).
"""

from __future__ import annotations

import random
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_checks import TINY, snapshot
from PIL import Image

from piecewise_crf.commands.cli import main

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
CASES = 48
NAMES = ["a.png", "b c.png", "é.jpg", "x.tif", "notes.txt", "m.json", "c.png", "last.pt"]


def image_file(rng: random.Random, path: Path) -> Path:
    """An image in a random mode PIL can write, or a file that is not one."""
    kind = rng.choice(["RGB", "L", "RGBA", "P", "I;16", "F", "LA", "empty", "garbage"])
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("empty", "garbage"):
        path.write_bytes(b"" if kind == "empty" else bytes(rng.randrange(256) for _ in range(64)))
        return path
    h, w = rng.randint(20, 60), rng.randint(20, 60)
    values = np.random.default_rng(rng.randrange(10**6)).random((h, w, 4))
    if kind == "I;16":
        image = Image.fromarray((values[..., 0] * 65535).astype(np.uint16))
    elif kind == "F":
        image = Image.fromarray(values[..., 0].astype(np.float32) * rng.choice([1, 255, 1000]))
    else:
        image = Image.fromarray((values * 255).astype(np.uint8), "RGBA").convert(kind)
    suffix = ".tif" if kind == "F" else path.suffix
    if suffix != ".tif" and (suffix not in (".png", ".jpg") or kind in ("RGBA", "LA", "I;16", "P")):
        suffix = ".png"
    image.save(path.with_suffix(suffix))
    return path.with_suffix(suffix)


def a_path(rng: random.Random, folder: Path, existing: list[Path]) -> Path:
    """An output path: new, an existing file, a folder, or a link to an existing file."""
    choice = rng.random()
    if choice < 0.25 and existing:
        return rng.choice(existing)
    if choice < 0.32:
        return folder
    if choice < 0.4 and existing:
        link = folder / f"link{rng.randrange(1000)}{rng.choice(['.png', '.json', '.onnx'])}"
        if not link.exists() and not link.is_symlink():
            link.symlink_to(rng.choice(existing))
        return link
    return folder / "new" / rng.choice(NAMES)


def case(rng: random.Random, folder: Path, checkpoint: Path, data: Path) -> tuple[list[str], set]:
    """One command line, and the files it may change (those it was told to replace)."""
    existing = [p for p in folder.rglob("*") if p.is_file()]
    overwrite = ["--overwrite"] if rng.random() < 0.4 else []
    command = rng.choice(["evaluate", "predict", "export", "tune-dense-crf", "train", "calibrate"])
    may_change: set[Path] = set()
    ckpt = str(checkpoint if rng.random() < 0.9 else rng.choice(existing))
    if command == "evaluate":
        json, png = a_path(rng, folder, existing), a_path(rng, folder, existing)
        argv = ["evaluate", "--checkpoint", ckpt, "--split", "val", "--limit", "1", "--no-dense",
                "--json", str(json), *(["--confusion", str(png)] if rng.random() < 0.5 else [])]  # fmt: skip
        may_change = {json, png} if overwrite else set()
    elif command == "predict":
        inputs = [str(rng.choice(existing)) for _ in range(rng.randint(1, 3))]
        out = rng.choice([folder / "pred", folder, folder / "in", a_path(rng, folder, existing)])
        argv = ["predict", "--checkpoint", ckpt, *inputs, "--out", str(out), "--stage", "crf"]
        argv += rng.choice([[], ["--max-size", rng.choice(["0", "8", "40"])], ["--save-probs"]])
        may_change = set(Path(out).rglob("*")) if overwrite else set()
    elif command == "export":
        out = a_path(rng, folder, existing)
        size = [str(rng.choice([16, 64, 96])), str(rng.choice([32, 64]))]
        argv = ["export", "--checkpoint", ckpt, "--out", str(out), "--size", *size]
        may_change = {out} if overwrite else set()
    elif command == "tune-dense-crf":
        out = a_path(rng, folder, existing)
        argv = ["tune-dense-crf", "--checkpoint", ckpt, "--split", "val", "--limit", "1",
                "--bi-weights", rng.choice(["3", "-1", "nan"]), "--iterations", "1",
                "--json", str(out)]  # fmt: skip
        may_change = {out} if overwrite else set()
    elif command == "calibrate":
        out = a_path(rng, folder, existing) if rng.random() < 0.7 else None
        argv = ["calibrate", "--checkpoint", ckpt, "--limit", "1", "--steps", "1"]
        argv += ["--out", str(out)] if out else []
        may_change = {Path(ckpt)} if out is None else set()
    else:
        out = rng.choice([folder / "run", folder, folder / "new" / "run"])
        extra = rng.choice([[], ["--resume"], ["data.num_workers=-1"], ["train.lrr=1"]])
        flags = [e for e in extra if e.startswith("--")]
        sets = [e for e in extra if not e.startswith("--")]
        argv = ["train", "--config", "demo", "--data-root", str(data), "--out", str(out),
                *flags, "--set", *TINY, *sets]  # fmt: skip
        may_change = set(Path(out).glob("*")) if overwrite or flags else set()
    argv += overwrite if command != "calibrate" else []
    quiet = command in ("evaluate", "predict", "tune-dense-crf", "train")
    return [*argv, "--quiet"] if quiet else argv, may_change


@pytest.fixture()
def world(tmp_path, camvid_run, checkpoint):
    """A user's folder: images of every mode, odd names, earlier outputs, a run, notes."""
    folder = tmp_path / "world"
    rng = random.Random(1)
    for name in NAMES[:4] + ["in/a.png", "in/b.jpg"]:
        image_file(rng, folder / name)
    (folder / "notes.txt").write_text("years of work")
    (folder / "m.json").write_text("{}")
    shutil.copytree(camvid_run, folder / "run")
    shutil.copy(checkpoint, folder / "model.pt")  # what calibrate may update in place
    return folder


@pytest.mark.parametrize("seed", range(CASES))
def test_exit_0_or_one_line_and_nothing_lost(seed, world, camvid_data, capsys):
    rng = random.Random(seed)
    argv, may_change = case(rng, world, world / "model.pt", camvid_data)
    before = snapshot(world)
    status = main(argv)
    err = capsys.readouterr().err
    command = shlex.join(argv)
    assert status in (0, 2), f"{command}: exit {status}\n{err}"
    if status == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{command}\n{err}"
    assert "Traceback" not in err, f"{command}\n{err}"
    after = snapshot(world)
    changed = {p for p, h in before.items() if after.get(p) != h}
    allowed = {p.resolve() for p in may_change}
    lost = [p for p in changed if p.resolve() not in allowed and p not in may_change]
    assert not lost, f"{command} changed {lost}"
