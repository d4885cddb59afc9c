"""ONNX export: a checkpoint's crf stage as one graph, images (B, 3, H, W) -> marginals (B, K, H, W).

The graph is `CRFStage(predictor.model, predictor.crf)` of `Predictor.from_checkpoint`: FeatMap-Net,
the Unary- and Pairwise-Nets, mean-field with the checkpoint's crf setting and the upsampling, so
it computes what the Predictor's "crf" stage computes (one scale, no flip). The image size is
fixed (the relations' offsets are constants of the node grid it gives), the batch is dynamic.
The dense CRF is not in the graph: it stays post-processing (`permutocrf.dense_crf`),
with the checkpoint's settings in the graph's metadata beside the class names and crf setting.

Exporter: torch's TorchScript one (`torch.onnx.export(dynamo=False)` with `dynamic_axes`), which
needs only the onnx package; the dynamo exporter also needs onnxscript, which we do not install.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from piecewise_crf import __version__
from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.errors import ArgumentError
from piecewise_crf.files import atomic_write
from piecewise_crf.inference import CRFStage, Predictor
from piecewise_crf.outputs import OutputPlan

OPSET = 17
GRAPH_VERSION = 1  # the graph's interface (inputs, outputs, metadata keys): ONNX model_version
MIN_SIZE = 32  # 2x2 CRF nodes at the network's stride of 16
INSTALL = "pip install onnx onnxruntime"


@dataclass(frozen=True)
class Exported:
    """What `export_onnx` wrote."""

    path: Path
    bytes: int
    input_shape: tuple[str | int, ...]  # ("B", 3, H, W)
    output_shape: tuple[str | int, ...]  # ("B", K, H, W)
    grid: tuple[int, int]  # the node grid mean-field runs on
    crf: dict[str, object]  # iterations, pairwise_mode, pairwise_scale, box_fraction (in effect)
    seconds: float

    def summary(self) -> str:
        """The file, its input and output, the crf setting, in a few lines."""
        crf = self.crf
        return "\n".join(
            [
                f"wrote {self.path} ({self.bytes / 1e6:.1f} MB, ONNX opset {OPSET}, "
                f"{self.seconds:.1f} s)",
                f"  input   images {_shape(self.input_shape)} float RGB in [0, 1]",
                f"  output  marginals {_shape(self.output_shape)}, the crf stage",
                f"  crf     {crf['iterations']} mean-field iterations, {crf['pairwise_mode']} "
                f"pairwise scores x{crf['pairwise_scale']:g}"
                + "".join(f", {n} rings x{w}" for n, w in crf.get("ring_weights", {}).items())
                + ", box fraction "
                f"{crf['box_fraction']:g} on a {self.grid[0]}x{self.grid[1]} node grid",
                "  metadata: classes, palette, crf, dense_crf (the post-processing's settings)",
            ]
        )


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    size: tuple[int, int],
    *,
    overwrite: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> Exported:
    """Write the checkpoint's crf stage for images of `size` (H, W) as an ONNX graph to `out`.

    Input "images" (B, 3, H, W) float32 RGB in [0, 1], output "marginals" (B, K, H, W); B is
    dynamic. `settings` replace the checkpoint's crf and dense-CRF settings by key name, as in
    `Predictor.from_checkpoint`. The file is written atomically; an existing `out` is replaced
    only with `overwrite`.
    """
    height, width = size
    if min(height, width) < MIN_SIZE:
        raise ArgumentError(
            lambda name: (
                f"{name('size')}: each side must be at least {MIN_SIZE} pixels, "
                f"got {height} {width}"
            )
        )
    try:
        import onnx
    except ImportError:
        raise ImportError(f"ONNX export needs the package onnx: {INSTALL}") from None
    checkpoint, out = Path(checkpoint), Path(out)
    plan = OutputPlan()
    plan.read(checkpoint)
    plan.write(out, "out", suffix=".onnx", replace=overwrite)  # never a file of another kind
    plan.check()
    ckpt = load_checkpoint(checkpoint)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", **(settings or {}))
    plan.folders()

    start = time.perf_counter()
    model = onnx.load_from_string(_trace(CRFStage(predictor.model, predictor.crf).eval(), size))
    k = predictor.model.num_classes
    # The exporter leaves K, H, W of the output symbolic (its shape inference stops at the crop
    # of the upsampled map); they are fixed, and deployments read them from the declaration.
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for dim, value in zip(dims[1:], (k, height, width), strict=True):
        dim.dim_value = value
    crf = dataclasses.asdict(predictor.crf)
    if crf["box_fraction"] is None:
        crf["box_fraction"] = ckpt.config.model.box_fraction  # the trained box, which it uses
    dense = dataclasses.asdict(predictor.dense)
    del dense["enabled"]
    model.doc_string = (
        "piecewise-crf crf stage: images (B, 3, H, W) float RGB in [0, 1] -> mean-field "
        "marginals (B, K, H, W); the metadata names the K classes"
    )
    metadata = {
        "classes": predictor.classes,
        "palette": predictor.palette.tolist(),
        "crf": crf,
        "dense_crf": dense,  # keyword arguments of densecrf.dense_crf
    }
    onnx.helper.set_model_props(model, {k: json.dumps(v) for k, v in metadata.items()})
    model.producer_name, model.producer_version = "piecewise-crf", __version__
    model.model_version = GRAPH_VERSION
    data = model.SerializeToString()
    atomic_write(out, lambda f: f.write(data))
    return Exported(
        path=out,
        bytes=len(data),
        input_shape=("B", 3, height, width),
        output_shape=("B", k, height, width),
        grid=predictor.model.grid_size(height, width),
        crf=crf,
        seconds=time.perf_counter() - start,
    )


def _trace(stage: CRFStage, size: tuple[int, int]) -> bytes:
    """The ONNX bytes of `stage` traced on images of `size`, the batch axis dynamic."""
    # A batch of 2, not 1, so that no size-1 broadcast hides where the batch axis goes.
    example = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # Expected: the tracer reads the grid's sizes as constants (one graph per image size),
        # the TorchScript exporter is deprecated, constant folding skips some slices.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(
            stage,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["marginals"],
            dynamic_axes={"images": {0: "batch"}, "marginals": {0: "batch"}},
        )
    return buffer.getvalue()


def _shape(shape: tuple[str | int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"
