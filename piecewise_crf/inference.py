"""Inference: a model with the settings it predicts with, from images to every stage's marginals.

Scores (log-potentials, higher = more likely) stay inside the model; what leaves this module are
marginals, probabilities (B, K, H, W) at image resolution, one map per stage:

    unary      softmax of the Unary-Net scores, upsampled
    crf        mean-field marginals on the node grid (settings `crf`), upsampled
    crf+dense  the dense CRF (boundary refinement, settings `dense`) on the crf marginals

`Predictor.from_checkpoint` carries the checkpoint's own crf and dense-CRF settings, so Python,
`piecewise-crf evaluate`, `predict`, `tune-dense-crf`, `calibrate`, the demo, the in-training
validation and the ONNX export (`CRFStage`) all predict the same way. How a `CRFConfig` weighs
the pairwise scores in mean-field is `mean_field_weights`, and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from permutocrf import dense_crf
from piecewise_crf.checkpoint import Checkpoint, load_checkpoint
from piecewise_crf.config import STAGES, CRFConfig, DenseCRFConfig, replace_settings
from piecewise_crf.crf import ring_weight
from piecewise_crf.data.base import bit_palette
from piecewise_crf.data.io import open_rgb, viewed_rgb
from piecewise_crf.devices import amp_dtype, resolve_device
from piecewise_crf.errors import ArgumentError
from piecewise_crf.model import DeepStructuredModel, GridPotentials, GridScores
from piecewise_crf.registry import unknown
from piecewise_crf.relations import Offset

ImageInput = np.ndarray | Image.Image | str | os.PathLike | Tensor
KINDS = "an (H, W, 3) uint8 array, a PIL image, a path, a (3, H, W) tensor or a list of them"


def mean_field_weights(
    crf: CRFConfig,
    offsets: Sequence[tuple[str, Offset]],
    ring_weights: Mapping[str, Sequence[float | Tensor]] | None = None,
) -> list[float | Tensor]:
    """The factor of each offset's pairwise scores in mean-field: `crf.pairwise_scale` times the
    weight of the offset's ring in its relation (`ring_weights`, default `crf.ring_weights`;
    a relation without weights counts 1). `offsets` are (relation, offset) pairs."""
    rings = crf.ring_weights if ring_weights is None else ring_weights
    scale = crf.pairwise_scale
    return [scale * ring_weight(rings.get(name, ()), offset) for name, offset in offsets]


def grid_marginals(
    scores: GridScores,
    crf: CRFConfig,
    ring_weights: Mapping[str, Sequence[float | Tensor]] | None = None,
) -> Tensor:
    """Mean-field marginals (B, K, h, w) on the node grid with `crf`'s iterations, tolerance,
    mode and weights (`ring_weights` in place of crf's, e.g. tensors being fitted)."""
    weights = mean_field_weights(crf, scores.offsets(), ring_weights)
    centred = crf.pairwise_mode == "interaction"
    return scores.mean_field(crf.iterations, weights, centred=centred, tolerance=crf.tolerance)


def crf_marginals(
    model: DeepStructuredModel,
    images: Tensor,
    crf: CRFConfig,
    scores: GridScores | None = None,
) -> Tensor:
    """The crf stage without test-time variants: mean-field on the grid, upsampled (B, K, H, W).

    `scores` reuses a forward pass made with `box_fraction=crf.box_fraction`
    (`GridPotentials.scores_for`, e.g. shared by several settings).
    """
    if scores is None:
        potentials = model(images, box_fraction=crf.box_fraction)
        scores = potentials.scores_for(crf.pairwise_mode)
    grid = grid_marginals(scores, crf)
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
    """A model and how it predicts: CRF and dense-CRF settings, test-time variants, device, and
    the names and colours of its classes.

    `predictor(images, stages=None)` -> {stage: marginals}, on the predictor's device. `images`:
    - a batch tensor (B, 3, H, W), float RGB in [0, 1] or uint8 0-255, on any device:
      marginals (B, K, H, W);
    - one image: marginals (K, H, W). An image is an (H, W, 3) uint8 RGB numpy array; a PIL
      image or a path (str or os.PathLike), both read as the dataset readers read files (EXIF
      orientation, `data.io.to_rgb` for every mode); or a (3, H, W) tensor, float RGB in
      [0, 1] or uint8 0-255, on any device. Arrays are channels-last, tensors channels-first;
    - a list (any sequence) of images of any sizes: a list of (K, H, W) marginals per stage
      (same-size images run as one batch).
    `stages` is a stage name or a sequence of them, by default `self.stages`: "unary", "crf",
    the `sweep` settings (extra mean-field settings scored from the same forward pass, e.g.
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
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        sweep: Mapping[str, CRFConfig] | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        amp: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        """`device`: None keeps the model's; a name or torch.device is checked here, when the
        Predictor is built (`devices.resolve_device`: a bad name or a missing GPU is refused)."""
        if not scales or any(not s > 0 for s in scales):
            raise ArgumentError(
                lambda name: f"{name('scales')} must be positive numbers, got {list(scales)}"
            )
        k = model.num_classes
        self.classes = list(classes) if classes is not None else [f"class_{i}" for i in range(k)]
        self.palette = np.asarray(bit_palette(k) if palette is None else palette, np.uint8)
        if len(self.classes) != k or self.palette.shape != (k, 3):
            raise ValueError(f"need {k} class names and a ({k}, 3) palette for this model")
        self.device = (
            next(model.parameters()).device if device is None else resolve_device(str(device))
        )
        self.model = model.to(self.device).eval()
        self.crf = crf or CRFConfig()
        self.dense = dense or DenseCRFConfig()
        self.sweep = dict(sweep or {})
        self.scales, self.flip = tuple(scales), flip
        self.amp_dtype = amp_dtype(self.device, amp)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | Checkpoint,
        *,
        device: str | torch.device | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        sweep: Mapping[str, CRFConfig] | None = None,
        **overrides: Any,
    ) -> Predictor:
        """The checkpoint's model (a path or a loaded `Checkpoint`) with its own crf and
        dense-CRF settings, changed by `overrides` (see `config.replace_settings`, e.g.
        `pairwise_scale=0.01, box_fraction=0.15`). `device` None picks CUDA when present
        ("auto")."""
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        config = replace_settings(ckpt.config, overrides)
        return cls(
            ckpt.build_model(str(checkpoint)),
            crf=config.crf,
            dense=config.dense_crf,
            classes=ckpt.classes,
            palette=ckpt.palette,
            sweep=sweep,
            scales=scales,
            flip=flip,
            amp=config.train.amp,
            device="auto" if device is None else device,
        )

    @property
    def stages(self) -> tuple[str, ...]:
        dense = ("crf+dense",) if self.dense.enabled else ()
        return ("unary", "crf", *self.sweep, *dense)

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        stages: str | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        wanted = self._check_stages(stages)
        if isinstance(images, Tensor) and images.dim() == 4:
            batch = _checked(images, "the batch", 4)
            return self._predict(_unit(batch.to(self.device)), wanted)
        if isinstance(images, Sequence) and not isinstance(images, str | bytes):
            if not images:
                raise ValueError(f"no images to predict: got an empty list; pass {KINDS}")
            listed = [_as_image(image, f"image {i}", i) for i, image in enumerate(images)]
            return self._predict_list(listed, wanted)
        one = self._predict_list([_as_image(images, "the input", "given")], wanted)
        return {name: maps[0] for name, maps in one.items()}

    def potentials(self, images: Tensor) -> GridPotentials:
        """The model's scores on the node grid for images (B, 3, H, W) on the predictor's device,
        under autocast where it is on, with the prediction range box (`crf.box_fraction`)."""
        dtype = self.amp_dtype
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            return self.model(images, box_fraction=self.crf.box_fraction)

    def _check_stages(self, stages: str | Sequence[str] | None) -> tuple[str, ...]:
        known = (*STAGES[:2], *self.sweep, STAGES[2])
        if isinstance(stages, str):
            stages = (stages,)
        wanted = self.stages if stages is None else tuple(stages)
        for stage in wanted:
            if stage not in known:
                raise ValueError(unknown("stage", stage, known))
        if not wanted:
            raise ValueError(f"no stages asked for; choose from {', '.join(known)}")
        return wanted

    def _predict_list(self, images: list[Tensor], wanted: tuple[str, ...]) -> dict[str, list]:
        """Marginals of checked (3, H, W) images, same-size ones as one batch: a list per stage."""
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        out: dict[str, list[Tensor | None]] = {name: [None] * len(images) for name in wanted}
        for indices in by_size.values():
            batch = torch.stack([_unit(images[i].to(self.device)) for i in indices])
            for name, probs in self._predict(batch, wanted).items():
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
        probs = self._marginals(images, needed, unary="unary" in wanted)
        if "crf+dense" in wanted:
            probs["crf+dense"] = refine(images, probs["crf"], self.dense)
        return {name: probs[name] for name in wanted}

    def _marginals(
        self, images: Tensor, settings: dict[str, CRFConfig], unary: bool = True
    ) -> dict[str, Tensor]:
        """Mean-field marginals of each of `settings` and, if `unary`, the unary marginals, at
        image size, averaged over the test variants."""
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
            potentials = self.potentials(x)
            maps: dict[str, Tensor] = {}
            if unary:
                grid = potentials.unary.float().softmax(1)
                maps["unary"] = self.model.upsample(grid, tuple(x.shape[-2:]))
            modes = [crf.pairwise_mode for crf in settings.values()]
            scores = potentials.scores_for(*modes) if modes else None  # None: no mean-field
            for name, crf in settings.items():
                maps[name] = crf_marginals(self.model, x, crf, scores)
            for name, probs in maps.items():
                if tuple(probs.shape[-2:]) != size:
                    probs = F.interpolate(probs, size, mode="bilinear", align_corners=False)
                if flipped:
                    probs = probs.flip(-1)
                sums[name] = sums[name] + probs if name in sums else probs
        return {name: total / len(variants) for name, total in sums.items()}


def _unit(images: Tensor) -> Tensor:
    """Checked images as contiguous float32 RGB in [0, 1]: the memory layout changes the model's
    float rounding, so every input form gets the same one."""
    unit = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    return unit.contiguous()


def _as_image(image: object, what: str, source: object) -> Tensor:
    """One image (see `Predictor`) as a checked (3, H, W) float or uint8 tensor; a ValueError
    naming `what` was given and the fix. `source` names a PIL image in `to_rgb`'s refusals."""
    if isinstance(image, Tensor):
        return _checked(image, what, 3)
    if isinstance(image, str | os.PathLike):
        image = np.asarray(open_rgb(Path(image)))
    elif isinstance(image, Image.Image):
        image = np.asarray(viewed_rgb(image, source))
    elif not isinstance(image, np.ndarray):
        raise ValueError(f"{what} is of type {type(image).__name__}, not an image; pass {KINDS}")
    return torch.from_numpy(np.array(_array_layout(image, what), order="C"))  # a writable copy


def _array_layout(array: np.ndarray, what: str) -> np.ndarray:
    """`array` as (3, H, W) if it is a non-empty (H, W, 3) uint8 RGB array, else a ValueError."""
    shape, dtype = array.shape, array.dtype
    rgb = len(shape) == 3 and shape[2] == 3
    if rgb and dtype == np.uint8 and array.size:
        return array.transpose(2, 0, 1)
    floats = rgb and dtype.kind == "f" and array.size and np.isfinite(array).all()
    top = float(array.max()) if floats and array.min() >= 0 else np.inf  # inf: not 0-1, 0-255
    if not array.size:
        fix = "it has no pixels"
    elif top <= 1:
        fix = "pass (array * 255).round().astype(np.uint8), or a float tensor (3, H, W)"
    elif top <= 255:
        fix = "for values 0-255 pass array.round().astype(np.uint8)"
    elif dtype == np.uint8 and (len(shape) == 2 or len(shape) == 3 and shape[2] == 4):
        fix = "pass Image.fromarray(array) to read it as image files are (grey, alpha over white)"
    elif len(shape) == 3 and shape[0] == 3:
        fix = "channels go last: pass array.transpose(1, 2, 0)"
    elif len(shape) == 4:
        fix = "pass list(array) for several images"
    else:
        fix = "convert it to 8-bit RGB"
    raise ValueError(f"{what}: expected an (H, W, 3) uint8 RGB array, got {shape} {dtype}; {fix}")


def _checked(images: Tensor, what: str, dims: int) -> Tensor:
    """`images` if they are a (3, H, W) image (`dims` 3) or a (B, 3, H, W) batch (4) with
    pixels, uint8 or float RGB in [0, 1]; else a ValueError saying what they are and the fix."""
    shape, dtype = tuple(images.shape), images.dtype
    if images.dim() == 4 and dims == 3:
        fix = "a batch goes on its own, not in a list"
    elif images.dim() != dims:
        fix = "pass one image (3, H, W) or a batch (B, 3, H, W)"
    elif not (images.is_floating_point() or dtype == torch.uint8):
        fix = "pass float RGB in [0, 1] or uint8 0-255"
    elif not images.numel():
        fix = "no images to predict"
    elif shape[-3] != 3 and shape[-1] == 3:
        fix = f"channels go first: pass .permute({'2, 0, 1' if dims == 3 else '0, 3, 1, 2'})"
    elif shape[-3] != 3:
        fix = f"RGB has 3 channels, it has {shape[-3]}"
    else:
        return images if dtype == torch.uint8 else _in_unit_range(images, what)
    layout = "(3, H, W) image" if dims == 3 else "(B, 3, H, W) batch"
    raise ValueError(
        f"{what}: expected a {layout} tensor, float RGB in [0, 1] or uint8, got {shape} {dtype}; "
        f"{fix}"
    )


def _in_unit_range(images: Tensor, what: str) -> Tensor:
    """Float `images` if they hold RGB in [0, 1]; else a ValueError saying what they hold."""
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{what} holds NaN or infinite values; pass float RGB in [0, 1]")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1 + 1e-6:
        hint = "; divide 0-255 values by 255" if high > 1 else ""
        raise ValueError(f"{what} must be float RGB in [0, 1], got values {low:g}..{high:g}{hint}")
    return images
