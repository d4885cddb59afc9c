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
import torch

from piecewise_crf.checkpoint import load_checkpoint, model_from_checkpoint
from piecewise_crf.config import load_config
from piecewise_crf.evaluate import CRFSetting, predict_stages
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

    ckpt = load_checkpoint(args.checkpoint)
    model, config = model_from_checkpoint(ckpt, str(args.checkpoint))
    model.eval()
    data = open_dataset(
        config.data.dataset, args.data_root, args.split, num_classes=config.model.num_classes
    )
    if args.config:
        chosen = load_config(args.config)
        config.crf, config.dense_crf = chosen.crf, chosen.dense_crf
        model.set_prediction_box(config.crf.box_fraction)
    crf = CRFSetting.from_config(config.crf)
    palette = np.asarray(ckpt["palette"], dtype=np.uint8)

    def rgb(labels: np.ndarray) -> np.ndarray:
        return np.asarray(colorize(labels, palette).convert("RGB"))

    rows = []
    for i in np.linspace(0, len(data) - 1, args.count).round().astype(int):
        image, label = data[int(i)]
        with torch.no_grad():
            probs = predict_stages(model, image, {"crf": crf}, config.dense_crf)
        panels = [(image.permute(1, 2, 0) * 255).round().byte().numpy(), rgb(label.numpy())]
        panels += [rgb(probs[s].argmax(0).numpy()) for s in ("unary", "crf", "crf+dense")]
        rows.append(panels)
    args.out.mkdir(parents=True, exist_ok=True)
    examples = args.out / "camvid_val_examples.png"
    example_grid(rows, TITLES).save(examples, optimize=True)
    print(f"wrote {examples} (CRF {crf})")
    curves = args.checkpoint.parent / "curves.png"
    if curves.is_file():
        shutil.copy(curves, args.out / "camvid_curves.png")
        print(f"wrote {args.out / 'camvid_curves.png'}")


if __name__ == "__main__":
    main()
