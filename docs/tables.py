"""The tables of docs/*.md, generated from the result files under benchmarks/results.

    python docs/tables.py           # rewrite every table region of docs/*.md
    python docs/tables.py --check   # list the stale tables and exit 1; write nothing

A region is the lines between `<!-- table: NAME -->` and `<!-- end table -->`; its content is
what the generator NAME (the dict GENERATORS at the end) returns. Every number in a table is read
from a file here, never typed: a rerun that rewrites a result file changes its tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python docs/tables.py`: the repo root is not on the path
    sys.path.insert(0, str(ROOT))

from experiments.ablation import seed_records  # noqa: E402
from experiments.ablation import table as ablation_table  # noqa: E402
from piecewise_crf.config import load_config  # noqa: E402
from piecewise_crf.relations import box_side, build_relations  # noqa: E402

DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
ROTATION = RESULTS / "rotation"
DRIVES = ("0001TP", "0006R0")
STAGES = ("unary", "crf", "crf+dense")
REGION = re.compile(r"(<!-- table: (\S+) -->\n)(.*?)(<!-- end table -->)", re.S)


# --- reading and formatting ---------------------------------------------------------------------


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def log_rows(name: str) -> list[dict[str, str]]:
    """The rows of a training log.csv under benchmarks/results."""
    with open(RESULTS / name, newline="") as f:
        return list(csv.DictReader(f))


def validations(name: str) -> list[dict[str, str]]:
    return [r for r in log_rows(name) if r["val_unary_miou"]]


def calibration_fits(name: str) -> dict[str, dict]:
    """{mode: {"weights": {relation: [w]}, "unary", "loss": float, "kept": bool}} from the log of
    a `calibrate` run."""
    fits = {}
    pattern = r"(raw|interaction)\s+unary ([\d.]+) .* calibrated ([\d.]+)\s+weights (\{.*\})(\s+<- kept)?$"
    for line in (RESULTS / name).read_text().splitlines():
        match = re.match(pattern, line)
        if match:
            weights = json.loads(match[4].replace("'", '"'))
            fits[match[1]] = {
                "weights": weights,
                "unary": float(match[2]),
                "loss": float(match[3]),
                "kept": bool(match[5]),
            }
    return fits


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def gain(before: float, after: float) -> str:
    text = f"{100 * (after - before):+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def miou(metrics: dict) -> float:
    return metrics["mean_iou"]


def stages(scores: dict, names: Sequence[str] = STAGES) -> str:
    """'unary / crf / crf+dense' mIoU of an evaluate JSON (its stages present)."""
    return " / ".join(pct(miou(scores[s])) for s in names if s in scores)


def weights(fit: dict) -> str:
    """'above_below / surrounding' weights of a calibration fit."""
    w = fit["ring_weights"] if "ring_weights" in fit else fit["weights"]
    return " / ".join(f"{w[r][0]:.3g}" for r in ("above_below", "surrounding"))


def swept(scores: dict, mode: str | None = None) -> dict[str, dict]:
    """{"mode xS": metrics} of the `--pairwise-scales` sweep in an evaluate JSON."""
    found = {}
    for key, value in scores.items():
        match = re.fullmatch(r"crf\[(\w+),([\d.e-]+)\]", key)
        if match and mode in (None, match[1]):
            found[f"{match[1]} x{match[2]}"] = value
    return found


def best(sweep: dict[str, dict]) -> tuple[str, dict]:
    return max(sweep.items(), key=lambda item: miou(item[1]))


def markdown(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine(*infos: dict | str) -> str:
    """One line naming the machine(s) of the JSON files behind a table."""
    names = []
    for info in infos:
        if isinstance(info, str):
            text = info
        else:
            threads = info["torch_threads"]
            text = f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
            text += f"{threads} thread{'s' if threads > 1 else ''}"
            text += f", GPU {info['gpu']}" if "gpu" in info else ""
        if text not in names:
            names.append(text)
    return "Machine: " + "; ".join(names) + "."


# --- CamVid: the recipe on val ------------------------------------------------------------------


def camvid_val() -> str:
    d = load("camvid_val.json")
    rows = []
    for stage in STAGES:
        m, three = d["val"][stage], d["val_with_3_iterations"][stage]
        rows.append(
            [
                stage,
                f"{100 * miou(m):.2f}",
                f"{100 * miou(three):.2f}",
                pct(m["pixel_accuracy"]),
                pct(m["mean_accuracy"]),
            ]
        )
    note = (
        f"Trained in {d['train_wall_minutes']} min, val scored in "
        f"{d['evaluate_wall_seconds'] / 60:.1f} min; {d['timing_note']}. " + machine(d["machine"])
    )
    header = ["stage", "mIoU", "mIoU, 3 mean-field iterations", "pixel acc.", "mean acc."]
    return markdown(header, rows) + "\n\n" + note


def camvid_val_classes() -> str:
    val = load("camvid_val.json")["val"]
    classes = val["unary"]["classes"]
    rows = [[c, *(pct(val[s]["per_class_iou"][i]) for s in STAGES)] for i, c in enumerate(classes)]
    return markdown(["class (IoU)", *STAGES], rows)


def val_stages() -> str:
    cal = load("camvid_val_calibrated.json")
    fits = calibration_fits("camvid_calibrate_error_interaction.log")
    jitter = load("camvid_val_60_epochs_jitter.json")
    v45, v30 = load("camvid_val_45_epochs.json"), load("camvid_val_30_epochs.json")
    rows = [
        [
            "the recipe's model, `calibrate --objective error --modes interaction` "
            f"({weights(fits['interaction'])}), 3 iterations",
            stages(load("camvid_val_calibrated_error_interaction.json")),
            "camvid_val_calibrated_error_interaction.json",
        ],
        [
            f"the recipe's model, `calibrate` log-loss ({cal['crf']['pairwise_mode']} "
            f"{weights(cal['crf'])}), dense bi_weight {cal['dense_crf']['bi_weight']:g}",
            stages(cal["val"]),
            "camvid_val_calibrated.json",
        ],
        [
            "the recipe with colour jitter, 60 epochs, calibrated the same way",
            stages(jitter["val"]),
            "camvid_val_60_epochs_jitter.json",
        ],
        [
            f"previous recipe, {v45['train']['epochs']} epochs (settings chosen on val)",
            stages(v45["val_101_images"]["metrics"]),
            "camvid_val_45_epochs.json",
        ],
        [
            f"earlier recipe, {v30['train']['epochs']} epochs, no frozen layers",
            stages(v30["val_101_images"]),
            "camvid_val_30_epochs.json",
        ],
    ]
    table = markdown(["model and CRF setting", "val mIoU unary / CRF / CRF + dense", "file"], rows)
    return table + "\n\n" + machine(cal["machine"], jitter["machine"], v45["machine"])


# --- CamVid: the held-out drives ----------------------------------------------------------------


def _drive_cell(scores: dict, stage: str = "crf") -> str:
    u, c = miou(scores["unary"]), miou(scores[stage])
    return f"{pct(u)} / {pct(c)} ({gain(u, c)})"


def crf_weight() -> str:
    def run(drive: str, what: str) -> dict:
        return json.loads((ROTATION / f"epochs60_{drive}_{what}.json").read_text())

    def fits(drive: str, what: str) -> dict:
        path = f"rotation/epochs60_{drive}_cal_{what}.log"
        return calibration_fits(path) if (RESULTS / path).exists() else {}

    def sweep_cell(drive: str) -> str:
        scores = run(drive, "sweep")
        name, top = best(swept(scores))
        cell = f"{name} best: {pct(miou(scores['unary']))} / {pct(miou(top))}"
        cell += f" ({gain(miou(scores['unary']), miou(top))})"
        if name != "interaction x0.003":
            cell += f"; x0.003 {pct(miou(scores['crf[interaction,0.003]']))}"
        return cell

    def fitted(drive: str, log: str, mode: str | None, scored: str | None) -> str:
        found = fits(drive, log)
        mode = mode or next((m for m, f in found.items() if f["kept"]), None)
        if mode not in found:
            return "weights not logged" + (f": {_drive_cell(run(drive, scored))}" if scored else "")
        fit = found[mode]
        if scored:
            return f"{mode} {weights(fit)}: {_drive_cell(run(drive, scored))}"
        return f"{mode} {weights(fit)}; loss {fit['loss']:.3f}, the unary's {fit['unary']:.3f}"

    rows = [
        ["the sweep (interaction, 3 iterations)", *(sweep_cell(d) for d in DRIVES)],
        ["**the recipe: x0.003, 10 iterations**", *(_drive_cell(run(d, "recipe")) for d in DRIVES)],
        [
            "`calibrate` (log-loss, the default) on 8 training images",
            *(fitted(d, "train", None, "calibrated") for d in DRIVES),
        ],
        [
            "`calibrate` on 8 of the scored frames (the weight only, not scored)",
            *(fitted(d, "held", None, None) for d in DRIVES),
        ],
        [
            "`calibrate --objective error` on 8 training images (mode kept)",
            *(fitted(d, "error", None, "calibrated_error") for d in DRIVES),
        ],
        [
            "`calibrate --objective error --modes interaction`",
            *(fitted(d, "error", "interaction", "calibrated_error_interaction") for d in DRIVES),
        ],
    ]
    header = ["how the weight is set", "0001TP held out", "0006R0 held out"]
    return markdown(header, rows)


def held_out_stages() -> str:
    def cell(name: str) -> str:
        path = ROTATION / name
        return stages(json.loads(path.read_text())) if path.exists() else "not run"

    rows = [
        [
            "the recipe (x0.003, 10 iterations)",
            *(cell(f"epochs60_{d}_recipe.json") for d in DRIVES),
        ],
        [
            "the recipe, 3 iterations",
            *(cell(f"epochs60_{d}_recipe_3_iterations.json") for d in DRIVES),
        ],
        [
            "`calibrate` (log-loss) on 8 training images",
            *(cell(f"epochs60_{d}_calibrated.json") for d in DRIVES),
        ],
        [
            "224x320 crops for 30 epochs, `calibrate` (log-loss)",
            *(cell(f"crop224x320_epochs30_{d}_calibrated.json") for d in DRIVES),
        ],
    ]
    header = [
        "60-epoch model (unless said), CRF setting",
        *(f"{d}: unary / CRF / CRF + dense" for d in DRIVES),
    ]
    return markdown(header, rows)


def mean_field_stop() -> str:
    """The held-out drive scored with and without the early stop of mean-field."""

    def row(tolerance: str) -> list[str]:
        scores = load(f"tolerance/choice12_0001TP_tolerance{tolerance}.json")
        return [f"`crf.tolerance={tolerance}`", *(f"{100 * miou(scores[s]):.3f}" for s in STAGES)]

    header = ["12-epoch choice model, 0001TP", *(f"{s} mIoU" for s in STAGES)]
    return markdown(header, [row("0"), row("0.001")])


def held_out_box() -> str:
    """The held-out drive scored with smaller prediction boxes, the recipe's weight kept."""
    grid = (34, 45)  # CamVid's 480x360 frames at the recipe's scales

    def row(fraction: str) -> list[str]:
        scores = load(f"box/choice12_0001TP_box{fraction}.json")
        side = box_side(*grid, float(fraction))
        offsets = sum(
            len(r.offsets(*grid))
            for r in build_relations(
                load_config("camvid").model.relations, fraction=float(fraction)
            )
        )
        return [f"`--box-fraction {fraction}`", f"{side}x{side}", str(offsets), stages(scores)]

    header = [
        "12-epoch choice model, 0001TP",
        "box",
        "offsets (34x45 grid)",
        "mIoU unary / CRF / CRF + dense",
    ]
    return markdown(header, [row("0.4"), row("0.3"), row("0.25")])


