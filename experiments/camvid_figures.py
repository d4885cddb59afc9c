"""The docs' figures of a trained CamVid model: val examples side by side, and its curves.

    python -m experiments.camvid_figures --checkpoint runs/camvid/final.pt \
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

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.config import load_config, prediction_settings
from piecewise_crf.evaluation import describe, open_dataset
from piecewise_crf.inference import Predictor
from piecewise_crf.visualize import colorize, example_grid, save_png

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

    ckpt = load_checkpoint(args.checkpoint)
    chosen = prediction_settings(load_config(args.config)) if args.config else {}
    predictor = Predictor.from_checkpoint(ckpt, **chosen)
    data = open_dataset(ckpt.config, args.split, root=args.data_root)
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
    save_png(example_grid(rows, TITLES), examples)
    print(f"wrote {examples} (CRF {describe(predictor.crf)})")
    curves = args.checkpoint.parent / "curves.png"
    if curves.is_file():
        shutil.copyfile(curves, args.out / "camvid_curves.png")
        print(f"wrote {args.out / 'camvid_curves.png'}")


if __name__ == "__main__":
    main()
