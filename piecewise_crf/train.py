"""Piecewise training: SGD with momentum, a per-step poly schedule, validation, exact resume.

One process, or several under `torchrun --nproc_per_node N` (DistributedDataParallel: gloo on CPU,
NCCL on CUDA). `train.batch_size` is the global batch, split evenly over the processes; only
rank 0 writes files. RUN_DIR receives:

    config.yaml   the resolved config          log.csv      one row per epoch
    last.pt       every epoch, for --resume    best.pt      best validation mIoU so far
    final.pt      the finished model           curves.png   losses and mIoU per epoch

Exact resume: last.pt holds the model, optimizer, step, epoch and every RNG state (torch, CUDA,
numpy, python) of every rank. The shuffle order and the DataLoader worker seeds are derived from
(seed, epoch, rank) alone, so 2 epochs straight and 1 + resume + 1 give bitwise-identical weights
on CPU.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from piecewise_crf.checkpoint import (
    FORMAT_VERSION,
    config_differences,
    load_checkpoint,
    load_model_state,
)
from piecewise_crf.config import (
    Config,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from piecewise_crf.data.balancing import class_frequencies, median_frequency_weights
from piecewise_crf.data.transforms import train_transforms
from piecewise_crf.evaluate import CRFSetting, evaluate_model, predict_stages
from piecewise_crf.files import atomic_save, atomic_write_text, remove_stale_temps
from piecewise_crf.model import DeepStructuredModel, build_model
from piecewise_crf.runtime import amp_dtype, ensure_writable, open_dataset, resolve_device

LOG_FIELDS = (
    "epoch",
    "step",
    "lr",
    "unary_loss",
    "pairwise_loss",
    "val_unary_miou",
    "val_crf_miou",
    "seconds",
)
RUN_FILES = ("last.pt", "best.pt", "final.pt", "log.csv", "curves.png", "config.yaml")


def training_set(config: Config, root: str | Path | None) -> Dataset:
    """The training split with the paper's augmentation (scale, flip, crop/pad)."""
    data = config.data
    transforms = train_transforms(data.crop_size, data.scale_range, data.flip)
    return open_dataset(
        data.dataset, root, data.train_split, transforms, num_classes=config.model.num_classes
    )