def held_out_classes() -> str:
    sweep = json.loads((ROTATION / "epochs60_0001TP_sweep.json").read_text())
    error = json.loads((ROTATION / "epochs60_0001TP_calibrated_error.json").read_text())
    columns = [sweep["unary"], sweep["crf[interaction,0.003]"], error["crf"]]
    rows = [
        [c, *(pct(m["per_class_iou"][i]) for m in columns)]
        for i, c in enumerate(sweep["unary"]["classes"])
    ]
    header = [
        "0001TP, class IoU",
        "unary",
        "CRF x0.003, 3 iterations",
        "CRF `--objective error` (raw)",
    ]
    return markdown(header, rows)


def crf_attempts() -> str:
    def temperature(drive: str) -> str:
        d = json.loads((ROTATION / f"epochs60_{drive}_temperature.json").read_text())
        top = max(d["settings"], key=lambda s: s["miou"])
        return f"{gain(d['unary_miou'], top['miou'])} (A {top['A']:g}, x{top['R']:g}, T {top['T']})"

    def sweep(name: str, mode: str | None = None) -> str:
        path = ROTATION / name
        if not path.exists():
            return "not run"
        scores = json.loads(path.read_text())
        key, top = best(swept(scores, mode))
        return f"{gain(miou(scores['unary']), miou(top))} ({key})"

    def crf_stage(name: str) -> str:
        path = ROTATION / name
        if not path.exists():
            return "not run"
        scores = json.loads(path.read_text())
        return gain(miou(scores["unary"]), miou(scores["crf"]))

    def grid(drive: str) -> str:
        last = validations(f"rotation/scales2_{drive}_log.csv")[-1]
        return gain(float(last["val_unary_miou"]), float(last["val_crf_miou"]))

    rows = [
        [
            "the best swept weight, chosen on the scored frames (60 epochs)",
            *(sweep(f"epochs60_{d}_sweep.json") for d in DRIVES),
        ],
        ["a unary temperature A beside the weight (60 epochs)", *(temperature(d) for d in DRIVES)],
        [
            "`calibrate --rings 3` (12 epochs)",
            *(crf_stage(f"base_{d}_calibrated_rings3.json") for d in DRIVES),
        ],
        [
            "`calibrate`, one weight per relation (12 epochs)",
            *(crf_stage(f"base_{d}_calibrated.json") for d in DRIVES),
        ],
        [
            "pairwise scores as the PMI of the pair softmax (12 epochs)",
            *(sweep(f"pmi_sweep_{d}.json") for d in DRIVES),
        ],
        [
            "the 7x7 prediction box, `--box-fraction 0.2` (12 epochs)",
            *(sweep(f"box7x7_sweep_{d}.json") for d in DRIVES),
        ],
        ["a finer node grid, scales 2.0 and 1.0 (12 epochs, x0.003)", *(grid(d) for d in DRIVES)],
    ]
    header = [
        "what was tried (CRF stage's gain over its own unary)",
        *(f"{d} held out" for d in DRIVES),
    ]
    t = json.loads((ROTATION / "epochs60_0006R0_temperature.json").read_text())
    return (
        markdown(header, rows)
        + "\n\n"
        + machine(t["machine"]).replace("Machine", "Machine of the temperature runs")
    )


