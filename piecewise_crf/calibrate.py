"""`piecewise-crf calibrate`: learn how much the pairwise terms count, with every net frozen.

Piecewise training fits each potential on its own, so nothing in training says how strongly the
pairwise scores should enter mean-field (`crf.pairwise_scale`, the mode). Calibration fits those
few numbers by gradient descent through the mean-field iterations, the nets fixed:

    w[r, k] = exp(theta[r, k])   one weight per relation r and offset ring k (`crf.ring_weight`)
    Q = grid_mean_field(unary, w * pairwise scores, T)         (scores, higher = more likely)
    loss = class-weighted mean over labelled nodes of -log Q_p(y_p)    (`--objective nll`)
        or of 1 - Q_p(y_p), the expected error                        (`--objective error`)

on images of a split (the training split by default), T = the checkpoint's `crf.iterations`.
Weights live in log space (they span orders of magnitude and stay positive). Each pairwise
mode starts from the best single weight of a coarse log-spaced scan (`SCAN`, x0.001 to x1), and
the mode with the lower final loss is kept. The result goes into the
checkpoint's config (`crf.pairwise_mode`, `crf.pairwise_scale = 1`, `crf.ring_weights`), so
evaluate, predict, export and `Predictor.from_checkpoint` use it; the settings before the first
calibration are kept in the checkpoint under "calibration".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.config import config_to_dict
from piecewise_crf.crf import centre_interactions, grid_mean_field, ring_weight
from piecewise_crf.evaluate import open_split, subset_indices
from piecewise_crf.files import atomic_save, refuse_overwriting_inputs
from piecewise_crf.inference import Predictor
from piecewise_crf.model import PAIRWISE_MODES
from piecewise_crf.relations import Offset
from piecewise_crf.train import balancing_weights

OBJECTIVES = ("nll", "error")
SCAN = tuple(10.0**e for e in (-3, -2.5, -2, -1.5, -1, -0.5, 0))  # the single-weight start scan


@dataclass
class Sample:
    """One calibration image's frozen potentials: unary (1, K, h, w) and raw pairwise scores
    (computed in float32, kept as float16 by `frozen_samples`)."""

    unary: Tensor
    pairwise: list[tuple[Offset, Tensor]]
    nodes: Tensor  # (1, h, w) node labels, ignore_index where unlabelled


@dataclass
class ModeFit:
    """The result of calibrating one pairwise mode."""

    mode: str
    start_scale: float  # best single weight of the scan
    start_loss: float
    loss: float  # after gradient descent
    ring_weights: dict[str, list[float]]


def frozen_samples(
    predictor: Predictor, data: Any, indices: Sequence[int]
) -> tuple[list[Sample], list[str]]:
    """The potentials of `indices` (computed once, no gradient), and each offset's relation."""
    model, crf = predictor.model, predictor.crf
    samples, names = [], []
    dtype = predictor.amp_dtype
    with torch.no_grad():
        for i in indices:
            image, label = data[i]
            x = image[None].to(predictor.device)
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
                potentials = model(x, box_fraction=crf.box_fraction)
            # float16 halves the cache (CamVid recipe, 15x15 box: 92 instead of 184 MB per image;
            # the loss moved by < 3e-5 on two frames)
            pairwise = [(o, z.to(torch.float16)) for o, z in potentials.materialise("raw")]
            names = potentials.relation_names()
            unary = potentials.unary.float()
            nodes = model.node_labels(label[None].to(x.device), tuple(unary.shape[-2:]))
            samples.append(Sample(unary, pairwise, nodes))
    return samples, names


