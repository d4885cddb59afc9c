"""PyTorch is optional: numpy arrays on CPU need only numpy and numba; tensors, other devices,
``backend="torch"`` and autograd need torch, imported only when asked for."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

INSTALL = "pip install torch"


def require(what: str) -> ModuleType:
    """The torch module, or ImportError saying that ``what`` needs it and how to install it."""
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{what} needs PyTorch, which is not installed: {INSTALL} (numpy arrays on CPU "
            "need only numpy and numba)"
        ) from None
    return torch


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (never imports torch: a tensor implies it is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def device_type(device: Any) -> str:
    """The kind of a device given as None (CPU), a string ("cuda:1") or a torch.device."""
    if device is None:
        return "cpu"
    kind = getattr(device, "type", None)
    return kind if isinstance(kind, str) else str(device).split(":")[0]