# --- CamVid: recipe options, measured on held-out drives -----------------------------------------

# label, --set added, {drive: source}; a source is a training log (the last validation's unary /
# CRF at x0.003) or an evaluate JSON of the same model on the same frames (unary / x0.003).
OPTIONS = [
    ("the recipe, 12 epochs", "(none)", {"0001TP": "camvid_choice_sweep_previous_recipe.json", "0006R0": "rotation/base_log.csv"}),
    ("+ colour jitter 0.4 / 0.4 / 0.4, hue 0.05", "`'data.colour_jitter=[0.4,0.4,0.4,0.05]'`", {"0001TP": "camvid_choice_sweep_jitter.json", "0006R0": "rotation/jitter_log.csv"}),
    ("+ wider scale jitter 0.5-2.0 (paper: 0.7-1.2)", "`'data.scale_range=[0.5,2.0]'`", {}),
    ("+ both", "both of the above", {}),
    ("FeatMap-Net trained by the unary NLL alone", "`train.detach_pairwise=true`", {d: f"rotation/detach_{d}_log.csv" for d in DRIVES}),
    ("224x320 crops at batch 2 (same pixels per step)", "`'data.crop_size=[224,320]' train.batch_size=2`", {d: f"rotation/crop224x320_{d}_log.csv" for d in DRIVES}),
    ("the recipe at 24 epochs", "`train.epochs=24 train.val_every=24`", {d: f"rotation/epochs24_{d}_log.csv" for d in DRIVES}),
    ("finer node grid, scales 2.0 and 1.0", "`'model.scales=[2.0,1.0]'`", {d: f"rotation/scales2_{d}_log.csv" for d in DRIVES}),
    ("**the recipe's 60 epochs**", "`train.epochs=60 train.val_every=12`", {d: f"rotation/epochs60_{d}_log.csv" for d in DRIVES}),
    ("224x320 crops for 30 epochs", "the crop row's, `train.epochs=30 train.val_every=10`", {"0006R0": "rotation/crop224x320_epochs30_0006R0_log.csv"}),
]  # fmt: skip


def option_scores(source: str) -> tuple[float, float, str, str]:
    """(unary, CRF) mIoU, the minutes of the run with its validations and the median seconds of
    an epoch without one ("-" for an evaluate JSON, which has no times)."""
    if source.endswith(".csv"):
        rows = log_rows(source)
        last = validations(source)[-1]
        minutes = sum(float(r["seconds"]) for r in rows) / 60
        plain = statistics.median(float(r["seconds"]) for r in rows if not r["val_unary_miou"])
        return (
            float(last["val_unary_miou"]),
            float(last["val_crf_miou"]),
            f"{minutes:.1f}",
            f"{plain:.0f}",
        )
    scores = load(source)
    return miou(scores["unary"]), miou(scores["crf[interaction,0.003]"]), "-", "-"


def recipe_options() -> str:
    base = {d: option_scores(OPTIONS[0][2][d])[0] for d in DRIVES}
    rows = []
    for i, (label, flags, sources) in enumerate(OPTIONS):
        cells, deltas, minutes, epoch = [], [], [], []
        for drive in DRIVES:
            if drive not in sources:
                cells.append("not run" if sources else "no file (see below)")
                deltas.append("-")
                minutes.append("-")
                epoch.append("-")
                continue
            unary, crf, took, median = option_scores(sources[drive])
            cells.append(f"{pct(unary)} / {pct(crf)}")
            deltas.append(gain(base[drive], unary))
            minutes.append(took)
            epoch.append(median)
        deltas = deltas if i else ["baseline"]
        rows.append(
            [label, *cells, " / ".join(deltas), " / ".join(minutes), " / ".join(epoch), flags]
        )
    header = [
        "option",
        "0001TP: unary / CRF",
        "0006R0: unary / CRF",
        "unary vs the recipe at 12 epochs",
        "minutes, validations included",
        "median s per epoch without validation",
        "`--set` added",
    ]
    return markdown(header, rows)


