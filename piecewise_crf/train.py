"""Piecewise training: SGD with momentum, a per-step poly schedule, validation, exact resume.

One process, or several under `torchrun --nproc_per_node N` (DistributedDataParallel: gloo on CPU,
NCCL on CUDA). `train.batch_size` is the global batch, split evenly over the processes; only
rank 0 writes files. RUN_DIR receives:

    config.yaml   the resolved config          log.csv      one row per epoch
    last.pt       every epoch, for --resume    best.pt      best validation mIoU so far
    final.pt      the finished model           curves.png   losses and mIoU per epoch

The loop: `train` checks everything before it claims RUN_DIR; then each epoch is
`train_one_epoch` (per batch the poly lr of `lr_factor` and an SGD step on `step_loss`) and
`end_epoch` (validation when due, best.pt, last.pt, log.csv). What the loop carries from epoch to
epoch is a `RunState`, which every checkpoint holds.

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
from dataclasses import asdict, dataclass, field
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
from piecewise_crf.evaluate import score
from piecewise_crf.files import atomic_save, atomic_write_text, remove_stale_temps
from piecewise_crf.inference import Predictor
from piecewise_crf.model import DeepStructuredModel, LossTerms, build_model
from piecewise_crf.runtime import amp_dtype, dataset_from_config, ensure_writable, resolve_device

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
    """The training split with the paper's augmentation (scale, flip, crop/pad) and colour jitter."""
    data = config.data
    transforms = train_transforms(
        data.crop_size, data.scale_range, data.flip, colour_jitter=data.colour_jitter
    )
    return dataset_from_config(config, data.train_split, root=root, transforms=transforms)


