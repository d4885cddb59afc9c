"""`piecewise-crf demo`: train the demo preset on the synthetic context set, evaluate, report.

On the synthetic set an object's class is decided by a marker far above it, out of the unary
net's reach, so the gap between the unary and CRF columns of the report is the pairwise
potentials' contribution.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from piecewise_crf.config import demo_config
from piecewise_crf.evaluate import plot_confusion, score, summarise, write_json
from piecewise_crf.inference import Predictor
from piecewise_crf.report import save_example, write_report
from piecewise_crf.runtime import ensure_writable, open_dataset
from piecewise_crf.train import fit_epochs, train

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


def run_demo(
    out: str | Path = "demo_out", minutes: float | None = None, *, overwrite: bool = False
) -> dict[str, Any]:
    """Train, evaluate (unary, CRF, CRF + dense CRF) and write out/report/index.html.

    A folder from an earlier demo is replaced; any other non-empty folder only with `overwrite`.
    """
    out = Path(out)
    check_demo_folder(out, overwrite)
    ensure_writable(out)
    (out / MARKER).touch()
    config = demo_config()
    if minutes is not None:
        config.train.epochs = fit_epochs(config, minutes)
    print(f"training the demo model for {config.train.epochs} epochs into {out / 'run'}")
    tic = time.perf_counter()
    train(config, out / "run", overwrite=True)  # the demo regenerates its own run folder
    trained = time.perf_counter() - tic

    predictor = Predictor.from_checkpoint(out / "run" / "final.pt")
    config = predictor.config
    val = open_dataset(config.data.dataset, None, config.data.val_split)
    matrices = score(predictor, val, progress=True)
    results = summarise(matrices, val.classes)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    write_json(results, report / "metrics.json")
    plot_confusion(matrices, val.classes, report / "confusion.png")

    palette = predictor.palette
    examples = []
    for i in range(min(EXAMPLES, len(val))):
        image, label = val[i]
        probs = predictor(image[None])
        rgb = (image.permute(1, 2, 0) * 255).round().byte().numpy()
        predictions = {s: p[0].argmax(0).cpu().numpy() for s, p in probs.items()}
        examples.append(
            save_example(report / "examples", val.name(i), rgb, label.numpy(), predictions, palette)
        )

    unary, crf_miou = results["unary"]["mean_iou"], results["crf"]["mean_iou"]
    intro = (
        f"Demo preset on the synthetic context dataset: {config.train.epochs} epochs "
        f"({trained / 60:.1f} min on this machine), evaluated on the {len(val)} validation "
        "images at full resolution. An object's class (object_a / object_b) is decided only by "
        "the coloured marker 64-80 px above it, beyond the unary net's receptive field, so "
        "only the pairwise potentials can tell the two apart: compare the unary and CRF columns. "
        "CRF settings: "
        f"{config.crf.iterations} mean-field iterations, {config.crf.pairwise_mode} pairwise "
        f"scores at scale {config.crf.pairwise_scale:g}."
    )
    path = write_report(
        report,
        title="piecewise-crf demo",
        intro=intro,
        results=results,
        classes=val.classes,
        palette=palette,
        examples=examples,
        figures=[
            ("Training curves", out / "run" / "curves.png"),
            ("Confusion matrices (rows: true class, normalised)", report / "confusion.png"),
        ],
    )
    line = f"mean IoU on val: unary {100 * unary:.1f}, CRF {100 * crf_miou:.1f}"
    if "crf+dense" in results:
        line += f", CRF + dense CRF {100 * results['crf+dense']['mean_iou']:.1f}"
    print(line)
    print(f"report: {path.resolve()}")
    return results
