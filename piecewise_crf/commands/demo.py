"""`piecewise-crf demo`: train the demo config on the synthetic context set, evaluate, report.

On the synthetic set an object's class is decided by a marker far above it, out of the unary
net's reach, so the gap between the unary and CRF columns of the report is the pairwise
potentials' contribution.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from piecewise_crf.config import Config, load_config
from piecewise_crf.evaluation import open_dataset, plot_confusion, score, summarise
from piecewise_crf.files import ensure_writable, write_json
from piecewise_crf.inference import Predictor
from piecewise_crf.model import build_model
from piecewise_crf.report import save_example, write_report
from piecewise_crf.training.loop import train, training_set
from piecewise_crf.training.losses import piecewise_loss
from piecewise_crf.training.optim import freeze_layers

EXAMPLES = 4
MARKER = ".piecewise-crf-demo"  # marks a folder the demo made, which a later demo may replace


def check_demo_folder(out: Path, overwrite: bool) -> None:
    """Refuse an --out that holds anything but an earlier demo, unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"demo --out {out} is a file; choose a folder")
    if overwrite or not out.exists() or (out / MARKER).exists():
        return
    found = sorted(p.name for p in out.iterdir())
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise FileExistsError(
            f"demo --out {out} already holds files the demo did not make ({shown}); choose "
            "another --out, or pass --overwrite to replace its run/ and report/"
        )


def fit_epochs(config: Config, minutes: float) -> int:
    """Epochs that fit a time budget (training, its validations and a final evaluation with the
    dense CRF), from timing a few training steps and one prediction on this machine."""
    data = training_set(config)
    tc = config.train
    classes = dataclasses.replace(config.model, num_classes=len(data.classes))
    model = build_model(classes, load_weights=False)
    freeze_layers(model, tc.freeze_layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # timing only: weights stay put
    times = []
    for k in range(6):  # the first two steps are slow (lazy imports, allocator): skip them
        tic = time.perf_counter()
        batch = [data[(k * tc.batch_size + i) % len(data)] for i in range(tc.batch_size)]
        images, labels = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        piecewise_loss(model, images, labels, tc).total.backward()
        optimizer.step()
        times.append(time.perf_counter() - tic)
    step = statistics.median(times[2:])
    val = open_dataset(config, config.data.val_split)
    model.eval()
    tic = time.perf_counter()
    Predictor(model, crf=config.crf)(val[0][0][None], ("crf",))
    per_image = time.perf_counter() - tic
    epoch = math.ceil(len(data) / tc.batch_size) * step + len(val) * per_image / tc.val_every
    final = len(val) * (per_image + 0.3)  # the last evaluation adds the dense CRF
    return max(1, int((60 * minutes - final) / epoch))


def run(args: argparse.Namespace) -> None:
    """Train, evaluate (unary, CRF, CRF + dense CRF) and write OUT/report/index.html.

    A folder from an earlier demo is replaced; any other non-empty folder only with --overwrite.
    """
    out = Path(args.out)
    check_demo_folder(out, args.overwrite)
    ensure_writable(out)
    (out / MARKER).touch()
    config = load_config("demo")
    if args.minutes is not None:
        config.train.epochs = fit_epochs(config, args.minutes)
    print(f"training the demo model for {config.train.epochs} epochs into {out / 'run'}")
    tic = time.perf_counter()
    train(config, out / "run", overwrite=True)  # the demo regenerates its own run folder
    trained = time.perf_counter() - tic

    predictor = Predictor.from_checkpoint(out / "run" / "final.pt")
    val = open_dataset(config, config.data.val_split)
    with tqdm(total=len(val), desc="evaluate", dynamic_ncols=True) as bar:
        matrices = score(predictor, val, progress=bar.update)
    results = summarise(matrices, val.classes)
    report = out / "report"
    write_json(results, report / "metrics.json")
    plot_confusion(matrices, val.classes, report / "confusion.png")
    examples = []
    for i in range(min(EXAMPLES, len(val))):
        image, label = val[i]
        probs = predictor(image[None])
        rgb = (image.permute(1, 2, 0) * 255).round().byte().numpy()
        predictions = {s: p[0].argmax(0).cpu().numpy() for s, p in probs.items()}
        folder = report / "examples"
        examples.append(
            save_example(folder, val.name(i), rgb, label.numpy(), predictions, predictor.palette)
        )
    path = write_report(
        report,
        title="piecewise-crf demo",
        intro=_intro(config, trained, len(val)),
        results=results,
        classes=val.classes,
        palette=predictor.palette,
        examples=examples,
        figures=[
            ("Training curves", out / "run" / "curves.png"),
            ("Confusion matrices (rows: true class, normalised)", report / "confusion.png"),
        ],
    )
    line = ", ".join(
        f"{title} {100 * results[stage]['mean_iou']:.1f}"
        for stage, title in (("unary", "unary"), ("crf", "CRF"), ("crf+dense", "CRF + dense CRF"))
        if stage in results
    )
    print(f"mean IoU on val: {line}")
    print(f"report: {path.resolve()}")


def _intro(config: Config, seconds: float, images: int) -> str:
    return (
        f"The demo config on the synthetic context dataset: {config.train.epochs} epochs "
        f"({seconds / 60:.1f} min on this machine), evaluated on the {images} validation "
        "images at full resolution. An object's class (object_a / object_b) is decided only by "
        "the coloured marker 64-80 px above it, beyond the unary net's receptive field, so "
        "only the pairwise potentials can tell the two apart: compare the unary and CRF columns. "
        f"CRF settings: {config.crf.iterations} mean-field iterations, "
        f"{config.crf.pairwise_mode} pairwise scores at scale {config.crf.pairwise_scale:g}."
    )
