"""A self-contained HTML report: metrics per stage, training curves, example predictions.

Images sit next to the HTML and are linked by relative paths, so the folder opens in a browser
straight from the file system (and can be moved or zipped as a whole).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from piecewise_crf.files import atomic_write, atomic_write_text
from piecewise_crf.visualize import colorize, save_png

STAGE_TITLES = {"unary": "unary", "crf": "CRF (mean-field)", "crf+dense": "CRF + dense CRF"}


def _pct(value: float | None) -> str:
    return "&ndash;" if value is None else f"{100 * value:.1f}"


def metrics_table(results: dict[str, dict[str, Any]], classes: Sequence[str]) -> str:
    """HTML table: the summary metrics, then per-class IoU, one column per stage."""
    stages = list(results)
    head = "".join(f"<th>{html.escape(STAGE_TITLES.get(s, s))}</th>" for s in stages)
    rows = []
    for key, label in [
        ("mean_iou", "mean IoU"),
        ("pixel_accuracy", "pixel accuracy"),
        ("mean_accuracy", "mean accuracy"),
        ("frequency_weighted_iou", "freq. weighted IoU"),
    ]:
        cells = "".join(f"<td>{_pct(results[s][key])}</td>" for s in stages)
        rows.append(f'<tr class="summary"><th>{label}</th>{cells}</tr>')
    for i, name in enumerate(classes):
        cells = "".join(f"<td>{_pct(results[s]['per_class_iou'][i])}</td>" for s in stages)
        rows.append(f"<tr><th>IoU {html.escape(name)}</th>{cells}</tr>")
    return f"<table><tr><th>%</th>{head}</tr>{''.join(rows)}</table>"


def save_example(
    folder: Path,
    name: str,
    image: np.ndarray,
    label: np.ndarray,
    predictions: dict[str, np.ndarray],
    palette: np.ndarray,
) -> dict[str, str]:
    """Write one example's PNGs (input, ground truth, one per stage); returns column -> file name."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"input": f"{name}_input.png", "ground truth": f"{name}_gt.png"}
    save_png(Image.fromarray(image), folder / files["input"])
    save_png(colorize(label, palette), folder / files["ground truth"])  # ignore (255) is black
    for stage, labels in predictions.items():
        files[STAGE_TITLES.get(stage, stage)] = f"{name}_{stage.replace('+', '_')}.png"
        save_png(colorize(labels, palette), folder / files[STAGE_TITLES.get(stage, stage)])
    return files


def legend(classes: Sequence[str], palette: np.ndarray) -> str:
    items = "".join(
        f'<span class="swatch" style="background: rgb{tuple(int(c) for c in palette[i])}"></span>'
        f"{html.escape(name)}"
        for i, name in enumerate(classes)
    )
    return (
        f'<p class="legend">{items}<span class="swatch" style="background: #000"></span>ignore</p>'
    )


def write_report(
    out: str | Path,
    *,
    title: str,
    intro: str,
    results: dict[str, dict[str, Any]],
    classes: Sequence[str],
    palette: np.ndarray,
    examples: Sequence[dict[str, str]],
    figures: Sequence[tuple[str, Path]] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Write out/index.html; `examples` are `save_example` results for images under out/examples,
    `figures` (caption, PNG path) are copied beside the HTML."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{intro}</p>"]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    parts += ["<h2>Metrics</h2>", metrics_table(results, classes)]
    for caption, path in figures:
        if path.is_file():
            if path.resolve() != (out / path.name).resolve():
                atomic_write(out / path.name, lambda f, path=path: f.write(path.read_bytes()))
            parts.append(
                f"<h2>{html.escape(caption)}</h2><img class='figure' src='{path.name}' alt='{caption}'>"
            )
    if examples:
        columns = list(examples[0])
        parts.append("<h2>Examples</h2>" + legend(classes, palette))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        rows = "".join(
            "<tr>"
            + "".join(f"<td><img src='examples/{e[c]}' alt='{c}'></td>" for c in columns)
            + "</tr>"
            for e in examples
        )
        parts.append(f'<table class="examples"><tr>{head}</tr>{rows}</table>')
    style = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 80em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child { text-align: left; }
tr.summary { font-weight: bold; background: #f4f4f4; }
img.figure { max-width: 100%; }
table.examples td, table.examples th { text-align: center; }
table.examples img { width: 192px; image-rendering: pixelated; }
.legend { line-height: 2; }
.swatch { display: inline-block; width: 1em; height: 1em; margin: 0 0.3em 0 1em;
          vertical-align: middle; border: 1px solid #888; }
.note { color: #a60; }
"""
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    path = out / "index.html"
    atomic_write_text(page, path)
    return path
