"""The training loop: SGD with momentum, a per-step poly schedule, validation, exact resume.

`train` checks everything (the run folder, the checkpoint to resume, the config, the data)
before it claims RUN_DIR (`run_dir.py`); then each epoch is `train_one_epoch` (per batch the
poly lr and an SGD step on the piecewise loss) and `end_epoch` (validation when due, best.pt,
last.pt, log.csv); final.pt ends the run. What the loop carries from epoch to epoch is a
`RunState`, which every checkpoint holds.

One process, or several under `torchrun --nproc_per_node N`: `train.batch_size` is the global
batch, split evenly over the processes; only rank 0 writes files. Exact resume: last.pt holds
the model, optimizer, step, epoch and every RNG state of every rank; the shuffle order and the
DataLoader worker seeds are derived from (seed, epoch, rank) alone, so 2 epochs straight and
1 + resume + 1 give bitwise-identical weights on CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from piecewise_crf.checkpoint import (
    Checkpoint,
    RunState,
    config_differences,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from piecewise_crf.config import Config, config_to_dict
from piecewise_crf.data.base import SegmentationDataset
from piecewise_crf.data.transforms import train_transforms
from piecewise_crf.devices import amp_dtype, resolve_device
from piecewise_crf.evaluation import mean_classes, open_dataset, score
from piecewise_crf.inference import Predictor
from piecewise_crf.model import DeepStructuredModel, build_model
from piecewise_crf.outputs import inputs_of
from piecewise_crf.training import run_dir
from piecewise_crf.training.distributed import Rank, process_group
from piecewise_crf.training.losses import PiecewiseLoss, class_weights
from piecewise_crf.training.optim import freeze_layers, lr_factor, sgd, sgd_settings
from piecewise_crf.training.state import rng_state, seed_all, seed_for, set_rng_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """What a step reports to `train`'s `on_step`: where the run is, and the step's losses."""

    epoch: int
    step: int  # optimizer steps taken, this one included
    total_steps: int
    unary: float
    pairwise: float
    seconds_left: float | None  # of the minutes budget; None without one


@dataclass
class TrainResult:
    model: DeepStructuredModel  # the trained model (on its training device, in train mode)
    history: list[dict[str, Any]]  # one row per epoch, as in log.csv


@dataclass
class TrainContext:
    """What stays put from epoch to epoch: the run's config, folder, model and training machinery."""

    config: Config
    out: Path  # RUN_DIR
    folder: run_dir.RunFolder  # held by this process; config.yaml written or not
    rank: Rank
    device: torch.device
    dtype: torch.dtype | None  # autocast's; None: full precision
    model: DeepStructuredModel
    net: nn.Module  # the PiecewiseLoss, in DistributedDataParallel under torchrun
    optimizer: torch.optim.SGD
    scaler: torch.amp.GradScaler
    loader: DataLoader  # DistributedSampler order; its generator seeds the workers
    train_set: Dataset
    val_set: Dataset | None
    on_step: Callable[[Step], None]
    writer: Any  # TensorBoard's SummaryWriter on rank 0 when installed, else None

    @property
    def budget(self) -> float:
        """`train.minutes` in seconds; 0: no budget."""
        return 60 * self.config.train.minutes

    @property
    def total_steps(self) -> int:
        return self.config.train.epochs * len(self.loader)

    def out_of_time(self, state: RunState) -> bool:
        return self.budget > 0 and state.train_seconds >= self.budget


def training_set(config: Config, root: str | Path | None = None) -> Dataset:
    """The training split with the paper's augmentation (scale, flip, crop/pad) and colour jitter."""
    data = config.data
    transforms = train_transforms(
        data.crop_size, data.scale_range, data.flip, colour_jitter=data.colour_jitter
    )
    return open_dataset(config, data.train_split, root=root, transforms=transforms)