def node_loss(
    q: Tensor, nodes: Tensor, class_weights: Tensor | None, ignore_index: int, objective: str
) -> Tensor:
    """Class-weighted mean over labelled nodes of -log Q_p(y_p) ("nll") or of 1 - Q_p(y_p)
    ("error", the expected error: bounded, so a few confidently wrong nodes do not decide)."""
    if objective == "nll":
        return F.nll_loss(
            q.clamp(min=1e-8).log(), nodes, weight=class_weights, ignore_index=ignore_index
        )
    valid = nodes != ignore_index
    safe = nodes.masked_fill(~valid, 0)
    correct = q.gather(1, safe[:, None])[:, 0]
    weight = valid.to(q.dtype) if class_weights is None else class_weights[safe] * valid
    return ((1 - correct) * weight).sum() / weight.sum().clamp(min=1e-12)


def mean_field_loss(
    sample: Sample,
    mode: str,
    weights: list[Tensor | float],
    iterations: int,
    class_weights: Tensor | None,
    ignore_index: int,
    objective: str = "nll",
) -> Tensor:
    """`node_loss` of the mean-field marginals of one sample."""
    pairwise = [(o, z.float()) for o, z in sample.pairwise]
    if mode == "interaction":
        pairwise = [(o, centre_interactions(z)) for o, z in pairwise]
    q = grid_mean_field(sample.unary, pairwise, iterations, weights)
    return node_loss(q, sample.nodes, class_weights, ignore_index, objective)


def fit_mode(
    samples: Sequence[Sample],
    relations: Sequence[str],
    mode: str,
    *,
    rings: int,
    iterations: int,
    steps: int,
    lr: float,
    class_weights: Tensor | None,
    ignore_index: int,
    objective: str = "nll",
    log: Any = print,
) -> ModeFit:
    """Scan one shared weight, then descend on a log-weight per relation and ring."""
    offsets = [o for o, _ in samples[0].pairwise]

    def total(weights_of: Any, backward: bool = False) -> float:
        """Mean loss over the samples; with `backward`, its gradient accumulated image by
        image, so one image's autograd graph is held at a time."""
        value = 0.0
        for s in samples:
            with torch.set_grad_enabled(backward):
                loss = mean_field_loss(
                    s, mode, weights_of(), iterations, class_weights, ignore_index, objective
                )
                loss = loss / len(samples)
            if backward:
                loss.backward()
            value += loss.item()
        return value

    scan = {w: total(lambda w=w: [w] * len(offsets)) for w in SCAN}
    start = min(scan, key=scan.get)
    log(f"  {mode}: scan " + ", ".join(f"x{w:.3g} {loss:.4f}" for w, loss in scan.items()))

    names = sorted(set(relations))
    theta = {n: torch.full((rings,), math.log(start), requires_grad=True) for n in names}
    optimiser = torch.optim.Adam(theta.values(), lr=lr)

    def weights_now() -> list[Tensor]:
        w = {n: t.exp() for n, t in theta.items()}
        return [ring_weight(w[n], o) for n, o in zip(relations, offsets, strict=True)]

    for step in range(steps):
        optimiser.zero_grad()
        loss = total(weights_now, backward=True)
        optimiser.step()
        if step % 10 == 0 or step == steps - 1:
            log(f"  {mode}: step {step + 1}/{steps} loss {loss:.4f}")
    final = total(weights_now)
    learned = {n: [round(float(v), 6) for v in t.detach().exp()] for n, t in theta.items()}
    if final > scan[start]:  # descent made it worse (a too-large lr): keep the scan's weight
        final, learned = scan[start], {n: [start] * rings for n in names}
    return ModeFit(mode, start, scan[start], final, learned)


