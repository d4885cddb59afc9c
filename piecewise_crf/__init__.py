"""Deep structured models for semantic segmentation, trained piecewise (Lin et al., CVPR 2016).

The public names, imported on first use (so `import piecewise_crf.config` stays light):
`Predictor`, `build_model`, `load_config`, `dense_crf`, `ConfusionMatrix`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"  # the one place (pyproject.toml reads it)

_PUBLIC = {
    "Predictor": "piecewise_crf.inference",
    "build_model": "piecewise_crf.model",
    "load_config": "piecewise_crf.config",
    "dense_crf": "permutocrf",
    "ConfusionMatrix": "piecewise_crf.metrics",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'piecewise_crf' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
