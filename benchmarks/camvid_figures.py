"""README figures for a trained CamVid model: val examples side by side, and its training curves.

    python benchmarks/camvid_figures.py --checkpoint runs/camvid/final.pt \
        --data-root ../shared/data/camvid --out docs

Writes OUT/camvid_val_examples.png (input, ground truth, unary, CRF, CRF + dense CRF for a few
val images spread over the split) and copies the run's curves.png to OUT/camvid_curves.png.
The CRF and dense-CRF stages use the checkpoint's settings, or the crf and dense_crf sections
of --config (settings chosen on val after training).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from piecewise_crf.config import load_config
from piecewise_crf.evaluate import describe
from piecewise_crf.inference import Predictor
from piecewise_crf.predict import colorize
from piecewise_crf.report import example_grid
from piecewise_crf.runtime import open_dataset

TITLES = ("input", "ground truth", "unary", "CRF", "CRF + dense CRF")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--count", type=int, default=4, help="examples (rows)")
    parser.add_argument("--config", help="YAML whose crf and dense_crf sections to use instead")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()

    predictor = Predictor.from_checkpoint(args.checkpoint)
    config = predictor.config
    data = open_dataset(
        config.data.dataset, args.data_root, args.split, num_classes=config.model.num_classes
    )
    if args.config:
        chosen = load_config(args.config)
        predictor.crf, predictor.dense = chosen.crf, chosen.dense_crf
    palette = predictor.palette

    def rgb(labels: np.ndarray) -> np.ndarray:
        return np.asarray(colorize(labels, palette).convert("RGB"))

    rows = []
    for i in np.linspace(0, len(data) - 1, args.count).round().astype(int):
        image, label = data[int(i)]
        probs = predictor(image[None], ("unary", "crf", "crf+dense"))
        panels = [(image.permute(1, 2, 0) * 255).round().byte().numpy(), rgb(label.numpy())]
        panels += [rgb(probs[s][0].argmax(0).cpu().numpy()) for s in ("unary", "crf", "crf+dense")]
        rows.append(panels)
    args.out.mkdir(parents=True, exist_ok=True)
    examples = args.out / "camvid_val_examples.png"
    example_grid(rows, TITLES).save(examples, optimize=True)
    print(f"wrote {examples} (CRF {describe(predictor.crf)})")
    curves = args.checkpoint.parent / "curves.png"
    if curves.is_file():
        shutil.copy(curves, args.out / "camvid_curves.png")
        print(f"wrote {args.out / 'camvid_curves.png'}")


if __name__ == "__main__":
    main()