def fit_epochs(config: Config, minutes: float, data_root: str | Path | None = None) -> int:
    """Epochs that fit a time budget (training, its validations and a final evaluation with the
    dense CRF), from timing a few training steps and one prediction on this machine."""
    root = data_root if data_root is not None else config.data.root
    data = training_set(config, root)
    tc = config.train
    model = build_model(config.model, load_weights=False)
    freeze_layers(model, tc.freeze_layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # timing only: weights stay put
    times = []
    for k in range(6):  # the first two steps are slow (lazy imports, allocator): skip them
        tic = time.perf_counter()
        batch = [data[(k * tc.batch_size + i) % len(data)] for i in range(tc.batch_size)]
        images, labels = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        step_loss(model, images, labels, tc).total.backward()
        optimizer.step()
        times.append(time.perf_counter() - tic)
    step = statistics.median(times[2:])
    val = dataset_from_config(config, config.data.val_split, root=root)
    model.eval()
    tic = time.perf_counter()
    Predictor(model, crf=config.crf)(val[0][0][None], ("crf",))
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


def lr_factor(
    step: int, total_steps: int, power: float, elapsed: float = 0.0, budget: float = 0.0
) -> float:
    """The poly schedule's multiplier of the base lr, (1 - done) ** power: done is the fraction
    of steps taken, or with a time budget (seconds > 0) the larger of that and of the budget
    spent; 0 once done reaches 1."""
    done = step / total_steps
    if budget:
        done = max(done, elapsed / budget)
    return max(0.0, 1 - done) ** power


def step_loss(
    model: DeepStructuredModel,
    images: Tensor,
    labels: Tensor,
    tc: TrainConfig,
    *,
    class_weights: Tensor | None = None,
) -> LossTerms:
    """A training step's piecewise loss with the config's `pairwise_weight`, `detach_pairwise`,
    `edge_fraction` and `memory_efficient`; `class_weights` from `balancing_weights`."""
    return model.loss(
        images,
        labels,
        pairwise_weight=tc.pairwise_weight,
        detach_pairwise=tc.detach_pairwise,
        edge_fraction=tc.edge_fraction,
        memory_efficient=tc.memory_efficient,
        class_weights=class_weights,
    )


class PiecewiseLoss(nn.Module):
    """`step_loss` as a forward pass, so DistributedDataParallel sees (and syncs) it."""

    def __init__(
        self, model: DeepStructuredModel, tc: TrainConfig, *, class_weights: Tensor | None = None
    ):
        super().__init__()
        self.model = model
        self.tc = tc
        self.class_weights = class_weights

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        terms = step_loss(self.model, images, labels, self.tc, class_weights=self.class_weights)
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
    stages = ("unary", "crf") if model.relations else ("unary",)
    indices = range(rank.rank, len(dataset), rank.world)
    was_training = model.training
    predictor = Predictor(model, crf=config.crf, amp=dtype is not None, device=device)
    matrices = score(predictor, dataset, indices=indices, stages=stages)
    model.train(was_training)
    mean_classes = dataset.mean_classes() if hasattr(dataset, "mean_classes") else None
    out = {}
    for name, cm in matrices.items():
        out[f"val_{name}_miou"] = cm.all_reduce().compute(mean_classes)["mean_iou"]
    return out


@dataclass
class TrainResult:
    model: DeepStructuredModel  # the trained model (on its training device, in train mode)
    history: list[dict[str, Any]]  # one row per epoch, as in log.csv


@dataclass
class RunState:
    """What the loop carries from epoch to epoch; every checkpoint holds it, --resume restores it."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (log.csv)
    best: float = -math.inf  # the best validation score so far (best.pt's)
    train_seconds: float = 0.0  # time in training steps: the clock of `train.minutes`

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint keys 'epoch', 'step', 'history', 'best', 'train_seconds' (plain values)."""
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> RunState:
        """The state a checkpoint (format 1) was saved in; 'best' and 'train_seconds' optional."""
        return cls(
            epoch=ckpt["epoch"],
            step=ckpt["step"],
            history=list(ckpt["history"]),
            best=ckpt.get("best", -math.inf),
            train_seconds=ckpt.get("train_seconds", 0.0),
        )


@dataclass
class TrainContext:
    """What stays put from epoch to epoch: the run's config, folder, model and training machinery."""

    config: Config
    out: Path  # RUN_DIR
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
    bar: tqdm
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
        result = _train(
            config, Path(out_dir), data_root=data_root, resume=resume, overwrite=overwrite,
            train_set=train_set, val_set=val_set, progress=progress, rank=rank, device=device,
        )  # fmt: skip
        if started:  # no rank tears the process group down while another is still in it
            dist.barrier()
        return result
    finally:
        if started:
            dist.destroy_process_group()


def _train(
    config: Config,
    out: Path,
    *,
    data_root: str | Path | None,
    resume: bool,
    overwrite: bool,
    train_set: Dataset | None,
    val_set: Dataset | None,
    progress: bool,
    rank: Rank,
    device: torch.device,
) -> TrainResult:
    """Check the folder, the checkpoint, the config and the data; build the model; only then
    claim the run folder, and fit."""
    check_run_dir(out, resume=resume, overwrite=overwrite)
    ckpt = _resume_checkpoint(config, out) if resume else None
    tc = config.train
    if tc.batch_size % rank.world:
        raise ValueError(
            f"train.batch_size {tc.batch_size} must be divisible by the {rank.world} processes"
        )
    train_set, val_set = _datasets(config, data_root, train_set=train_set, val_set=val_set)
    if ckpt is not None and rank.main:
        changed = config_differences(config_to_dict(config), ckpt["config"])
        if changed:
            print(f"note: resuming with changed settings (now vs saved): {'; '.join(changed)}")

    random.seed(tc.seed + rank.rank)
    np.random.seed(tc.seed + rank.rank)  # noqa: NPY002
    torch.manual_seed(tc.seed + rank.rank)  # DDP copies rank 0's initial weights to the others
    model = build_model(config.model, load_weights=ckpt is None, max_edges=tc.max_edges)
    freeze_layers(model, tc.freeze_layers)
    # Every check has passed: only now is the run folder created, locked or cleared.
    lock = claim_run_dir(out, resume=resume, overwrite=overwrite, main=rank.main)
    if resume and ckpt is None and rank.main:
        print(f"note: {out} holds no last.pt yet; starting a new run")
    if rank.main:
        save_config(config, out / "config.yaml")
    try:
        ctx, state = _setup(
            config, out, ckpt=ckpt, model=model, train_set=train_set, val_set=val_set,
            progress=progress, rank=rank, device=device,
        )  # fmt: skip
        return _fit(ctx, state)
    finally:
        if lock is not None:
            lock.close()


def _resume_checkpoint(config: Config, out: Path) -> dict[str, Any] | None:
    """The run's last.pt (None when it has none yet), refused if its model differs from config's."""
    path = out / "last.pt"
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    differences = config_differences(config_to_dict(config)["model"], ckpt["config"]["model"])
    if differences:
        raise ValueError(
            f"cannot resume {path}: its model differs from the config "
            f"(config vs checkpoint): {'; '.join(differences)}"
        )
    return ckpt


def _datasets(
    config: Config,
    data_root: str | Path | None,
    *,
    train_set: Dataset | None,
    val_set: Dataset | None,
) -> tuple[Dataset, Dataset | None]:
    """The given sets, else the config's training split (augmented) and validation split (none
    when `data.val_split` is empty); their classes must match `model.num_classes`."""
    root = data_root if data_root is not None else config.data.root
    if train_set is None:
        train_set = training_set(config, root)
    if val_set is None and config.data.val_split:
        val_set = dataset_from_config(config, config.data.val_split, root=root)
    if len(train_set.classes) != config.model.num_classes:
        raise ValueError(
            f"the dataset has {len(train_set.classes)} classes but model.num_classes is "
            f"{config.model.num_classes}; set model.num_classes={len(train_set.classes)}"
        )
    return train_set, val_set


def _setup(
    config: Config,
    out: Path,
    *,
    ckpt: dict[str, Any] | None,
    model: DeepStructuredModel,
    train_set: Dataset,
    val_set: Dataset | None,
    progress: bool,
    rank: Rank,
    device: torch.device,
) -> tuple[TrainContext, RunState]:
    """The optimizer, GradScaler, loss (DDP under torchrun), loader, progress bar and TensorBoard
    of a run, and its state: a new one, or last.pt's when resuming."""
    tc = config.train
    model.to(device)
    optimizer = sgd(model, tc)
    dtype = amp_dtype(device, tc.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    state = RunState()
    if ckpt is not None:
        state = _restore(
            ckpt, out / "last.pt", model=model, optimizer=optimizer, scaler=scaler, tc=tc, rank=rank
        )

    class_weights = balancing_weights(tc, train_set, device)
    if class_weights is not None and rank.main:
        shown = ", ".join(
            f"{c} {w:.2f}" for c, w in zip(train_set.classes, class_weights, strict=True)
        )
        print(f"class weights (train.class_balance={tc.class_balance}): {shown}")
    net: nn.Module = PiecewiseLoss(model, tc, class_weights=class_weights)
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
    bar = tqdm(
        total=tc.epochs * len(loader), initial=state.step, desc="train", dynamic_ncols=True,
        disable=not (progress and rank.main),
    )  # fmt: skip
    ctx = TrainContext(
        config=config, out=out, rank=rank, device=device, dtype=dtype, model=model, net=net,
        optimizer=optimizer, scaler=scaler, loader=loader, train_set=train_set, val_set=val_set,
        bar=bar, writer=_summary_writer(out) if rank.main else None,
    )  # fmt: skip
    return ctx, state


def _restore(
    ckpt: dict[str, Any],
    path: Path,
    *,
    model: DeepStructuredModel,
    optimizer: torch.optim.SGD,
    scaler: torch.amp.GradScaler,
    tc: TrainConfig,
    rank: Rank,
) -> RunState:
    """Load last.pt's weights, optimizer (under the config's lr, momentum and weight decay),
    scaler and this rank's RNG states; returns its run state."""
    load_model_state(model, ckpt["model"], str(path))
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, settings in zip(optimizer.param_groups, sgd_settings(tc), strict=True):
        group.update(settings)  # the config's lr, momentum, weight decay, not the saved ones
    scaler.load_state_dict(ckpt["scaler"])
    states = ckpt["rng"]
    if len(states) == rank.world:
        set_rng_state(states[rank.rank])
    elif rank.main:
        print(f"note: {len(states)} processes saved RNG states, {rank.world} run now; "
              "training continues but will not repeat the original run bit for bit")  # fmt: skip
    return RunState.from_checkpoint(ckpt)


def _fit(ctx: TrainContext, state: RunState) -> TrainResult:
    """Epochs until `train.epochs` or the minutes budget, each checkpointed; then final.pt."""
    while state.epoch < ctx.config.train.epochs and not ctx.out_of_time(state):
        state.epoch += 1
        started = time.perf_counter()
        losses = train_one_epoch(ctx, state)
        end_epoch(ctx, state, losses=losses, started=started)
    ctx.bar.close()
    if ctx.rank.main:
        atomic_save(_meta(ctx, state), ctx.out / "final.pt")
        write_log(state.history, ctx.out / "log.csv")
        if state.history:
            plot_curves(state.history, ctx.out / "curves.png")
        if ctx.writer is not None:
            ctx.writer.close()
    return TrainResult(ctx.model, state.history)


def train_one_epoch(ctx: TrainContext, state: RunState) -> tuple[float, float]:
    """Epoch `state.epoch`: for each batch, the poly lr, then one SGD step on `step_loss`; cut
    short when the minutes budget runs out. Returns the mean unary and pairwise losses of its
    steps, over every rank."""
    tc = ctx.config.train
    ctx.loader.sampler.set_epoch(state.epoch)
    ctx.loader.generator.manual_seed(_seed_for(tc.seed, state.epoch, ctx.rank.rank))  # workers
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
        _show_step(ctx, state, unary, pairwise)
        if ctx.budget and _budget_spent(ctx, state):
            break
    unary_loss, pairwise_loss = _all_reduce_mean([s / steps for s in sums], ctx.rank.world)
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
    bad = torch.tensor(float(not torch.isfinite(total)), device=ctx.device)
    if ctx.rank.world > 1:
        dist.all_reduce(bad)
    if bad.item():
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


def _show_step(ctx: TrainContext, state: RunState, unary: float, pairwise: float) -> None:
    """The step's losses on the progress bar (and the minutes left) and in TensorBoard."""
    ctx.bar.update()
    shown = {"epoch": state.epoch, "unary": f"{unary:.3f}", "pairwise": f"{pairwise:.3f}"}
    if ctx.budget:
        shown["left"] = f"{max(0.0, ctx.budget - state.train_seconds) / 60:.1f} min"
    ctx.bar.set_postfix(shown)
    if ctx.writer is not None:
        ctx.writer.add_scalar("loss/unary", unary, state.step)
        ctx.writer.add_scalar("loss/pairwise", pairwise, state.step)
        ctx.writer.add_scalar("lr", ctx.optimizer.param_groups[1]["lr"], state.step)


def _budget_spent(ctx: TrainContext, state: RunState) -> bool:
    """Whether the minutes budget has run out. Under DDP rank 0's clock replaces every rank's,
    so all ranks follow one lr and stop after the same step."""
    if ctx.rank.world > 1:
        clock = torch.tensor(state.train_seconds, dtype=torch.float64, device=ctx.device)
        dist.broadcast(clock, 0)
        state.train_seconds = clock.item()
    return ctx.out_of_time(state)


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
        row.update(validate(ctx.model, ctx.val_set, ctx.config, ctx.device, ctx.rank, ctx.dtype))
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
        ctx.bar.write(
            f"epoch {state.epoch}: val mIoU unary {_pct(row['val_unary_miou'])}, "
            f"crf {_pct(row['val_crf_miou'])}"
        )
    return improved


def _save_checkpoints(ctx: TrainContext, state: RunState, *, improved: bool) -> None:
    """best.pt (when improved), last.pt (plus the optimizer, the scaler and every rank's RNG
    states) and log.csv, written by rank 0."""
    states = [rng_state()]
    if ctx.rank.world > 1:
        states = [None] * ctx.rank.world
        dist.all_gather_object(states, rng_state())
    if ctx.rank.main:
        meta = _meta(ctx, state)
        if improved:
            atomic_save(meta, ctx.out / "best.pt")
        resume = {"optimizer": ctx.optimizer.state_dict(), "scaler": ctx.scaler.state_dict(),
                  "rng": states}  # fmt: skip
        atomic_save({**meta, **resume}, ctx.out / "last.pt")
        write_log(state.history, ctx.out / "log.csv")
    if ctx.rank.world > 1:
        dist.barrier()  # no rank runs ahead of a checkpoint it might need to resume from


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _meta(ctx: TrainContext, state: RunState) -> dict[str, Any]:
    """What every checkpoint holds (see piecewise_crf.checkpoint), the run state included."""
    row = state.history[-1] if state.history else {}
    return {
        "format_version": FORMAT_VERSION,
        "model": ctx.model.state_dict(),
        "config": config_to_dict(ctx.config),
        "classes": list(ctx.train_set.classes),
        "palette": np.asarray(ctx.train_set.palette).astype(int).tolist(),
        "metrics": {k: v for k, v in row.items() if isinstance(v, float)},
        **state.to_dict(),
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
