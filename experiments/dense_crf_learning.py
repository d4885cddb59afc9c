"""The dense CRF learnt in the loop (CRF-as-RNN), scored on a drive held out of training against
the fixed dense CRF.

Usage: python -m experiments.dense_crf_learning --checkpoint CKPT --split train_0001TP
       [--train-split train_without_0001TP] [--camvid DIR] [--steps 200 100] [--json OUT]

Rows, each scored on every frame of --split at full size (the crf stage without test-time
variants, then the dense CRF, as `piecewise-crf evaluate`'s crf+dense does):
  fixed       the checkpoint's dense-CRF settings (tuned on the held-out drive's frames);
  weights     ``DenseCRFLayer`` from those settings, its kernel weights and (K, K) compatibility
              trained for the first --steps steps, the network frozen (its inputs are the crf
              stage's log marginals, computed without gradients);
  end to end  then the same layer and the network's unary and pairwise nets (the backbone's
              frozen layers stay frozen) for the second --steps steps, through the grid
              mean-field and the dense CRF.
A step is one random --crop of one --train-split frame; the loss is the NLL of the dense CRF's
marginals at the labelled pixels. The steps, not minutes, are the budget, so a rerun does the
same work; the seconds are recorded beside them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import commit, describe, machine
from permutocrf import PROB_FLOOR, DenseCRFLayer
from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.evaluation import open_split
from piecewise_crf.files import write_json
from piecewise_crf.inference import Predictor, crf_marginals, refine
from piecewise_crf.metrics import ConfusionMatrix
from piecewise_crf.training.optim import freeze_layers

LR_LAYER = 0.01  # Adam, the layer's log weights and compatibility
LR_NETS = 1e-5  # Adam, the unary and pairwise nets (end to end)


def rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, as the crf+dense stage rounds them."""
    return (images.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8)


def log_marginals(q: torch.Tensor) -> torch.Tensor:
    return q.float().clamp(min=PROB_FLOOR).log()


def crop(image, label, size, generator):
    """A random (size) window of an image (3, H, W) and its labels (H, W)."""
    h, w = label.shape
    top = int(torch.randint(0, h - size[0] + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size[1] + 1, (1,), generator=generator))
    window = (slice(top, top + size[0]), slice(left, left + size[1]))
    return image[:, window[0], window[1]][None], label[window][None]


def train(predictor, layer, data, steps, crop_size, end_to_end, ignore, seed) -> dict:
    """``steps`` Adam steps on random crops; returns the mean loss of the first and last tenth
    and the seconds."""
    model, crf = predictor.model, predictor.crf
    groups = [{"params": layer.parameters(), "lr": LR_LAYER}]
    nets = [p for p in model.parameters() if p.requires_grad] if end_to_end else []
    if nets:
        groups.append({"params": nets, "lr": LR_NETS})
    optimiser = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        i = int(torch.randint(0, len(data), (1,), generator=generator))
        x, y = crop(*data[i], crop_size, generator)
        with torch.set_grad_enabled(end_to_end):
            scores = log_marginals(crf_marginals(model, x, crf))
        q = layer(rgb(x), scores)
        loss = F.nll_loss(q.clamp(min=1e-8).log(), y, ignore_index=ignore)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    tenth = max(1, steps // 10)
    return {
        "steps": steps,
        "loss_first_tenth": sum(losses[:tenth]) / tenth,
        "loss_last_tenth": sum(losses[-tenth:]) / tenth,
        "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def score(predictor, layer, data, ignore) -> dict:
    """mIoU of the crf stage and of the dense CRF after it (the layer's, or the checkpoint's
    settings where ``layer`` is None) on every frame."""
    k = predictor.model.num_classes
    matrices = {"crf": ConfusionMatrix(k, ignore), "crf+dense": ConfusionMatrix(k, ignore)}
    for i in range(len(data)):
        image, label = data[i]
        x = image[None]
        q = crf_marginals(predictor.model, x, predictor.crf)
        dense = refine(x, q, predictor.dense) if layer is None else layer(rgb(x), log_marginals(q))
        matrices["crf"].update(q.argmax(1), label[None])
        matrices["crf+dense"].update(dense.argmax(1), label[None])
    return {name: m.compute()["mean_iou"] for name, m in matrices.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--camvid", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--split", required=True, help="held-out frames, e.g. train_0001TP")
    parser.add_argument("--train-split", default="train_without_0001TP")
    parser.add_argument("--steps", type=int, nargs=2, default=(200, 100), metavar=("W", "E"))
    parser.add_argument("--crop", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.json is not None and args.json.exists():
        parser.error(f"{args.json} exists; choose another --json path")

    ckpt = load_checkpoint(args.checkpoint)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    predictor.model.eval()  # batch norm keeps its statistics: one crop per step
    held_out = open_split(ckpt.config, ckpt.classes, args.split, root=args.camvid)
    train_data = open_split(ckpt.config, ckpt.classes, args.train_split, root=args.camvid)
    ignore = getattr(held_out, "ignore_index", predictor.model.ignore_index)
    dense = {k: v for k, v in asdict(predictor.dense).items() if k != "enabled"}
    layer = DenseCRFLayer(predictor.model.num_classes, **dense)
    torch.manual_seed(args.seed)
    for p in predictor.model.parameters():  # frozen for the weights-only phase
        p.requires_grad_(False)
    rows = [{"row": "fixed", **score(predictor, None, held_out, ignore)}]
    fit = train(predictor, layer, train_data, args.steps[0], args.crop, False, ignore, args.seed)
    rows.append({"row": "weights", **fit, **score(predictor, layer, held_out, ignore)})
    rows[-1]["weights"] = layer.log_weights.exp().tolist()
    for p in predictor.model.parameters():
        p.requires_grad_(True)
    freeze_layers(predictor.model, ckpt.config.train.freeze_layers)  # as training froze them
    fit = train(predictor, layer, train_data, args.steps[1], args.crop, True, ignore, args.seed + 1)
    rows.append({"row": "end to end", **fit, **score(predictor, layer, held_out, ignore)})
    rows[-1]["weights"] = layer.log_weights.exp().tolist()

    info = machine(predictor.device)
    print(
        f"{args.checkpoint} on {args.split} ({len(held_out)} frames), trained on {args.train_split}"
    )
    print(f"machine: {describe(info)}")
    print(f"{'row':<11} {'steps':>5} {'s':>6} {'crf':>6} {'+dense':>6}")
    for row in rows:
        steps, seconds = row.get("steps", 0), row.get("seconds", 0.0)
        crf, refined = 100 * row["crf"], 100 * row["crf+dense"]
        print(f"{row['row']:<11} {steps:5d} {seconds:6.0f} {crf:6.2f} {refined:6.2f}")
    if args.json is not None:
        record = {
            "checkpoint": str(args.checkpoint),
            "split": args.split,
            "train_split": args.train_split,
            "frames": len(held_out),
            "crop": list(args.crop),
            "lr": {"layer": LR_LAYER, "nets": LR_NETS},
            "dense_crf": dense,
            "rows": rows,
            "machine": info,
            "commit": commit(),
        }
        write_json(record, args.json)


if __name__ == "__main__":
    main()