def fit_epochs(config: Config, minutes: float, data_root: str | Path | None = None) -> int:
    """Epochs that fit a time budget (training, its validations and a final evaluation with the
    dense CRF), from timing a few training steps and one prediction on this machine."""
    root = data_root if data_root is not None else config.data.root
    data = training_set(config, root)
    tc = config.train
    model = build_model(config.model, load_weights=False)
    model.set_prediction_box(config.crf.box_fraction)
    freeze_layers(model, tc.freeze_layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # timing only: weights stay put
    times = []
    for k in range(6):  # the first two steps are slow (lazy imports, allocator): skip them
        tic = time.perf_counter()
        batch = [data[(k * tc.batch_size + i) % len(data)] for i in range(tc.batch_size)]
        images, labels = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        terms = model.loss(
            images, labels, pairwise_weight=tc.pairwise_weight, edge_fraction=tc.edge_fraction
        )
        terms.total.backward()
        optimizer.step()
        times.append(time.perf_counter() - tic)
    step = statistics.median(times[2:])
    val = open_dataset(config.data.dataset, root, config.data.val_split)
    model.eval()
    tic = time.perf_counter()
    predict_stages(model, val[0][0], {"crf": CRFSetting.from_config(config.crf)}, None)
    per_image = time.perf_counter() - tic
    epoch = math.ceil(len(data) / tc.batch_size) * step + len(val) * per_image / tc.val_every
    final = len(val) * (per_image + 0.3)  # the last evaluation adds the dense CRF
    return max(1, int((60 * minutes - final) / epoch))


def sgd_settings(tc: TrainConfig, lr: float | None = None) -> list[dict[str, float]]:
    """The hyperparameters of `sgd`'s two groups (backbone, heads), from the config. A resumed
    run applies them over the saved optimizer's, so `--set train.lr=...` takes effect."""
    lr = tc.lr if lr is None else lr
    return [
        {"base_lr": lr * mult, "lr": lr * mult, "momentum": tc.momentum,
         "weight_decay": tc.weight_decay}
        for mult in (tc.backbone_lr_mult, 1.0)
    ]  # fmt: skip


def sgd(model: nn.Module, tc: TrainConfig, lr: float | None = None) -> torch.optim.SGD:
    """SGD over two groups: the backbone at `lr * backbone_lr_mult`, the new heads at `lr`
    (default `tc.lr`); each group keeps its `base_lr` for the poly schedule."""
    backbone = [p for n, p in model.named_parameters() if n.startswith("featmap.backbone.")]
    heads = [p for n, p in model.named_parameters() if not n.startswith("featmap.backbone.")]
    groups = [
        {"params": params, **settings}
        for params, settings in zip((backbone, heads), sgd_settings(tc, lr), strict=True)
    ]
    return torch.optim.SGD(groups)


def freeze_layers(model: DeepStructuredModel, count: int) -> None:
    """Stop gradients for the backbone's first `count` `features` layers (`train.freeze_layers`).

    Those layers hold generic ImageNet filters and run at the highest resolutions, so their
    backward pass is dear: freezing MobileNetV2's stem and stride-4 blocks (4) makes a CamVid
    recipe step ~1.17x faster with a third less peak memory (benchmarks/train_step.py). SGD skips
    parameters without gradients, so frozen layers stay bit-for-bit at their loaded weights
    (weight decay included).
    """
    layers = model.featmap.backbone.features
    if not 0 <= count <= len(layers):
        raise ValueError(
            f"train.freeze_layers must be between 0 and {len(layers)} (the layers in this "
            f"backbone's `features`), got {count}"
        )
    for parameter in layers[:count].parameters():
        parameter.requires_grad_(False)


def balancing_weights(tc: TrainConfig, data: Dataset, device: torch.device) -> Tensor | None:
    """Class weights (K,) for `train.class_balance` from the training labels; None when off."""
    if not tc.class_balance:
        return None
    weights = median_frequency_weights(class_frequencies(data), tc.class_balance)
    return torch.tensor(weights, dtype=torch.float32, device=device)


@dataclass(frozen=True)
class Rank:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Rank:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


class PiecewiseLoss(nn.Module):
    """The model's loss as a forward pass, so DistributedDataParallel sees (and syncs) it."""

    def __init__(
        self,
        model: DeepStructuredModel,
        pairwise_weight: float,
        edge_fraction: float,
        memory_efficient: bool = False,
        class_weights: Tensor | None = None,
    ):
        super().__init__()
        self.model = model
        self.pairwise_weight = pairwise_weight
        self.edge_fraction = edge_fraction
        self.memory_efficient = memory_efficient
        self.class_weights = class_weights

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        terms = self.model.loss(
            images,
            labels,
            pairwise_weight=self.pairwise_weight,
            edge_fraction=self.edge_fraction,
            memory_efficient=self.memory_efficient,
            class_weights=self.class_weights,
        )
        return terms.unary, terms.pairwise, terms.total


def check_run_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, to replace a user's results without being told to."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder; choose another --out")
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not resume and not overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it "
            "or --overwrite to replace it"
        )
    finished = [name for name in ("final.pt", "best.pt") if (out / name).exists()]
    if resume and not (out / "last.pt").exists() and finished and not overwrite:
        raise FileExistsError(
            f"cannot resume {out}: it has {', '.join(finished)} but no last.pt to continue "
            "from; pass --overwrite (without --resume) to train it anew"
        )


def claim_run_dir(out: Path, *, resume: bool, overwrite: bool, main: bool) -> IO[str] | None:
    """Create RUN_DIR and lock it against a second training process (the OS drops the lock on
    any exit, kill -9 included); then delete what a killed run left behind (temp files) and,
    with --overwrite, the old run. Called once every check has passed. Returns the lock."""
    ensure_writable(out)
    if not main:
        return None
    lock = _lock(out / ".lock")
    removed = remove_stale_temps(out, RUN_FILES)
    if removed:
        print(f"note: removed {len(removed)} temp files left by an interrupted run in {out}")
    if overwrite and not resume:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    return lock


def _lock(path: Path) -> IO[str] | None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; a second process is not detected
        return None
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ValueError(
            f"{path.parent} is in use by another training process; wait for it to finish or "
            "choose another --out"
        ) from None
    return handle


def rng_state() -> dict[str, Any]:
    """Every RNG this process draws from, as tensors and plain values (weights_only-safe)."""
    # the legacy global numpy RNG is what third-party transforms draw from
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _seed_for(*values: int) -> int:
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