CURVES = {  # label: training log
    "the recipe, 0001TP held out": "rotation/epochs60_0001TP_log.csv",
    "the recipe, 0006R0 held out": "rotation/epochs60_0006R0_log.csv",
    "224x320 crops, 30 epochs, 0006R0 held out": "rotation/crop224x320_epochs30_0006R0_log.csv",
}
# label: tune-dense-crf JSON, on 20 choice-set frames
DENSE_TUNINGS = {
    "the recipe's 60-epoch choice model, CRF x0.003": "camvid_choice_dense_crf_60_epochs.json",
    "earlier: 12-epoch choice model, calibrated CRF": "camvid_choice_dense_crf.json",
    "earlier: 12-epoch jitter choice model, calibrated CRF": "camvid_choice_dense_crf_jitter.json",
}
CHOICE_SWEEPS = {  # label: evaluate --pairwise-scales JSON on the choice set
    "the recipe, 12 epochs": "camvid_choice_sweep_previous_recipe.json",
    "the recipe with colour jitter, 12 epochs": "camvid_choice_sweep_jitter.json",
    "the jitter recipe, 12 epochs, 5x5 box (`--box-fraction 0.15`)": "camvid_choice_sweep_jitter_box015.json",
}


def held_out_curves() -> str:
    rows = []
    for label, source in CURVES.items():
        found = validations(source)
        epochs = " / ".join(r["epoch"] for r in found)
        rows.append([label, epochs, " / ".join(pct(float(r["val_unary_miou"])) for r in found)])
    val = load("camvid_val.json")["in_training_validation"]
    points = sorted((int(k.split("_")[1]), v) for k, v in val.items() if k.startswith("epoch_"))
    rows.append(
        [
            "the recipe on val (all of train)",
            " / ".join(str(e) for e, _ in points),
            " / ".join(f"{v[0]:.1f}" for _, v in points),
        ]
    )
    return markdown(["run", "validated at epoch", "unary mIoU"], rows)


# --- CamVid: the dense CRF's parameters and the CRF on the choice set -------------------------------


def dense_crf_tuning() -> str:
    keys = ("bi_weight", "bi_xy_std", "bi_rgb_std", "pos_xy_std")
    rows = []
    for label, name in DENSE_TUNINGS.items():
        d = load(name)
        ranked = sorted(d["results"], key=lambda r: -miou(r))
        own = {k: v for k, v in d["checkpoint_dense_crf"].items() if k != "enabled"}
        rank = next(i for i, r in enumerate(ranked, 1) if r["params"] == own)
        base = miou(d["baseline"])
        top = ranked[0]
        rows.append(
            [
                label,
                f"{d['images']} of {d['split']}, {len(ranked)} settings",
                ", ".join(f"{k} {top['params'][k]:g}" for k in keys),
                f"{pct(base)} -> {pct(miou(top))} ({gain(base, miou(top))})",
                f"{', '.join(f'{k} {own[k]:g}' for k in keys)}: rank {rank}, "
                f"{gain(base, miou(ranked[rank - 1]))}",
            ]
        )
    header = [
        "model",
        "frames",
        "best setting",
        "CRF -> CRF + dense",
        "the checkpoint's setting then: rank, gain",
    ]
    return markdown(header, rows)


def choice_sweeps() -> str:
    rows = []
    for label, name in CHOICE_SWEEPS.items():
        d = load(name)
        top_name, top = best(swept(d))
        raw_name, raw = best(swept(d, "raw"))
        x3 = d["crf[interaction,0.003]"]
        rows.append(
            [
                label,
                pct(miou(d["unary"])),
                f"{pct(miou(top))} ({top_name})",
                pct(miou(x3)),
                f"{pct(miou(raw))} ({raw_name})",
                name,
            ]
        )
    header = ["choice model", "unary", "best swept CRF", "interaction x0.003", "best raw", "file"]
    return markdown(header, rows)


# --- method: the prediction box, piecewise vs joint, training steps --------------------------------


def prediction_box() -> str:
    v45, v30 = load("camvid_val_45_epochs.json"), load("camvid_val_30_epochs.json")
    seconds = v30["prediction_box"]["crf_seconds_per_image_1_thread"]
    trained, small = v45["val_101_images"]["metrics"], v45["val_101_images_box_5x5"]["metrics"]
    rows = []
    for box, metrics, setting in (
        ("0.4", trained, "interaction x0.003"),
        ("0.15", small, "interaction x0.03"),
    ):
        mean_field = seconds["crf"][box] - seconds["unary"][box]
        rows.append(
            [
                f"{box} ({'15x15' if box == '0.4' else '5x5'})",
                f"{mean_field:.2f}",
                f"{stages(metrics)} ({setting})",
            ]
        )
    header = [
        "`crf.box_fraction`",
        "CRF stage minus unary, s/image (30-epoch model, 1 thread)",
        "val mIoU unary / CRF / CRF + dense (45-epoch model)",
    ]
    return markdown(header, rows) + "\n\n" + machine(v30["machine"])


def train_step() -> str:
    plain, camvid = load("train_step.json"), load("train_step_camvid_frozen.json")
    rows = []
    for d in (plain, camvid):
        a = d["args"]
        what = f"{a.get('config', a['preset'])}, {a['size'][0]}x{a['size'][1]}, batch {a['batch']}"
        for name, r in d["rows"].items():
            rows.append([what, name, f"{r['step_s']:.2f}", f"{r['peak_mem_mb']:.0f}", d["commit"]])
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in d["ratios"].items())
        rows.append([what, f"ratios: {ratios}", "", "", ""])
    header = ["setting", "row", "s/step", "peak RSS MB", "commit"]
    return markdown(header, rows) + "\n\n" + machine(plain["machine"], camvid["machine"])


def joint_vs_piecewise() -> str:
    d = load("joint_vs_piecewise.json")
    rows = []
    for name, m in d["methods"].items():
        per = m["seconds_per_step"] / d["methods"]["piecewise"]["seconds_per_step"]
        rows.append(
            [
                name,
                f"{m['seconds_per_step']:.2f} ({per:.2f}x)",
                m["steps"],
                m["peak_memory_mb"],
                pct(m["val_mean_iou"]["crf"]),
            ]
        )
    header = [
        "method",
        "s/step (over piecewise)",
        "steps",
        "peak RSS MB",
        "CRF mIoU, every 3rd val image",
    ]
    note = f"{d['budget_minutes']:g} minutes of training each, at commit {d['commit']}. "
    return markdown(header, rows) + "\n\n" + note + machine(d["machine"])