def train(
    config: Config,
    out: str | Path,
    *,
    root: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    train_set: Dataset | None = None,
    val_set: Dataset | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> TrainResult:
    """Train `config` into the run folder `out`; returns the model and the per-epoch history.

    The data come from `config.data` (at `root`, default `data.root`; the run's config keeps
    it as an absolute path), or `train_set` / `val_set` (any Dataset of (image, label) with
    `classes` and `palette`); every sample is read once before the first step. An unset
    `model.num_classes` is the training set's. `inputs` are files the run must never write,
    besides its data and backbone weights (the config file it was given: when that is
    RUN/config.yaml, it stays as it is). With `overwrite` the old run is replaced once the new one has a checkpoint, and
    put back if it fails first. `on_step` is called after every step (a progress bar). Under
    torchrun this joins the process group itself.
    """
    rank = Rank.from_env()
    device = resolve_device(config.train.device, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    root = root if root is not None else config.data.root
    if root is not None:  # evaluate and calibrate find the data of a run again, from anywhere
        config = _with(config, "data", root=os.path.abspath(root))
    with process_group(rank, device):
        out = Path(out)
        if rank.main:
            run_dir.recover(out)
        ckpt = _check(config, out, resume=resume, overwrite=overwrite, inputs=inputs, rank=rank)
        if ckpt is not None and _finished(config, ckpt.run) and (out / "final.pt").exists():
            log.info(
                f"note: {out} has finished its {ckpt.run.epoch} epochs; nothing to train (raise "
                "train.epochs or train.minutes to continue)"
            )
            return TrainResult(ckpt.build_model(), ckpt.run.history)
        if ckpt is not None and config.model.num_classes is None:
            config = _with(config, "model", num_classes=ckpt.config.model.num_classes)
        config, train_set, val_set = _datasets(config, train_set=train_set, val_set=val_set)
        weights = config.model.backbone_weights
        read = [*inputs, *inputs_of(train_set), *(inputs_of(val_set) if val_set else ())]
        read += [weights] if weights not in (None, "hed") else []
        read = map(Path, read)
        writes_config = run_dir.check_run_dir(out, resume=resume, overwrite=overwrite, inputs=read)
        seed_all(config.train.seed + rank.rank)  # DDP copies rank 0's initial weights to others
        model = build_model(
            config.model, load_weights=ckpt is None, max_edges=config.train.max_edges
        )
        freeze_layers(model, config.train.freeze_layers)
        # Every check has passed: only now is the run folder created, locked or cleared.
        claim = run_dir.claimed(
            out, resume=resume, overwrite=overwrite, writes_config=writes_config, main=rank.main
        )
        with claim as folder:
            if resume and ckpt is None and rank.main:
                log.info(f"note: {out} holds no last.pt yet; starting a new run")
            ctx = _context(config, folder, model, train_set, val_set, rank, device, on_step)
            state = RunState() if ckpt is None else _restore(ctx, ckpt, out / "last.pt")
            return _fit(ctx, state)


def _finished(config: Config, state: RunState) -> bool:
    """Whether a run in `state` has no epoch left to train under `config` (its final.pt may
    still be missing, when a kill came between the last checkpoint and it)."""
    budget = 60 * config.train.minutes
    return state.epoch >= config.train.epochs or (budget > 0 and state.train_seconds >= budget)


def _check(
    config: Config,
    out: Path,
    *,
    resume: bool,
    overwrite: bool,
    inputs: Sequence[str | Path],
    rank: Rank,
) -> Checkpoint | None:
    """The run folder and what it holds, and the config against the processes, before the
    data are read: the last.pt to resume from (None for a new run)."""
    run_dir.check_run_dir(out, resume=resume, overwrite=overwrite, inputs=map(Path, inputs))
    ckpt = _resume_checkpoint(config, out) if resume else None
    if config.train.batch_size % rank.world:
        raise ValueError(
            f"train.batch_size {config.train.batch_size} must be divisible by the "
            f"{rank.world} processes"
        )
    if ckpt is not None and rank.main:
        changed = config_differences(config_to_dict(config), config_to_dict(ckpt.config))
        if changed:
            log.info(f"note: resuming with changed settings (now vs saved): {'; '.join(changed)}")
    return ckpt


def _resume_checkpoint(config: Config, out: Path) -> Checkpoint | None:
    """The run's last.pt (None when it has none yet), refused if its model differs from config's."""
    path = out / "last.pt"
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    mine, saved = config_to_dict(config)["model"], config_to_dict(ckpt.config)["model"]
    if mine["num_classes"] is None:  # the dataset's: the run has it
        mine["num_classes"] = saved["num_classes"]
    differences = config_differences(mine, saved)
    if differences:
        raise ValueError(
            f"cannot resume {path}: its model differs from the config "
            f"(config vs checkpoint): {'; '.join(differences)}"
        )
    return ckpt


def _with(config: Config, section: str, **values: Any) -> Config:
    """`config` with fields of one section replaced."""
    changed = dataclasses.replace(getattr(config, section), **values)
    return dataclasses.replace(config, **{section: changed})


def _datasets(
    config: Config, *, train_set: Dataset | None, val_set: Dataset | None
) -> tuple[Config, Dataset, Dataset | None]:
    """The given sets, else the config's training split (augmented) and validation split (none
    when `data.val_split` is empty), and the config with `model.num_classes` the training
    set's when unset; every set's classes must match it."""
    if train_set is None:
        train_set = training_set(config)
    k = len(train_set.classes)
    if config.model.num_classes is None:
        config = _with(config, "model", num_classes=k)
    if val_set is None and config.data.val_split:
        val_set = open_dataset(config, config.data.val_split)
    for data in (train_set, val_set):
        if data is not None and len(data.classes) != config.model.num_classes:
            raise ValueError(
                f"the dataset has {len(data.classes)} classes but model.num_classes is "
                f"{config.model.num_classes}; set model.num_classes={len(data.classes)}"
            )
    for data in (train_set, val_set):
        if isinstance(data, SegmentationDataset):
            data.check(threads=torch.get_num_threads())
    return config, train_set, val_set


def _context(
    config: Config,
    folder: run_dir.RunFolder,
    model: DeepStructuredModel,
    train_set: Dataset,
    val_set: Dataset | None,
    rank: Rank,
    device: torch.device,
    on_step: Callable[[Step], None] | None,
) -> TrainContext:
    """The optimizer, GradScaler, loss (DDP under torchrun), loader and TensorBoard of a run."""
    tc, out = config.train, folder.out
    model.to(device)
    dtype = amp_dtype(device, tc.amp)
    weights = class_weights(tc.class_balance, train_set, device)
    if weights is not None and rank.main:
        shown = ", ".join(f"{c} {w:.2f}" for c, w in zip(train_set.classes, weights, strict=True))
        log.info(f"class weights (train.class_balance={tc.class_balance}): {shown}")
    net: nn.Module = PiecewiseLoss(model, tc, weights=weights)
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
        worker_init_fn=_leave_stops_to_the_main_process,
    )
    if len(loader) == 0:
        raise ValueError("the training split is empty")
    return TrainContext(
        config=config,
        out=out,
        folder=folder,
        rank=rank,
        device=device,
        dtype=dtype,
        model=model,
        net=net,
        optimizer=sgd(model, tc),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        loader=loader,
        train_set=train_set,
        val_set=val_set,
        on_step=on_step or (lambda step: None),
        writer=run_dir.summary_writer(out) if rank.main else None,
    )


def _leave_stops_to_the_main_process(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C, which a terminal sends to the whole process group:
    the main process stops the run and shuts its workers down, so the stop is reported once.
    SIGTERM stays with torch's worker handler, which exits quietly when the parent sends it
    (measured: ignored, a worker outlived a parent that was joining it at exit, for good)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _restore(ctx: TrainContext, ckpt: Checkpoint, path: Path) -> RunState:
    """Load last.pt's weights, optimizer (under the config's lr, momentum and weight decay),
    scaler and this rank's RNG states; returns its run state."""
    if ckpt.resume is None:
        raise ValueError(f"{path} holds no optimizer and RNG states to resume from")
    load_model_state(ctx.model, ckpt.model, str(path))
    resume = ckpt.resume
    ctx.optimizer.load_state_dict(resume["optimizer"])
    settings = sgd_settings(ctx.config.train)
    for group, setting in zip(ctx.optimizer.param_groups, settings, strict=True):
        group.update(setting)  # the config's lr, momentum, weight decay, not the saved ones
    ctx.scaler.load_state_dict(resume["scaler"])
    states = resume["rng"]
    if len(states) == ctx.rank.world:
        set_rng_state(states[ctx.rank.rank])
    elif ctx.rank.main:
        log.info(
            f"note: {len(states)} processes saved RNG states, {ctx.rank.world} run now; "
            "training continues but will not repeat the original run bit for bit"
        )
    return dataclasses.replace(ckpt.run, history=list(ckpt.run.history))


def _fit(ctx: TrainContext, state: RunState) -> TrainResult:
    """Epochs until `train.epochs` or the minutes budget, each checkpointed; then final.pt."""
    while state.epoch < ctx.config.train.epochs and not ctx.out_of_time(state):
        state.epoch += 1
        started = time.perf_counter()
        losses = train_one_epoch(ctx, state)
        end_epoch(ctx, state, losses=losses, started=started)
    if ctx.rank.main:
        save_checkpoint(_checkpoint(ctx, state), ctx.out / "final.pt")
        run_dir.write_log(state.history, ctx.out / "log.csv")
        if state.history:
            run_dir.plot_curves(state.history, ctx.out / "curves.png")
        if ctx.writer is not None:
            ctx.writer.close()
    return TrainResult(ctx.model, state.history)


def train_one_epoch(ctx: TrainContext, state: RunState) -> tuple[float, float]:
    """Epoch `state.epoch`: for each batch, the poly lr, then one SGD step on the piecewise
    loss; cut short when the minutes budget runs out. Returns the mean unary and pairwise
    losses of its steps, over every rank."""
    tc = ctx.config.train
    ctx.loader.sampler.set_epoch(state.epoch)
    ctx.loader.generator.manual_seed(seed_for(tc.seed, state.epoch, ctx.rank.rank))  # workers
    ctx.net.train()
    sums, steps = [0.0, 0.0], 0
    for images, labels in ctx.loader:
        started = time.perf_counter()
        factor = lr_factor(
            state.step, ctx.total_steps, tc.lr_power, state.train_seconds, ctx.budget
        )
        for group in ctx.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        terms = _sgd_step(ctx, state, images, labels)
        state.step += 1
        steps += 1
        state.train_seconds += time.perf_counter() - started
        unary, pairwise = (t.item() for t in terms)
        sums[0] += unary
        sums[1] += pairwise
        _report_step(ctx, state, unary, pairwise)
        if ctx.budget and _budget_spent(ctx, state):
            break
    unary_loss, pairwise_loss = ctx.rank.mean([s / steps for s in sums])
    return unary_loss, pairwise_loss


def _sgd_step(
    ctx: TrainContext, state: RunState, images: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """Forward (autocast), a stop on every rank if any rank's loss is not finite, backward
    (GradScaler) and the SGD update; returns the unary and pairwise losses."""
    images = images.to(ctx.device, non_blocking=True)
    labels = labels.to(ctx.device, non_blocking=True)
    with torch.autocast(ctx.device.type, dtype=ctx.dtype, enabled=ctx.dtype is not None):
        unary, pairwise, total = ctx.net(images, labels)
    if ctx.rank.any(not torch.isfinite(total), ctx.device):
        last = ctx.out / "last.pt"
        saved = (
            f"the last good checkpoint is {last} (epoch {state.epoch - 1})"
            if last.exists()
            else "no checkpoint had been written yet"
        )
        raise FloatingPointError(
            f"training diverged: loss is {total.item()} at step {state.step + 1} (epoch "
            f"{state.epoch}); stopped, {saved}. Lower train.lr or check the data."
        )
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scaler.scale(total).backward()
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    return unary, pairwise


def _report_step(ctx: TrainContext, state: RunState, unary: float, pairwise: float) -> None:
    """The step's losses to `on_step` (rank 0) and TensorBoard."""
    if ctx.rank.main:
        left = max(0.0, ctx.budget - state.train_seconds) if ctx.budget else None
        ctx.on_step(Step(state.epoch, state.step, ctx.total_steps, unary, pairwise, left))
    if ctx.writer is not None:
        ctx.writer.add_scalar("loss/unary", unary, state.step)
        ctx.writer.add_scalar("loss/pairwise", pairwise, state.step)
        ctx.writer.add_scalar("lr", ctx.optimizer.param_groups[1]["lr"], state.step)


def _budget_spent(ctx: TrainContext, state: RunState) -> bool:
    """Whether the minutes budget has run out. Under DDP rank 0's clock replaces every rank's,
    so all ranks follow one lr and stop after the same step."""
    state.train_seconds = ctx.rank.from_main(state.train_seconds, ctx.device)
    return ctx.out_of_time(state)


def validate(ctx: TrainContext) -> dict[str, float]:
    """Unary and CRF mIoU on the validation split, each rank scoring its own shard."""
    model, rank = ctx.model, ctx.rank
    stages = ("unary", "crf") if model.relations else ("unary",)
    was_training = model.training
    predictor = Predictor(model, crf=ctx.config.crf, amp=ctx.dtype is not None, device=ctx.device)
    indices = range(rank.rank, len(ctx.val_set), rank.world)
    matrices = score(predictor, ctx.val_set, indices=indices, stages=stages)
    model.train(was_training)
    over = mean_classes(ctx.val_set)
    return {
        f"val_{name}_miou": cm.all_reduce().compute(over)["mean_iou"]
        for name, cm in matrices.items()
    }


def end_epoch(
    ctx: TrainContext, state: RunState, *, losses: tuple[float, float], started: float
) -> None:
    """Close epoch `state.epoch` (begun at perf_counter `started`): validate when due (every
    `train.val_every` epochs, and the last), add its log row, and save best.pt (when the score
    improved), last.pt and log.csv."""
    tc = ctx.config.train
    row: dict[str, Any] = {
        "epoch": state.epoch,
        "step": state.step,
        "lr": ctx.optimizer.param_groups[1]["lr"],
        "unary_loss": losses[0],
        "pairwise_loss": losses[1],
        "val_unary_miou": None,
        "val_crf_miou": None,
    }
    last = state.epoch == tc.epochs or ctx.out_of_time(state)
    improved = False
    if ctx.val_set is not None and (state.epoch % tc.val_every == 0 or last):
        row.update(validate(ctx))
        improved = _record_validation(ctx, state, row)
    row["seconds"] = round(time.perf_counter() - started, 2)
    state.history.append(row)
    _save_checkpoints(ctx, state, improved=improved)


def _record_validation(ctx: TrainContext, state: RunState, row: dict[str, Any]) -> bool:
    """Log a validation row; keep its score (the CRF's mIoU, else the unary's) when it is the
    best so far, and say so."""
    value = row["val_crf_miou"] if row["val_crf_miou"] is not None else row["val_unary_miou"]
    improved = value is not None and not math.isnan(value) and value > state.best
    if improved:
        state.best = value
    if ctx.writer is not None:
        for key in ("val_unary_miou", "val_crf_miou"):
            if row[key] is not None:
                ctx.writer.add_scalar(key.replace("_", "/", 1), row[key], state.step)
    if ctx.rank.main:
        log.info(
            f"epoch {state.epoch}: val mIoU unary {_pct(row['val_unary_miou'])}, "
            f"crf {_pct(row['val_crf_miou'])}"
        )
    return improved


def _save_checkpoints(ctx: TrainContext, state: RunState, *, improved: bool) -> None:
    """best.pt (when improved), last.pt (plus the optimizer, the scaler and every rank's RNG
    states) and log.csv, written by rank 0."""
    states = ctx.rank.gather(rng_state())
    if ctx.rank.main:
        ckpt = _checkpoint(ctx, state)
        if improved:
            save_checkpoint(ckpt, ctx.out / "best.pt")
        optimizer, scaler = ctx.optimizer.state_dict(), ctx.scaler.state_dict()
        resume = {"optimizer": optimizer, "scaler": scaler, "rng": states}
        save_checkpoint(dataclasses.replace(ckpt, resume=resume), ctx.out / "last.pt")
        ctx.folder.keep()  # the first checkpoint: an old run this one replaces can go
        if ctx.folder.writes_config:
            run_dir.save_config(ctx.config, ctx.out / run_dir.CONFIG)
        run_dir.write_log(state.history, ctx.out / "log.csv")
    ctx.rank.barrier()  # no rank runs ahead of a checkpoint it might need to resume from


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _checkpoint(ctx: TrainContext, state: RunState) -> Checkpoint:
    """The run's checkpoint now (its state copied: the loop goes on changing it)."""
    row = state.history[-1] if state.history else {}
    return Checkpoint(
        model=ctx.model.state_dict(),
        config=ctx.config,
        classes=list(ctx.train_set.classes),
        palette=[[int(c) for c in colour] for colour in ctx.train_set.palette],
        run=dataclasses.replace(state, history=list(state.history)),
        metrics={k: v for k, v in row.items() if isinstance(v, float)},
    )