def write_log(history: list[dict[str, Any]], path: Path) -> None:
    """log.csv, rewritten from the checkpointed history (so a resumed run never duplicates rows)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOG_FIELDS})
    atomic_write_text(buffer.getvalue(), path)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training losses and validation mIoU per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [r["unary_loss"] for r in history], "o-", label="unary NLL")
    left.plot(epochs, [r["pairwise_loss"] for r in history], "o-", label="pairwise NLL")
    left.set(xlabel="epoch", ylabel="training loss", title="piecewise loss")
    left.legend()
    val = [r for r in history if r.get("val_unary_miou") is not None]
    for key, label in (("val_unary_miou", "unary"), ("val_crf_miou", "CRF")):
        points = [(r["epoch"], 100 * r[key]) for r in val if r.get(key) is not None]
        if points:
            right.plot(*zip(*points, strict=True), "o-", label=label)
    right.set(xlabel="epoch", ylabel="mIoU (%)", title="validation mIoU")
    if val:
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _summary_writer(out: Path):
    """TensorBoard when installed; it is an optional extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _all_reduce_mean(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / world).tolist()


def validate(
    model: DeepStructuredModel,
    dataset: Dataset,
    config: Config,
    device: torch.device,
    rank: Rank,
    dtype: torch.dtype | None,
) -> dict[str, float]:
    """Unary and CRF mIoU on the validation split, each rank scoring its own shard."""
    crf = {"crf": CRFSetting.from_config(config.crf)} if model.relations else {}
    indices = range(rank.rank, len(dataset), rank.world)
    matrices = evaluate_model(model, dataset, crf, device=device, indices=indices, amp_dtype=dtype)
    mean_classes = dataset.mean_classes() if hasattr(dataset, "mean_classes") else None
    out = {}
    for name, cm in matrices.items():
        out[f"val_{name}_miou"] = cm.all_reduce().compute(mean_classes)["mean_iou"]
    return out


@dataclass
class TrainResult:
    model: DeepStructuredModel  # the trained model (on its training device, in train mode)
    history: list[dict[str, Any]]  # one row per epoch, as in log.csv