# --- ablation -----------------------------------------------------------------------------------


def _ablation(folder: str) -> str:
    path = RESULTS / folder
    machines = [r["machine"] for row in ("fcn", "pairwise") for r in seed_records(path, row)]
    return ablation_table(path) + "\n\n" + machine(*machines)


def ablation() -> str:
    return _ablation("ablation")


def ablation_jitter() -> str:
    return _ablation("ablation_jitter")


def ablation_effects() -> str:
    path = RESULTS / "ablation"

    def mean(row: str, unary: bool, split: str) -> float:
        records = seed_records(path, row)
        return statistics.mean(
            (r["unary_of_this_model"] if unary else r)[split]["mean_iou"] for r in records
        )

    def spread(row: str, split: str) -> str:
        values = [r[split]["mean_iou"] for r in seed_records(path, row)]
        return f"{100 * (max(values) - min(values)):.1f}"

    effects = [
        ("pyramid pooling (pool - fcn)", ("pool", False), ("fcn", False)),
        ("the second input scale (multiscale - pool)", ("multiscale", False), ("pool", False)),
        ("training the pairwise nets, on the unary (its unary - multiscale)", ("pairwise", True), ("multiscale", False)),
        ("the CRF stage (pairwise - its unary)", ("pairwise", False), ("pairwise", True)),
        ("the dense CRF (dense - pairwise)", ("dense", False), ("pairwise", False)),
        ("the full model against fcn (dense - fcn)", ("dense", False), ("fcn", False)),
    ]  # fmt: skip
    rows = [
        [label, *(gain(mean(*b, s), mean(*a, s)) for s in ("choice", "val"))]
        for label, a, b in effects
    ]
    rows += [
        [f"two seeds' spread: {r}", spread(r, "choice"), spread(r, "val")]
        for r in ("fcn", "pairwise", "dense")
    ]
    return markdown(["effect (means over seeds)", "choice set", "val"], rows)


# --- dense CRF ----------------------------------------------------------------------------------


def dense_crf_speed() -> str:
    full, quick = load("dense_crf.json"), load("dense_crf_quick.json")
    w, h = full["size"]
    rows = []
    for d, name in ((full, "dense_crf.json"), (quick, "dense_crf_quick.json")):
        for label, key in (("2 threads", ""), ("1 thread", "_1thread")):
            iterations = d[f"ours{key}_iterations_s"] / d["iterations"]
            rows.append(
                [
                    f"`dense_crf`, {label}",
                    f"{d[f'ours{key}_s']:.3f}",
                    f"{d[f'pydensecrf{key}_s']:.3f}",
                    f"{d[f'ratio{key}_ours_over_pydensecrf']:.2f}",
                    f"{d[f'ours{key}_bilateral_kernel_s'] * 1000:.0f} ms; {iterations * 1000:.1f} ms",
                    name,
                ]
            )
            if f"compat{key}_s" in d:
                rows.append(
                    [
                        f"`compat` (the pydensecrf drop-in), {label}",
                        f"{d[f'compat{key}_s']:.3f}",
                        f"{d[f'pydensecrf{key}_s']:.3f}",
                        f"{d[f'ratio{key}_compat_over_pydensecrf']:.2f}",
                        "",
                        name,
                    ]
                )
        rows.append(
            [
                f"a batch of {d['batch']}, 2 threads",
                f"{d['ours_batch_s']:.2f}",
                f"{d['pydensecrf_batch_s']:.2f}",
                f"{d['ratio_batch_over_pydensecrf']:.2f}",
                "",
                name,
            ]
        )
    header = ["run", "ours s", "pydensecrf s", "ratio", "bilateral kernel; per iteration", "file"]
    agreement = (
        f"{w}x{h}, K={full['labels']}, {full['iterations']} iterations, pydensecrf's example "
        f"parameters, medians of interleaved repeats; labels equal to pydensecrf's: "
        f"{100 * full['label_agreement']:.0f} %, marginals within {full['max_abs_diff']:.1e}. "
        f"First call in a new process: {full['jit_compile_first_call_s']:.1f} s while numba "
        f"compiles, {full['jit_cached_first_call_s']:.2f} s once cached, plus "
        f"{full['import_s']:.2f} s of imports. numba {full['numba']}. "
    )
    return markdown(header, rows) + "\n\n" + agreement + machine(full["machine"], quick["machine"])


def dense_crf_params() -> str:
    d = load("dense_crf_params.json")
    rows = []
    for r in d["parameter_sets"]:
        p = r["params"]
        kernels = f"{p['pos_xy_std']:g}; {p['bi_xy_std']:g} / {p['bi_rgb_std']:g}"
        threads = f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}"
        rows.append(
            [
                r["set"],
                f"{kernels}; {r['iterations']}",
                r["bilateral_vertices"],
                threads,
                f"{r['ours_s']:.3f}",
                f"{r['compat_s']:.3f}",
                f"{r['pydensecrf_s']:.3f}",
                f"{r['ratio']:.2f}",
                f"{r['ratio_compat']:.2f}",
            ]
        )
    header = ["set", "Gaussian; bilateral xy / rgb; iterations", "bilateral vertices", "ours on",
              "`dense_crf` s", "`compat` s", "pydensecrf s", "ratio", "`compat` ratio"]  # fmt: skip
    widths = [
        [
            f"{r['bi_xy_std']:g} / {r['bi_rgb_std']:g}",
            r["bilateral_vertices"],
            f"{r['ours_s']:.3f}",
            f"{r['pydensecrf_s']:.3f}",
            f"{r['ratio']:.2f}",
        ]
        for r in d["kernel_widths"]
    ]
    w, h = d["size"]
    sets = d["parameter_sets"]
    by_threads = {n: [r["ratio"] for r in sets if r["threads"] == n] for n in (2, 1)}
    ours = {(r["set"], r["threads"]): r["ours_s"] for r in sets}
    gains = [ours[name, 1] / ours[name, 2] for name, n in ours if n == 2]
    note = (
        f"{w}x{h}, K={d['labels']}; labels equal to pydensecrf's: "
        f"{100 * min(r['label_agreement'] for r in sets):.1f} % at least. Ratios "
        f"{min(by_threads[2]):.2f}-{max(by_threads[2]):.2f} on 2 threads, "
        f"{min(by_threads[1]):.2f}-{max(by_threads[1]):.2f} on 1; two threads "
        f"{min(gains):.1f}-{max(gains):.1f}x faster than one. "
    )
    goal = {2: 0.25, 1: 0.5}  # the speed goals: ours / pydensecrf, on 2 threads and on 1
    for n, target in goal.items():
        ratios = {r["set"]: r["ratio"] for r in sets if r["threads"] == n}
        met = [name for name, ratio in ratios.items() if ratio <= target]
        where = ", ".join(met) if met else f"none of the sets (lowest {min(ratios.values()):.3f})"
        note += f"At most {target}x on {n} thread{'s' if n > 1 else ''}: {where}. "
    width_header = ["bilateral xy / rgb", "vertices", "ours s", "pydensecrf s", "ratio"]
    return (
        markdown(header, rows)
        + "\n\n"
        + markdown(width_header, widths)
        + "\n\n"
        + note
        + machine(d["machine"])
    )


