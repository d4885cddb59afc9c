"""Several processes under `torchrun --nproc_per_node N`: DistributedDataParallel (gloo on CPU,
NCCL on CUDA), and the few collectives the training loop needs; all are no-ops in one process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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

    def mean(self, values: list[float]) -> list[float]:
        """The mean of `values` over every rank."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` holds on any rank."""
        t = torch.tensor(float(flag), device=device)
        if self.world > 1:
            dist.all_reduce(t)
        return bool(t.item())

    def from_main(self, value: float, device: torch.device) -> float:
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        t = torch.tensor(value, dtype=torch.float64, device=device)
        dist.broadcast(t, 0)
        return t.item()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


@contextmanager
def process_group(rank: Rank, device: torch.device) -> Iterator[None]:
    """Join the process group for the block when torchrun started several processes and nobody
    joined it yet; no rank tears it down while another is still in it."""
    started = rank.world > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
        if started:
            dist.barrier()
    finally:
        if started:
            dist.destroy_process_group()