def train(
    config: Config,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    train_set: Dataset | None = None,
    val_set: Dataset | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `config` into `out_dir`; returns the model and the per-epoch history.

    `train_set` / `val_set` replace the config's dataset (any Dataset of (image, label) with
    `classes` and `palette` attributes); by default they come from `config.data`. Under torchrun
    this joins the process group itself.
    """
    rank = Rank.from_env()
    started = rank.world > 1 and not dist.is_initialized()
    device = resolve_device(config.train.device, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(
            config, Path(out_dir), data_root, resume, overwrite, train_set, val_set, progress,
            rank, device,
        )  # fmt: skip
    finally:
        if started:
            dist.destroy_process_group()


def _train(
    config: Config,
    out: Path,
    data_root: str | Path | None,
    resume: bool,
    overwrite: bool,
    train_set: Dataset | None,
    val_set: Dataset | None,
    progress: bool,
    rank: Rank,
    device: torch.device,
) -> TrainResult:
    check_run_dir(out, resume=resume, overwrite=overwrite)
    ckpt = None
    if resume and (out / "last.pt").exists():
        ckpt = load_checkpoint(out / "last.pt")
        differences = config_differences(config_to_dict(config)["model"], ckpt["config"]["model"])
        if differences:
            raise ValueError(
                f"cannot resume {out / 'last.pt'}: its model differs from the config "
                f"(config vs checkpoint): {'; '.join(differences)}"
            )
    tc = config.train
    if tc.batch_size % rank.world:
        raise ValueError(
            f"train.batch_size {tc.batch_size} must be divisible by the {rank.world} processes"
        )

    root = data_root if data_root is not None else config.data.root
    if train_set is None:
        train_set = training_set(config, root)
    if val_set is None and config.data.val_split:
        val_set = open_dataset(
            config.data.dataset, root, config.data.val_split, num_classes=config.model.num_classes
        )
    classes = list(train_set.classes)
    if len(classes) != config.model.num_classes:
        raise ValueError(
            f"the dataset has {len(classes)} classes but model.num_classes is "
            f"{config.model.num_classes}; set model.num_classes={len(classes)}"
        )
    if ckpt is not None and rank.main:
        changed = config_differences(config_to_dict(config), ckpt["config"])
        if changed:
            print(f"note: resuming with changed settings (now vs saved): {'; '.join(changed)}")

    random.seed(tc.seed + rank.rank)
    np.random.seed(tc.seed + rank.rank)  # noqa: NPY002
    torch.manual_seed(tc.seed + rank.rank)  # DDP copies rank 0's initial weights to the others
    model = build_model(config.model, load_weights=ckpt is None, max_edges=tc.max_edges)
    model.set_prediction_box(config.crf.box_fraction)  # for validation
    freeze_layers(model, tc.freeze_layers)
    # Every check has passed: only now is the run folder created, locked or cleared.
    lock = claim_run_dir(out, resume=resume, overwrite=overwrite, main=rank.main)
    if resume and ckpt is None and rank.main:
        print(f"note: {out} holds no last.pt yet; starting a new run")
    if rank.main:
        save_config(config, out / "config.yaml")
    try:
        return _fit(config, out, ckpt, model, train_set, val_set, classes, progress, rank, device)
    finally:
        if lock is not None:
            lock.close()


def _fit(
    config: Config,
    out: Path,
    ckpt: dict[str, Any] | None,
    model: DeepStructuredModel,
    train_set: Dataset,
    val_set: Dataset | None,
    classes: list[str],
    progress: bool,
    rank: Rank,
    device: torch.device,
) -> TrainResult:
    tc = config.train
    model.to(device)
    optimizer = sgd(model, tc)
    dtype = amp_dtype(device, tc.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    epoch, step, history, best, elapsed = 0, 0, [], -math.inf, 0.0
    if ckpt is not None:
        load_model_state(model, ckpt["model"], str(out / "last.pt"))
        optimizer.load_state_dict(ckpt["optimizer"])
        for group, settings in zip(optimizer.param_groups, sgd_settings(tc), strict=True):
            group.update(settings)  # the config's lr, momentum, weight decay, not the saved ones
        scaler.load_state_dict(ckpt["scaler"])
        epoch, step, history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])
        best = ckpt.get("best", -math.inf)
        elapsed = ckpt.get("train_seconds", 0.0)
        states = ckpt["rng"]
        if len(states) == rank.world:
            set_rng_state(states[rank.rank])
        elif rank.main:
            print(f"note: {len(states)} processes saved RNG states, {rank.world} run now; "
                  "training continues but will not repeat the original run bit for bit")  # fmt: skip

    class_weights = balancing_weights(tc, train_set, device)
    if class_weights is not None and rank.main:
        shown = ", ".join(f"{c} {w:.2f}" for c, w in zip(classes, class_weights, strict=True))
        print(f"class weights (train.class_balance={tc.class_balance}): {shown}")
    net: nn.Module = PiecewiseLoss(
        model, tc.pairwise_weight, tc.edge_fraction, tc.memory_efficient, class_weights
    )
    if rank.world > 1:
        net = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = DistributedSampler(
        train_set, num_replicas=rank.world, rank=rank.rank, shuffle=True, seed=tc.seed
    )
    loader = DataLoader(
        train_set,
        batch_size=tc.batch_size // rank.world,
        sampler=sampler,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
    )
    if len(loader) == 0:
        raise ValueError("the training split is empty")
    total_steps = tc.epochs * len(loader)
    budget = 60 * tc.minutes
    writer = _summary_writer(out) if rank.main else None
    bar = tqdm(
        total=total_steps, initial=step, desc="train", dynamic_ncols=True,
        disable=not (progress and rank.main),
    )  # fmt: skip
    row: dict[str, Any] = history[-1] if history else {}

    stop = budget > 0 and elapsed >= budget
    while epoch < tc.epochs and not stop:
        epoch += 1
        tic = time.perf_counter()
        sampler.set_epoch(epoch)
        loader.generator.manual_seed(_seed_for(tc.seed, epoch, rank.rank))  # worker seeds
        net.train()
        sums, steps = [0.0, 0.0], 0
        for images, labels in loader:
            started = time.perf_counter()
            done = step / total_steps
            if budget:
                done = max(done, elapsed / budget)
            factor = max(0.0, 1 - done) ** tc.lr_power
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                unary, pairwise, total = net(images, labels)
            bad = torch.tensor(float(not torch.isfinite(total)), device=device)
            if rank.world > 1:
                dist.all_reduce(bad)
            if bad.item():
                last = (
                    f"the last good checkpoint is {out / 'last.pt'} (epoch {epoch - 1})"
                    if (out / "last.pt").exists()
                    else "no checkpoint had been written yet"
                )
                raise FloatingPointError(
                    f"training diverged: loss is {total.item()} at step {step + 1} (epoch "
                    f"{epoch}); stopped, {last}. Lower train.lr or check the data."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            steps += 1
            elapsed += time.perf_counter() - started
            sums[0] += unary.item()
            sums[1] += pairwise.item()
            bar.update()
            shown = {
                "epoch": epoch,
                "unary": f"{unary.item():.3f}",
                "pairwise": f"{pairwise.item():.3f}",
            }
            if budget:
                shown["left"] = f"{max(0.0, budget - elapsed) / 60:.1f} min"
            bar.set_postfix(shown)
            if writer is not None:
                writer.add_scalar("loss/unary", unary.item(), step)
                writer.add_scalar("loss/pairwise", pairwise.item(), step)
                writer.add_scalar("lr", optimizer.param_groups[1]["lr"], step)
            if budget:
                if rank.world > 1:  # rank 0's clock sets every rank's lr and last step
                    clock = torch.tensor(elapsed, dtype=torch.float64, device=device)
                    dist.broadcast(clock, 0)
                    elapsed = clock.item()
                if elapsed >= budget:
                    stop = True
                    break

        unary_loss, pairwise_loss = _all_reduce_mean([s / steps for s in sums], rank.world)
        row = {
            "epoch": epoch,
            "step": step,
            "lr": optimizer.param_groups[1]["lr"],
            "unary_loss": unary_loss,
            "pairwise_loss": pairwise_loss,
            "val_unary_miou": None,
            "val_crf_miou": None,
        }
        improved = False
        if val_set is not None and (epoch % tc.val_every == 0 or epoch == tc.epochs or stop):
            row.update(validate(model, val_set, config, device, rank, dtype))
            score = (
                row["val_crf_miou"] if row["val_crf_miou"] is not None else row["val_unary_miou"]
            )
            if score is not None and not math.isnan(score) and score > best:
                best, improved = score, True
            if writer is not None:
                for key in ("val_unary_miou", "val_crf_miou"):
                    if row[key] is not None:
                        writer.add_scalar(key.replace("_", "/", 1), row[key], step)
            if rank.main:
                bar.write(
                    f"epoch {epoch}: val mIoU unary {_pct(row['val_unary_miou'])}, "
                    f"crf {_pct(row['val_crf_miou'])}"
                )
        row["seconds"] = round(time.perf_counter() - tic, 2)
        history.append(row)

        states = [rng_state()]
        if rank.world > 1:
            states = [None] * rank.world
            dist.all_gather_object(states, rng_state())
        if rank.main:
            meta = _meta(config, train_set, model, epoch, step, row, history)
            if improved:
                atomic_save(meta, out / "best.pt")
            state = dict(meta, optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                         rng=states, best=best, train_seconds=elapsed)  # fmt: skip
            atomic_save(state, out / "last.pt")
            write_log(history, out / "log.csv")
        if rank.world > 1:
            dist.barrier()  # no rank runs ahead of a checkpoint it might need to resume from
    bar.close()

    if rank.main:
        atomic_save(_meta(config, train_set, model, epoch, step, row, history), out / "final.pt")
        write_log(history, out / "log.csv")
        if history:
            plot_curves(history, out / "curves.png")
        if writer is not None:
            writer.close()
    return TrainResult(model, history)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _meta(
    config: Config,
    dataset: Dataset,
    model: DeepStructuredModel,
    epoch: int,
    step: int,
    row: dict[str, Any],
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """What every checkpoint holds (see piecewise_crf.checkpoint)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "config": config_to_dict(config),
        "classes": list(dataset.classes),
        "palette": np.asarray(dataset.palette).astype(int).tolist(),
        "epoch": epoch,
        "step": step,
        "metrics": {k: v for k, v in row.items() if isinstance(v, float)},
        "history": history,
    }


def resume_config(out: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config of the run in `out`, with `section.key=value` overrides: the one saved in its
    last.pt (what the weights were trained with), else its config.yaml (no epoch done yet)."""
    out = Path(out)
    path, last = out / "config.yaml", out / "last.pt"
    if not last.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass --config to start or resume this run")
        return load_config(path, overrides)
    saved = load_checkpoint(last)["config"]
    try:
        same = path.is_file() and config_to_dict(load_config(path)) == saved
    except ValueError:  # truncated or hand-edited into an invalid file
        same = False
    if not same:
        print(
            f"note: {path} is missing or differs from the config saved in {last}; resuming with "
            "the saved one (pass --config FILE to resume with another)"
        )
    return config_from_dict(apply_overrides(saved, overrides))