def dense_crf_scaling() -> str:
    d = load("dense_crf.json")
    rows = [
        [
            f"{s['megapixels']:g} MP ({s['size'][0]}x{s['size'][1]})",
            f"{s['ours_s']:.3f}",
            f"{s['pydensecrf_s']:.3f}",
            f"{s['ratio']:.2f}",
        ]
        for s in d["sizes"]
    ]
    rows += [
        [
            f"{s['labels']} labels",
            f"{s['ours_s']:.3f}",
            f"{s['pydensecrf_s']:.3f}",
            f"{s['ratio']:.2f}",
        ]
        for s in d["labels_sweep"]
    ]
    slopes = f"Log-log slope of time against pixels: ours {d['size_slope_ours']:.2f}, pydensecrf {d['size_slope_pydensecrf']:.2f}. "
    return (
        markdown(["input", "ours s", "pydensecrf s", "ratio"], rows)
        + "\n\n"
        + slopes
        + machine(d["machine"])
    )


# --- deployment ---------------------------------------------------------------------------------


def export() -> str:
    d = load("export.json")
    s = d["crf_stage_seconds"]
    rows = [
        [
            f"{d['model']}, {d['size'][0]}x{d['size'][1]}",
            f"{d['graph_mb']:.1f}",
            f"{d['export_seconds']:.1f}",
            f"{d['max_abs_dq']:.1e}, {100 * d['labels_equal']:.0f} % labels equal",
            f"{s['onnxruntime']:.2f} / {s['predictor']:.2f} ({d['onnxruntime_over_predictor']:.2f})",
        ]
    ]
    header = [
        "model",
        "graph MB",
        "export s",
        "max abs dQ vs the Predictor",
        "crf stage s: onnxruntime / Predictor",
    ]
    return markdown(header, rows) + "\n\n" + f"Commit {d['commit']}. " + machine(d["machine"])


def predict() -> str:
    d = load("predict.json")
    by_batch: dict[int, dict[str, float]] = {}
    for r in d["rows"]:
        by_batch.setdefault(r["batch"], {})[r["row"]] = r["seconds_per_frame"]
    every, plain = "crf+dense, every iteration", "plain"
    names = ["forward", *STAGES, every, plain]
    rows = [[f"batch {b}", *(f"{t[n] * 1000:.0f}" for n in names)] for b, t in by_batch.items()]
    rows += [
        [f"ratio to plain, batch {b}", *(f"{t[n] / t[plain]:.2f}" for n in names)]
        for b, t in by_batch.items()
    ]
    score = d["score_seconds_per_frame"]
    blank = [""] * (len(names) - 4)  # the columns after crf+dense
    rows += [
        [f"scoring val, batch {b}", "", "", "", f"{t * 1000:.0f}", *blank] for b, t in score.items()
    ]
    crf = d["crf"]
    note = (
        f"{d['model']}, CRF {crf['pairwise_mode']} x{crf['pairwise_scale']:g}, at most "
        f"{crf['iterations']} mean-field iterations, tolerance {crf['tolerance']:g}; dense CRF "
        f"{d['dense_iterations']} iterations; scoring batched over one at a time: "
        f"{d['batched_over_single']:.2f}. Commit {d['commit']}. "
    )
    header = [
        "ms per frame",
        "FeatMap-Net + Unary-Net",
        *STAGES,
        "crf+dense, tolerance 0",
        "plain: unary + pydensecrf",
    ]
    return markdown(header, rows) + "\n\n" + note + machine(d["machine"])


def profile_crf() -> str:
    d = load("profile_crf.json")
    seconds = d["seconds"]
    stage = seconds["stage"]
    parts = [[name, f"{s * 1000:.1f}", f"{100 * s / stage:.0f}%"] for name, s in seconds.items()]
    ops = [[f"`{o['op']}`", o["calls"], f"{o['self_ms']:.1f}"] for o in d["operators"]]
    w, h = d["size"]
    note = (
        f"One {w}x{h} frame ({d['frame']}), {d['model']}, {d['crf_iterations']} mean-field "
        f"iterations at most (tolerance {d['crf_tolerance']:g}), {d['dense_iterations']} dense. "
        f"Commit {d['commit']}. "
    )
    return (
        markdown(["part", "ms", "of the stage"], parts)
        + "\n\n"
        + markdown(["operator (torch.profiler, self time)", "calls", "ms"], ops)
        + "\n\n"
        + note
        + machine(d["machine"])
    )


def dense_crf_dims() -> str:
    d = load("dense_crf_dims.json")
    rows = [
        [r["dimension"], r["vertices"], f"{r['build_s']:.3f}", f"{r['pydensecrf_build_s']:.3f}",
         f"{r['inference_s']:.3f}", f"{r['pydensecrf_inference_s']:.3f}",
         f"{(r['build_s'] + r['inference_s']) / (r['pydensecrf_build_s'] + r['pydensecrf_inference_s']):.2f}",
         f"{100 * r['label_agreement']:.2f} %", f"{r['max_abs_diff']:.1e}"]
        for r in d["rows"]
    ]  # fmt: skip
    header = ["D", "vertices", "kernel s", "pydensecrf kernel s", "mean-field s",
              "pydensecrf mean-field s", "ratio, both", "labels equal", "max abs diff"]  # fmt: skip
    w, h = d["size"]
    note = (
        f"{w}x{h}, K={d['labels']}, {d['iterations']} iterations, medians of {d['repeats']} "
        f"interleaved repeats. Commit {d['commit']}. "
    )
    return markdown(header, rows) + "\n\n" + note + machine(d["machine"])