def calibrate_checkpoint(
    checkpoint: str | Path,
    *,
    out: str | Path | None = None,
    dataset: str | None = None,
    root: str | Path | None = None,
    split: str | None = None,
    limit: int = 8,
    rings: int = 1,
    modes: Sequence[str] = PAIRWISE_MODES,
    steps: int = 20,
    lr: float = 0.1,
    objective: str = "nll",
    device: str = "auto",
    log: Any = print,
) -> dict[str, Any]:
    """`piecewise-crf calibrate`: fit the pairwise weights on `limit` images of `split` (default:
    the checkpoint's training split) and write them into `out` (default: the checkpoint itself,
    replaced atomically). Returns the record saved under the checkpoint's "calibration"."""
    if limit < 1 or rings < 1 or steps < 0:
        raise ValueError("--limit and --rings must be >= 1 and --steps >= 0")
    unknown = [m for m in modes if m not in PAIRWISE_MODES]
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if unknown or not modes:
        raise ValueError(f"--modes must be among {', '.join(PAIRWISE_MODES)}, got {list(modes)}")
    out = Path(checkpoint if out is None else out)
    if Path(out).resolve() != Path(checkpoint).resolve():
        refuse_overwriting_inputs([out], [], "--out", suffix=".pt")
        if out.exists():
            raise FileExistsError(
                f"--out {out} exists; choose a new file, or leave --out out to update the checkpoint"
            )
    predictor = Predictor.from_checkpoint(checkpoint, device=device, dense_enabled=False)
    config, crf = predictor.config, predictor.crf
    if not config.model.relations:
        raise ValueError(f"{checkpoint} has no pairwise relations: there is nothing to calibrate")
    split = split or config.data.train_split
    data, name = open_split(predictor, dataset, root, split)
    indices = subset_indices(len(data), limit)
    log(f"calibrating on {len(indices)} images of {name} {split}, {crf.iterations} iterations")
    samples, relations = frozen_samples(predictor, data, indices)
    class_weights = balancing_weights(config.train, data, torch.device("cpu"))
    class_weights = None if class_weights is None else class_weights.to(predictor.device)
    ignore = config.model.ignore_index

    with torch.no_grad():
        unary = [
            node_loss(s.unary.softmax(1), s.nodes, class_weights, ignore, objective)
            for s in samples
        ]
    unary_loss = float(torch.stack(unary).mean())
    fits = [
        fit_mode(
            samples,
            relations,
            mode,
            rings=rings,
            iterations=crf.iterations,
            steps=steps,
            lr=lr,
            class_weights=class_weights,
            ignore_index=ignore,
            objective=objective,
            log=log,
        )
        for mode in modes
    ]
    best = min(fits, key=lambda f: f.loss)
    for fit in fits:
        mark = "  <- kept" if fit is best else ""
        log(
            f"{fit.mode:12s} unary {unary_loss:.4f}  scan x{fit.start_scale:.3g} {fit.start_loss:.4f}"
            f"  calibrated {fit.loss:.4f}  weights {fit.ring_weights}{mark}"
        )
    if best.loss >= unary_loss:
        # CamVid, NLL, 60-epoch models on 8 frames of their held-out drive: 1.528 against the
        # unary's 1.507; the weights are then where the steps stopped on the way to zero
        log(
            f"warning: no weight brings the {objective} below the unary's ({best.loss:.4f} >= "
            f"{unary_loss:.4f}): by this objective the pairwise terms only hurt on these images, "
            "and the weights are where the steps stopped"
        )
    new_crf = dataclasses.replace(
        crf, pairwise_mode=best.mode, pairwise_scale=1.0, ring_weights=best.ring_weights
    )
    ckpt = load_checkpoint(checkpoint)
    record = {
        "dataset": name,
        "split": split,
        "indices": indices,
        "rings": rings,
        "steps": steps,
        "objective": objective,
        "unary_loss": unary_loss,
        "fits": [dataclasses.asdict(f) for f in fits],
        # the settings before the first calibration: a second one does not lose them
        "previous_crf": ckpt.get("calibration", {}).get("previous_crf", ckpt["config"]["crf"]),
    }
    ckpt["config"] = {
        **ckpt["config"],
        "crf": config_to_dict(dataclasses.replace(config, crf=new_crf))["crf"],
    }
    ckpt["calibration"] = record
    atomic_save(ckpt, out)
    log(
        f"wrote {out}: crf.pairwise_mode={best.mode} crf.pairwise_scale=1 "
        f"crf.ring_weights={best.ring_weights} (previous settings under 'calibration')"
    )
    return record
