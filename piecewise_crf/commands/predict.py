"""`piecewise-crf predict`: a palette PNG per image file, a colour overlay, optional probabilities.

No file a user had is lost: predictions never go into an input folder, files already in the output
folder are replaced only when asked, and every file is written atomically (`atomic_write`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from piecewise_crf.config import setting_overrides
from piecewise_crf.data.io import IMAGE_SUFFIXES, open_rgb
from piecewise_crf.files import atomic_write, ensure_writable
from piecewise_crf.inference import Predictor
from piecewise_crf.outputs import OutputPlan, locked
from piecewise_crf.visualize import colorize, overlay, save_png

MIN_MAX_SIZE = 32  # 2x2 CRF nodes at the network's stride of 16
SHOWN_SKIPS = 5  # unreadable images named in the error message; the exception holds them all


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (non-recursively) in the given folders, each once."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {item}")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    unique: dict[Path, Path] = {}  # `in in/x.png` names in/x.png twice
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


@dataclass(frozen=True)
class Job:
    """One input image and the files predicted from it."""

    source: Path
    name: str  # the source relative to the inputs' common folder: how messages name it
    label: Path
    overlay: Path
    probs: Path | None

    @property
    def outputs(self) -> list[Path]:
        return [p for p in (self.label, self.overlay, self.probs) if p is not None]


class SkippedImagesError(ValueError):
    """Some images could not be read; all the others were predicted.

    `written`: the label PNGs written; `skipped`: (name, reason) for every unreadable image.
    """

    def __init__(
        self, written: list[Path], skipped: list[tuple[str, str]], total: int, out: Path
    ) -> None:
        self.written, self.skipped = written, skipped
        shown = ", ".join(f"{name} ({reason})" for name, reason in skipped[:SHOWN_SKIPS])
        more = f" and {len(skipped) - SHOWN_SKIPS} more" if len(skipped) > SHOWN_SKIPS else ""
        super().__init__(
            f"{len(skipped)} of {total} images could not be read and were skipped: {shown}{more}; "
            f"the other {len(written)} were predicted into {out}"
        )


def plan_outputs(files: Sequence[Path], out: Path, save_probs: bool) -> list[Job]:
    """The output files of every image: its path relative to the deepest folder holding all the
    inputs, under `out` (flat for one folder, mirrored folders for several). Two images that
    would write the same file are a ValueError naming both."""
    base = os.path.commonpath([os.path.abspath(p.parent) for p in files])
    jobs, owners = [], {}
    for path in files:
        rel = Path(os.path.relpath(os.path.abspath(path), base))
        stem = out / rel.with_suffix("")
        job = Job(
            path,
            str(rel),
            stem.with_name(f"{stem.name}.png"),
            stem.with_name(f"{stem.name}_overlay.png"),
            stem.with_name(f"{stem.name}_probs.npy") if save_probs else None,
        )
        for target in job.outputs:
            if target in owners:
                raise ValueError(
                    f"{owners[target].source} and {path} would both be predicted to {target}; "
                    "rename one of them or predict them into separate --out folders"
                )
            owners[target] = job
        jobs.append(job)
    return jobs


def check_outputs(jobs: Sequence[Job], out: Path, overwrite: bool) -> None:
    """ValueError unless every output is safe to write: `out` a folder (or missing), no output in
    an input folder (resolved: `./in`, `in/` and symlinks to it are the same), and no existing
    file replaced without `overwrite`."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a folder path")
    sources = [job.source for job in jobs]
    inputs = {p.parent.resolve() for p in sources} | {p.resolve().parent for p in sources}
    if out.resolve() in inputs:
        raise ValueError(
            f"--out {out} is an input folder: predictions would overwrite the images; "
            "choose another --out"
        )
    for target in (t for job in jobs for t in job.outputs):
        if target.resolve().parent in inputs:
            raise ValueError(
                f"--out {out} would write {target} into an input folder: predictions would "
                "overwrite or mix with the images; choose another --out"
            )
    existing = [t for job in jobs for t in job.outputs if os.path.lexists(t)]
    if existing and not overwrite:
        raise ValueError(
            f"--out {out} already holds {len(existing)} of the files this would write "
            f"(e.g. {existing[0].relative_to(out)}); pass --overwrite to replace them, "
            "or choose another --out"
        )