def dense_crf_paths() -> str:
    d = load("dense_crf_paths.json")
    rows = [
        [r["set"], r["iterations"], r["threads"], r["change"], f"{r['new_ms']:.1f}",
         f"{r['reference_ms']:.1f}", f"{r['ratio']:.2f}", f"{r['max_abs_diff']:.1e}"]
        for r in d["rows"]
    ]  # fmt: skip
    header = ["set", "iterations", "threads", "change", "new ms", "reference ms", "ratio",
              "max abs diff"]  # fmt: skip
    w, h = d["size"]
    note = (
        f"Mean-field only, on lattices built once (scratch memory: the whole `dense_crf` call): "
        f"{w}x{h}, K={d['labels']}, medians of "
        f"{d['repeats']} interleaved repeats. Commit {d['commit']}. "
    )
    return markdown(header, rows) + "\n\n" + note + machine(d["machine"])


def prediction_paths() -> str:
    d = load("prediction_paths.json")
    what = {
        "featmap": ("FeatMap-Net", "BatchNorm folded", "conv, BatchNorm, ReLU6 one by one"),
        "crf scores": (
            "pairwise scores + mean-field (interaction)",
            "(K-1)^2 interaction rows",
            "K*K scores, centred in mean-field",
        ),
    }
    rows = [
        [*what[r["row"]], f"{r['new_ms']:.1f}", f"{r['reference_ms']:.1f}", f"{r['ratio']:.2f}",
         f"{r['max_abs_diff']:.1e}"]
        for r in d["rows"]
    ]  # fmt: skip
    header = ["part", "new", "reference", "new ms", "reference ms", "ratio", "max abs diff"]
    note = (
        f"One frame ({d['frame']}), {d['model']}, medians of {d['repeats']} interleaved repeats. "
        f"Commit {d['commit']}. "
    )
    return markdown(header, rows) + "\n\n" + note + machine(d["machine"])


def profile_train() -> str:
    d = load("profile_train.json")
    seconds = d["seconds"]
    step = seconds["step"]
    parts = [[name, f"{s * 1000:.1f}", f"{100 * s / step:.0f}%"] for name, s in seconds.items()]
    ops = [[f"`{o['op']}`", o["calls"], f"{o['self_ms']:.1f}"] for o in d["operators"]]
    h, w = d["crop"]
    note = (
        f"configs/{d['config']}.yaml's step: batch {d['batch']} of {h}x{w} crops "
        f"(a {d['grid'][0]}x{d['grid'][1]} node grid), `train.freeze_layers: "
        f"{d['freeze_layers']}`, random backbone weights. Commit {d['commit']}. "
    )
    return (
        markdown(["part", "ms", "of the step"], parts)
        + "\n\n"
        + markdown(["operator (torch.profiler, self time)", "calls", "ms"], ops)
        + "\n\n"
        + note
        + machine(d["machine"])
    )


def layout() -> str:
    d = load("layout.json")
    rows = [[r["row"], r["channels_last_ms"], r["nchw_ms"], f"{r['ratio']:.2f}"] for r in d["rows"]]
    w, h = d["size"]
    ch, cw = d["crop"]
    diff = d["largest_difference"]
    note = (
        f"One {w}x{h} frame ({d['frame']}) and a training step of batch {d['batch']} of {ch}x{cw} "
        f"crops, configs/{d['config']}.yaml (untrained), medians of {d['repeats']} interleaved "
        f"repeats. Largest difference between the two: node features "
        f"{diff['features']:.1e}, crf+dense marginals {diff['crf+dense marginals']:.1e}. "
        f"Commit {d['commit']}. "
    )
    header = ["ms", "channels_last (default)", "(B, C, H, W)", "ratio"]
    return markdown(header, rows) + "\n\n" + note + machine(d["machine"])


# --- results.md: one short row per measurement ------------------------------------------------------


# what, file, the keys down to its scores, details
VAL_RESULTS = [
    ("the recipe", "camvid_val.json", ["val"], "[camvid.md](camvid.md#the-recipe)"),
    (
        "the recipe's model calibrated (log-loss), dense bi_weight 5",
        "camvid_val_calibrated.json",
        ["val"],
        "[camvid.md](camvid.md#crf-weight)",
    ),
    (
        "the recipe with colour jitter, calibrated",
        "camvid_val_60_epochs_jitter.json",
        ["val"],
        "`camvid_val_60_epochs_jitter.json`",
    ),
    (
        "previous recipe (45 epochs)",
        "camvid_val_45_epochs.json",
        ["val_101_images", "metrics"],
        "`camvid_val_45_epochs.json`",
    ),
    (
        "earlier recipe (30 epochs)",
        "camvid_val_30_epochs.json",
        ["val_101_images"],
        "`camvid_val_30_epochs.json`",
    ),
]


