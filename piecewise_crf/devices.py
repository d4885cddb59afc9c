"""Devices: which torch device a name means, and the autocast dtype a device supports."""

from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device for a name: auto = CUDA when present, else CPU; bare cuda = the local GPU.

    A device that is not there is refused now, not at the first tensor moved to it.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for, but CUDA is not available; use cpu or auto"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ValueError(
                f"device {name!r} asked for, but {count} GPU(s) are visible "
                f"(cuda:0..cuda:{count - 1}); use one of them or auto"
            )
    return device


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 autocast where the GPU supports it, else float16 (with a GradScaler); none on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