def read_image(path: Path) -> Image.Image:
    """The RGB image; ValueError with a one-line reason when it cannot be decoded."""
    try:
        return open_rgb(path)
    except ValueError as err:
        raise ValueError(f"cannot read image: {err.__cause__ or err}") from err


def shrink(image: Image.Image, max_size: int) -> Image.Image:
    """The image with its longer side at most `max_size` (0: any), aspect ratio kept."""
    scale = max_size / max(image.size) if max_size else 1.0
    if scale >= 1:
        return image
    size = tuple(max(1, round(side * scale)) for side in image.size)
    return image.resize(size, Image.Resampling.BILINEAR)  # PIL widens the filter: antialiased


def run(args: argparse.Namespace) -> None:
    written = predict_files(args)
    print(f"{len(written)} predictions written to {args.out}")


def predict_files(args: argparse.Namespace) -> list[Path]:
    """Writes <stem>.png, <stem>_overlay.png (and <stem>_probs.npy, float32 (K, h, w)) for every
    input image; returns the label PNG paths.

    Images from one folder are written flat into --out (in/x.png -> out/x.png); images from
    several folders under their paths relative to the folders' common parent (a/x.png ->
    out/a/x.png, b/x.png -> out/b/x.png). Refused before the model is loaded: --out being an
    input folder, two images writing the same file, and, without --overwrite, files already in
    --out. An image whose longer side exceeds --max-size (0: no limit) is downscaled for the
    network and both CRFs; labels and overlays are written at its original size, probabilities
    at the processed size. Unreadable images are skipped; SkippedImagesError (a ValueError)
    follows the others' predictions.
    """
    settings = setting_overrides(args.overrides)
    max_size = args.max_size
    if max_size < 0 or 0 < max_size < MIN_MAX_SIZE:
        raise ValueError(
            f"--max-size must be 0 (no limit) or at least {MIN_MAX_SIZE} pixels, got {max_size}"
        )
    out = Path(args.out)
    jobs = plan_outputs(collect_images(args.inputs), out, args.save_probs)
    check_outputs(jobs, out, args.overwrite)
    plan = OutputPlan()
    plan.read(args.checkpoint, *(job.source for job in jobs))
    for job in jobs:
        for path in job.outputs:
            plan.write(path, "out", suffix=path.suffix.lower(), replace=args.overwrite)
    plan.check()
    predictor = Predictor.from_checkpoint(
        args.checkpoint,
        device=args.device,
        scales=args.scales,
        flip=args.flip,
        **settings,
    )
    ensure_writable(out)
    with locked(out, "out"):  # a second predict into --out is refused, not mixed in
        plan.folders()
        return _predict_jobs(jobs, predictor, args, out)


def _predict_jobs(jobs: Sequence[Job], predictor: Predictor, args: argparse.Namespace, out: Path):
    """Predict every job's image and write its files; skipped images reported at the end."""
    max_size = args.max_size
    written, skipped, downscaled = [], [], 0
    bar = tqdm(jobs, desc="predict", disable=args.quiet, dynamic_ncols=True)
    for job in bar:
        try:
            picture = read_image(job.source)
        except ValueError as err:
            skipped.append((job.name, str(err)))
            continue
        small = shrink(picture, max_size)
        downscaled += small is not picture
        probs = predictor(np.asarray(small), stages=args.stage)[args.stage]
        write_prediction(job, picture, probs, predictor.palette)
        written.append(job.label)
    if downscaled:
        print(
            f"note: {downscaled} of {len(jobs)} images were larger than {max_size} px and were "
            "downscaled for prediction; labels and overlays are at the original size"
        )
    if skipped:
        raise SkippedImagesError(written, skipped, len(jobs), out)
    return written


def write_prediction(job: Job, picture: Image.Image, probs, palette: np.ndarray) -> None:
    """The label PNG (at the picture's size), the overlay and the probabilities of one image."""
    label = colorize(probs.argmax(0).cpu().numpy(), palette)
    if label.size != picture.size:
        label = label.resize(picture.size, Image.Resampling.NEAREST)
    save_png(label, job.label)
    save_png(overlay(picture, label), job.overlay)
    if job.probs is not None:
        array = probs.float().cpu().numpy()
        atomic_write(job.probs, lambda f: np.save(f, array))
