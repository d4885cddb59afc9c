"""Inference: a model with the settings it predicts with, from images to every stage's marginals.

Scores (log-potentials, higher = more likely) stay inside the model; what leaves this module are
marginals, probabilities (B, K, H, W) at image resolution, one map per stage:

    unary      softmax of the Unary-Net scores, upsampled
    crf        mean-field marginals on the node grid (settings `crf`), upsampled
    crf+dense  the dense CRF (boundary refinement, settings `dense`) on the crf marginals

`Predictor.from_checkpoint` carries the checkpoint's own crf and dense-CRF settings, so Python,
`piecewise-crf evaluate`, `predict`, `tune-dense-crf`, the demo, the in-training validation and
the ONNX export (`CRFStage`) all predict the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from piecewise_crf.checkpoint import load_checkpoint, model_from_checkpoint
from piecewise_crf.config import Config, CRFConfig, DenseCRFConfig, validate
from piecewise_crf.densecrf import dense_crf
from piecewise_crf.model import DeepStructuredModel
from piecewise_crf.runtime import amp_dtype, resolve_device

STAGES = ("unary", "crf", "crf+dense")
_CRF_KEYS = tuple(f.name for f in dataclasses.fields(CRFConfig))
_DENSE_KEYS = tuple(f.name for f in dataclasses.fields(DenseCRFConfig))


def with_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """A copy of `config` with crf and dense-CRF settings replaced by key name, validated.

    Keys are CRFConfig's (`iterations`, `pairwise_mode`, `pairwise_scale`, `box_fraction`) and
    DenseCRFConfig's (`pos_xy_std`, ..., `bi_weight`); the dense CRF's `iterations` and
    `enabled` are `dense_iterations` and `dense_enabled`.
    """
    crf: dict[str, Any] = {}
    dense: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in _CRF_KEYS:
            crf[key] = value
        elif key.startswith("dense_") and key[len("dense_") :] in _DENSE_KEYS:
            dense[key[len("dense_") :]] = value
        elif key in _DENSE_KEYS:
            dense[key] = value
        else:
            valid = [
                *_CRF_KEYS,
                *(k for k in _DENSE_KEYS if k not in _CRF_KEYS),
                "dense_iterations",
            ]
            match = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {match[0]!r}?" if match else f"valid: {', '.join(valid)}"
            raise ValueError(f"unknown prediction setting {key!r}; {hint}")
    config = dataclasses.replace(
        config,
        crf=dataclasses.replace(config.crf, **crf),
        dense_crf=dataclasses.replace(config.dense_crf, **dense),
    )
    validate(config)
    return config


def crf_marginals(
    model: DeepStructuredModel, images: Tensor, crf: CRFConfig, potentials: Any = None
) -> Tensor:
    """The crf stage without test-time variants: mean-field on the grid, upsampled (B, K, H, W).

    `potentials` reuses a forward pass made with `box_fraction=crf.box_fraction`.
    """
    if potentials is None:
        potentials = model(images, box_fraction=crf.box_fraction)
    grid = model.marginals(
        potentials,
        iterations=crf.iterations,
        pairwise_mode=crf.pairwise_mode,
        pairwise_scale=crf.pairwise_scale,
        ring_weights=crf.ring_weights,
    )
    return model.upsample(grid, tuple(map(int, images.shape[-2:])))  # ints when traced too


class CRFStage(nn.Module):
    """The crf stage as a module, images (B, 3, H, W) float RGB in [0, 1] -> marginals (B, K, H, W):
    what `piecewise-crf export` writes to ONNX."""

    def __init__(self, model: DeepStructuredModel, crf: CRFConfig) -> None:
        super().__init__()
        self.model, self.crf = model, crf

    def forward(self, images: Tensor) -> Tensor:
        return crf_marginals(self.model, images, self.crf)


def refine(images: Tensor, probs: Tensor, dense: DenseCRFConfig) -> Tensor:
    """The crf+dense stage: the dense CRF on images (B, 3, H, W) in [0, 1] as uint8 RGB and
    marginals (B, K, H, W), on their device."""
    rgb = (images.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8)
    return dense_crf(
        rgb,
        probs.float(),
        iterations=dense.iterations,
        pos_xy_std=dense.pos_xy_std,
        pos_weight=dense.pos_weight,
        bi_xy_std=dense.bi_xy_std,
        bi_rgb_std=dense.bi_rgb_std,
        bi_weight=dense.bi_weight,
    )


class Predictor:
    """A model and how it predicts: CRF and dense-CRF settings, test-time variants, device.

    `predictor(images, stages=None)` -> {stage: marginals}. `images` is a float batch
    (B, 3, H, W) in [0, 1] on any device (marginals (B, K, H, W) on the predictor's device), or
    a list of (H, W, 3) uint8 RGB arrays of any sizes (a list of (K, H, W) marginals per stage;
    same-size images run as one batch). `stages` defaults to `self.stages`: "unary", "crf", the
    `sweep` settings (extra mean-field settings scored from the same forward pass, e.g.
    "crf[interaction,0.01]") and "crf+dense" unless the dense CRF is disabled.
    With several `scales` or `flip`, each variant's marginals are averaged at full resolution
    (mean-field runs on each variant's own grid; the dense CRF runs once, on the average).
    """

    def __init__(
        self,
        model: DeepStructuredModel,
        *,
        crf: CRFConfig | None = None,
        dense: DenseCRFConfig | None = None,
        sweep: Mapping[str, CRFConfig] | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        amp: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f"test scales must be positive numbers, got {list(scales)}")
        self.device = (
            next(model.parameters()).device if device is None else resolve_device(str(device))
        )
        self.model = model.to(self.device).eval()
        self.crf = crf or CRFConfig()
        self.dense = dense or DenseCRFConfig()
        self.sweep = dict(sweep or {})
        self.scales, self.flip = tuple(scales), flip
        self.amp_dtype = amp_dtype(self.device, amp)
        self.config: Config | None = None  # set by from_checkpoint, with the classes below
        self.classes: list[str] = []
        self.palette: np.ndarray | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        sweep: Mapping[str, CRFConfig] | None = None,
        **overrides: Any,
    ) -> Predictor:
        """The checkpoint's model with its own crf and dense-CRF settings, changed by
        `overrides` (see `with_overrides`, e.g. `pairwise_scale=0.01, box_fraction=0.15`).
        `device` None picks CUDA when present, else the CPU."""
        ckpt = load_checkpoint(path)
        model, config = model_from_checkpoint(ckpt, str(path))
        config = with_overrides(config, overrides)
        predictor = cls(
            model,
            crf=config.crf,
            dense=config.dense_crf,
            sweep=sweep,
            scales=scales,
            flip=flip,
            amp=config.train.amp,
            device=resolve_device("auto" if device is None else str(device)),
        )
        predictor.config = config
        predictor.classes = list(ckpt["classes"])
        predictor.palette = np.asarray(ckpt["palette"], dtype=np.uint8)
        return predictor

    @property
    def stages(self) -> tuple[str, ...]:
        dense = ("crf+dense",) if self.dense.enabled else ()
        return ("unary", "crf", *self.sweep, *dense)

    def __call__(
        self, images: Tensor | Sequence[np.ndarray], stages: Sequence[str] | None = None
    ) -> dict[str, Any]:
        wanted = self._check_stages(stages)
        if isinstance(images, Tensor):
            if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
                raise ValueError(
                    f"images must be a float batch (B, 3, H, W) in [0, 1], got "
                    f"{tuple(images.shape)} {images.dtype}; pass a list for (H, W, 3) uint8 arrays"
                )
            return self._predict(images.to(self.device, torch.float32), wanted)
        return self._predict_list(list(images), wanted)

    def _check_stages(self, stages: Sequence[str] | None) -> tuple[str, ...]:
        known = ("unary", "crf", *self.sweep, "crf+dense")
        wanted = self.stages if stages is None else tuple(stages)
        unknown = [s for s in wanted if s not in known]
        if unknown or not wanted:
            raise ValueError(f"unknown stages {unknown}; choose from {', '.join(known)}")
        return wanted

    def _predict_list(self, arrays: list[np.ndarray], wanted: tuple[str, ...]) -> dict[str, Any]:
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, array in enumerate(arrays):
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                raise ValueError(
                    f"image {i}: expected an (H, W, 3) uint8 RGB array, got "
                    f"{array.shape} {array.dtype}"
                )
            by_size.setdefault(array.shape, []).append(i)
        out: dict[str, list[Tensor | None]] = {name: [None] * len(arrays) for name in wanted}
        for indices in by_size.values():
            batch = torch.from_numpy(np.stack([arrays[i] for i in indices]))
            images = batch.to(self.device).permute(0, 3, 1, 2).float().div(255)
            for name, probs in self._predict(images, wanted).items():
                for i, p in zip(indices, probs, strict=True):
                    out[name][i] = p
        return out

    @torch.no_grad()
    def _predict(self, images: Tensor, wanted: tuple[str, ...]) -> dict[str, Tensor]:
        settings = {"crf": self.crf, **self.sweep}
        needed = {
            name: crf
            for name, crf in settings.items()
            if name in wanted or (name == "crf" and "crf+dense" in wanted)
        }
        probs = self._marginals(images, needed)
        if "crf+dense" in wanted:
            probs["crf+dense"] = refine(images, probs["crf"], self.dense)
        return {name: probs[name] for name in wanted}

    def _marginals(self, images: Tensor, settings: dict[str, CRFConfig]) -> dict[str, Tensor]:
        """Unary and mean-field marginals at image size, averaged over the test variants."""
        size = tuple(images.shape[-2:])
        variants = [(s, f) for s in self.scales for f in ((False, True) if self.flip else (False,))]
        sums: dict[str, Tensor] = {}
        for scale, flipped in variants:
            x = images
            if scale != 1.0:
                scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
                x = F.interpolate(x, scaled, mode="bilinear", align_corners=False, antialias=True)
            if flipped:
                x = x.flip(-1)
            dtype = self.amp_dtype
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
                potentials = self.model(x, box_fraction=self.crf.box_fraction)
            grid = potentials.unary.float().softmax(1)
            maps = {"unary": self.model.upsample(grid, tuple(x.shape[-2:]))}
            for name, crf in settings.items():
                maps[name] = crf_marginals(self.model, x, crf, potentials)
            for name, probs in maps.items():
                if tuple(probs.shape[-2:]) != size:
                    probs = F.interpolate(probs, size, mode="bilinear", align_corners=False)
                if flipped:
                    probs = probs.flip(-1)
                sums[name] = sums[name] + probs if name in sums else probs
        return {name: total / len(variants) for name, total in sums.items()}