def results() -> str:
    rows = []

    def add(what: str, number: str, command: str, info: dict | str) -> None:
        rows.append([what, number, command, machine(info).removeprefix("Machine: ").rstrip(".")])

    d = load("train_step.json")
    r = d["rows"]
    add(
        "training step, `cpu` config, 360x480: fcn / piecewise / joint (3 mean-field iterations)",
        " / ".join(f"{r[k]['step_s']:.2f} s" for k in ("fcn", "piecewise", "joint")),
        "`python -m benchmarks.train_step --threads 1`",
        d["machine"],
    )
    d = load("train_step_camvid_frozen.json")
    r = d["rows"]
    add(
        "training step of the CamVid recipe: 4 backbone layers frozen / trained",
        f"{r['frozen']['step_s']:.2f} / {r['piecewise']['step_s']:.2f} s, "
        f"{r['frozen']['peak_mem_mb']:.0f} / {r['piecewise']['peak_mem_mb']:.0f} MB",
        "[method.md](method.md#piecewise-against-joint-training)",
        d["machine"],
    )
    for what, name, keys, where in VAL_RESULTS:
        d = load(name)
        scores = d
        for key in keys:
            scores = scores[key]
        add(
            f"CamVid val, {what}: mIoU unary / CRF / CRF + dense",
            stages(scores),
            where,
            d["machine"],
        )
    for drive in DRIVES:
        d = json.loads((ROTATION / f"epochs60_{drive}_recipe.json").read_text())
        add(
            f"CamVid, drive {drive} held out of training, the recipe",
            stages(d),
            "[camvid.md](camvid.md#crf-weight)",
            "not recorded",
        )
    for label, name in CHOICE_SWEEPS.items():
        d = load(name)
        top_name, top = best(swept(d))
        add(
            f"choice set, {label}: unary / best swept CRF",
            f"{pct(miou(d['unary']))} / {pct(miou(top))} ({top_name})",
            "[camvid.md](camvid.md#how-the-choices-were-made)",
            "not recorded",
        )
    for label, name in DENSE_TUNINGS.items():
        d = load(name)
        base, top = miou(d["baseline"]), miou(d["best"])
        params = d["best"]["params"]
        add(
            f"dense CRF tuned on {d['images']} choice-set frames, {label}: best, gain",
            f"bi_weight {params['bi_weight']:g}, bi_xy_std {params['bi_xy_std']:g}: "
            f"{gain(base, top)}",
            "[camvid.md](camvid.md#how-the-choices-were-made)",
            "not recorded",
        )
    d = load("camvid_val_30_epochs.json")
    add(
        f"CamVid val, earlier recipe ({d['train']['epochs']} epochs), 5x5 box, raw x0.03",
        " / ".join(  # this part of the file holds percentages
            f"{d['prediction_box']['val_101_images']['box_0.15_raw_x0.03'][s]:.1f}" for s in STAGES
        ),
        "`camvid_val_30_epochs.json`",
        d["machine"],
    )
    d = load("joint_vs_piecewise.json")
    m = d["methods"]
    add(
        f"piecewise vs joint fine-tuning, {d['budget_minutes']:g} min each: s/step piecewise / joint T=3 / T=5",
        " / ".join(f"{m[k]['seconds_per_step']:.2f}" for k in ("piecewise", "joint3", "joint5")),
        "[method.md](method.md#piecewise-against-joint-training)",
        d["machine"],
    )
    d = load("predict.json")
    one = {r["row"]: r["seconds_per_frame"] for r in d["rows"] if r["batch"] == 1}
    add(
        f"Predictor stages, one 480x360 frame, {d['model']}: unary / crf / crf+dense (over "
        "unary + pydensecrf)",
        " / ".join(f"{one[s]:.2f} s" for s in STAGES)
        + f" ({one['crf+dense'] / one['plain']:.2f}x)",
        f"`python -m benchmarks.predict --checkpoint {d['model']} --images 16 --batch 4 --repeats 5`"
        if d["model"].endswith(".pt")
        else "`python -m benchmarks.predict --images 16 --batch 4 --repeats 5`",
        d["machine"],
    )
    d = load("export.json")
    s = d["crf_stage_seconds"]
    add(
        "ONNX crf stage of the CamVid model: onnxruntime / Predictor",
        f"{s['onnxruntime']:.2f} / {s['predictor']:.2f} s, {d['graph_mb']:.1f} MB",
        "`python -m benchmarks.export`",
        d["machine"],
    )
    d = load("dense_crf.json")
    add(
        "dense CRF, 480x360, K=11: ours / pydensecrf, 2 threads",
        f"{d['ours_s']:.3f} / {d['pydensecrf_s']:.3f} s ({d['ratio_ours_over_pydensecrf']:.2f}x)",
        "`python -m benchmarks.dense_crf`",
        d["machine"],
    )
    path = RESULTS / "ablation"
    dense = seed_records(path, "dense")
    add(
        f"the ablation, full model ({dense[0]['epochs']} epochs): choice-set / val mIoU",
        f"{pct(statistics.mean(r['choice']['mean_iou'] for r in dense))} / {pct(statistics.mean(r['val']['mean_iou'] for r in dense))}",
        "[ablation.md](ablation.md)",
        dense[0]["machine"],
    )
    return markdown(["what", "number", "details or command", "machine"], rows)


def dense_crf_learning() -> str:
    """The dense CRF learnt in the loop against the fixed one, on a held-out drive."""
    d = load("dense_crf_learning.json")
    fixed = d["rows"][0]
    rows = []
    for r in d["rows"]:
        w = r.get("weights")
        rows.append(
            (
                r["row"],
                r.get("steps", 0),
                f"{r['seconds']:.0f}" if "seconds" in r else "",
                f"{r['loss_first_tenth']:.3f} -> {r['loss_last_tenth']:.3f}"
                if "steps" in r
                else "",
                pct(r["crf"]),
                pct(r["crf+dense"]),
                gain(fixed["crf+dense"], r["crf+dense"]),
                " / ".join(f"{v:.2f}" for v in w)
                if w
                else f"{d['dense_crf']['pos_weight']:g} / {d['dense_crf']['bi_weight']:g}",
            )
        )
    header = ["row", "steps", "s", "training loss", "crf", "crf+dense", "vs fixed", "w_pos / w_bi"]
    return markdown(header, rows) + "\n\n" + machine(d["machine"])


GENERATORS: dict[str, Callable[[], str]] = {
    f.__name__: f
    for f in (
        camvid_val, camvid_val_classes, val_stages, crf_weight, held_out_stages, held_out_classes,
        crf_attempts, mean_field_stop, held_out_box, recipe_options, held_out_curves, dense_crf_tuning, choice_sweeps,
        prediction_box, train_step, joint_vs_piecewise, ablation, ablation_jitter,
        ablation_effects, dense_crf_speed, dense_crf_params, dense_crf_dims, dense_crf_paths, dense_crf_scaling, dense_crf_learning, export, predict, profile_crf, prediction_paths,
        profile_train, layout, results,
    )
}  # fmt: skip


def rendered(text: str) -> str:
    """`text` with every table region holding its generator's output."""

    def fill(match: re.Match) -> str:
        name = match[2]
        if name not in GENERATORS:
            raise SystemExit(f"error: no table generator {name!r} (known: {', '.join(GENERATORS)})")
        return f"{match[1]}{GENERATORS[name]()}\n{match[4]}"

    return REGION.sub(fill, text)


def stale_tables(docs: Path = DOCS) -> list[str]:
    """'page.md: NAME' for every table region whose content is not its generator's output."""
    stale = []
    for page in sorted(docs.glob("*.md")):
        text = page.read_text()
        for match in REGION.finditer(text):
            name = match[2]
            if name not in GENERATORS or match[3] != f"{GENERATORS[name]()}\n":
                stale.append(f"{page.name}: {name}")
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="list stale tables, exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_tables()
        for name in stale:
            print(f"stale: {name}")
        return 1 if stale else 0
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        new = rendered(text)
        if new != text:
            page.write_text(new)
            print(f"rewrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
