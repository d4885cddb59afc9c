"""The deep structured model: FeatMap-Net -> node grid -> CNN unary and pairwise potentials.

Data flows one way: image -> FeatMap-Net -> node features -> potentials, then either the piecewise
loss (training, no inference) or mean-field on the grid -> bilinear upsampling (prediction).
All potentials are scores (log-potentials, higher = more likely).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from piecewise_crf import grid_numba
from piecewise_crf.backbones import build_backbone
from piecewise_crf.crf import GridPairwise, check_weights, full_interactions, grid_mean_field
from piecewise_crf.featmap import FeatMapNet, grid_size
from piecewise_crf.node_labels import NODE_LABEL_RULES, node_labels
from piecewise_crf.potentials import PairwiseNet, UnaryNet, offset_chunks
from piecewise_crf.relations import Offset, Relation, build_relations, offset_slices
from piecewise_crf.settings import ModelConfig


@dataclass
class RelationScores:
    """Pairwise scores of one relation on a node grid, computed on demand, chunk by chunk.

    Iterating yields ((dy, dx), z) with z (B, K, K, h', w'), z[b, i, j] the score of y_p = i,
    y_q = j for the nodes p whose partner q = p + (dy, dx) is inside the grid.
    """

    net: PairwiseNet
    maps: tuple[Tensor, Tensor]  # the Pairwise-Net's first-layer halves (W_a F + b, W_b F)
    offsets: list[Offset]
    max_edges: int

    def chunks(self, offsets: Sequence[Offset] | None = None) -> Iterator[list[Offset]]:
        h, w = map(int, self.maps[0].shape[-2:])  # ints under the ONNX tracer too
        return offset_chunks(self.offsets if offsets is None else offsets, h, w, self.max_edges)

    def blocks(
        self, spans: bool = False, interaction: bool = False
    ) -> Iterator[tuple[list[Offset], Tensor]]:
        """(offsets, scores) per chunk: (B, K*K, S) as `PairwiseNet.flat_scores` makes them,
        or (B, R*S) in span order by `PairwiseNet.span_scores` if `spans` (no autograd), R =
        K*K or, if `interaction`, the (K - 1)^2 rows of the scores' interaction part."""
        for chunk in self.chunks():
            if spans:
                yield chunk, self.net.span_scores(self.maps, chunk, interaction)
            else:
                yield chunk, self.net.flat_scores(self.maps, chunk)

    def views(
        self,
        offsets: Sequence[Offset],
        flat: Tensor,
        spans: bool = False,
        interaction: bool = False,
    ) -> Iterator[GridPairwise]:
        """((dy, dx), z) for one block (in span order if `spans`, of the interaction rows if
        `interaction`), z a view of `flat`."""
        h, w = map(int, self.maps[0].shape[-2:])  # ints under the ONNX tracer too
        if spans:
            views = self.net.span_views(flat, offsets, h, w, interaction)
        else:
            views = self.net.offset_views(flat, offsets, h, w)
        return zip(offsets, views, strict=True)

    def __iter__(self) -> Iterator[GridPairwise]:
        for chunk, flat in self.blocks():
            yield from self.views(chunk, flat)


@dataclass(frozen=True)
class GridScores:
    """Unary scores (B, K, h, w) and the pairwise scores of every offset with edges on the grid:
    (relation, offset, z) with z (B, K, K, h', w'), z[b, i, j] the score of y_p = i, y_q = j.

    If `interaction`, each z holds only the interaction part of the scores
    (`crf.centre_interactions`), and only its first K - 1 labels on each side: (B, K - 1,
    K - 1, h', w'); its rows and columns sum to 0, which fixes the rest (`crf.full_interactions`).
    Mean-field on them runs in "interaction" mode only."""

    unary: Tensor
    pairwise: list[tuple[str, Offset, Tensor]]
    # The same scores as the Pairwise-Nets made them, when they did: (offsets, (B, K*K, S)) per
    # chunk, the entries' z views of them in order; (B, R*S) in span order
    # (`PairwiseNet.span_scores`) if `spans`, which the compiled mean-field reads.
    blocks: tuple[tuple[tuple[Offset, ...], Tensor], ...] = ()
    spans: bool = False
    interaction: bool = False

    def offsets(self) -> list[tuple[str, Offset]]:
        """(relation, offset) of every pairwise entry, in order."""
        return [(name, offset) for name, offset, _ in self.pairwise]

    def mean_field(
        self,
        iterations: int = 3,
        weights: Sequence[float | Tensor] | None = None,
        *,
        centred: bool = False,
        tolerance: float = 0.0,
    ) -> Tensor:
        """Mean-field marginals (B, K, h, w) on the node grid (`crf.grid_mean_field`), in full
        precision; `weights` one per pairwise entry; at most `iterations`, fewer once an update
        moves no marginal by more than `tolerance` (> 0); iterations=0 gives softmax(unary). On CPU
        without autograd the compiled loop (`grid_numba`) runs it, the same to float rounding."""
        if self.interaction and not centred:
            raise ValueError(
                "these scores hold only the pairwise interactions, so mean-field runs centred; "
                "for raw mode take GridPotentials.scores_for('raw')"
            )
        unary = _full_precision(self.unary)
        if iterations == 0 or not self.pairwise:
            return unary.softmax(1)
        check_weights(weights, len(self.pairwise))
        if self.spans and grid_numba.applies(unary, self.blocks, weights):
            return grid_numba.grid_mean_field(
                unary, self.blocks, iterations, weights, centred, tolerance, self.interaction
            )
        full = full_interactions if self.interaction else (lambda z: z)
        pairwise = [(o, full(_full_precision(z))) for _, o, z in self.pairwise]
        return grid_mean_field(
            unary, pairwise, iterations, weights, centred=centred, tolerance=tolerance
        )


@dataclass(frozen=True)
class GridPotentials:
    """Output of `DeepStructuredModel.forward`: unary scores (B, K, h, w) and the pairwise scores
    of each relation, computed on demand: chunk by chunk for the loss, all at once by `scores`."""

    unary: Tensor
    pairwise: dict[str, RelationScores]

    @cached_property
    def scores(self) -> GridScores:
        """Every score on the grid. The Pairwise-Nets run here, once per forward pass: mean-field
        with several settings on one image (a validation sweep) costs no more net evaluations.
        On CPU without autograd or a tracer they come in span order, for the compiled
        mean-field (`grid_numba`)."""
        return self._grid_scores(self._compiled(), interaction=False)

    @cached_property
    def interactions(self) -> GridScores:
        """The interaction part of every pairwise score, (K - 1)^2 per edge
        (`GridScores.interaction`), in span order for the compiled mean-field; where that does
        not run (see `scores`), the full scores."""
        if not self._compiled() or int(self.unary.shape[1]) < 2:
            return self.scores
        return self._grid_scores(spans=True, interaction=True)

    def scores_for(self, *pairwise_modes: str) -> GridScores:
        """The scores that mean-field in each of `pairwise_modes` (`settings.PAIRWISE_MODES`)
        can read, so several settings share one evaluation of the Pairwise-Nets: when every mode
        is "interaction", only the interactions (for K = 11, 100 of the 121 products per edge in
        the K*K layer and in every update, and no centring pass; a trained CamVid model's
        pairwise scores and mean-field took 313 ms instead of 403, 2 threads,
        `benchmarks/prediction_paths.py`), else `scores`, which serve both modes."""
        if pairwise_modes and all(mode == "interaction" for mode in pairwise_modes):
            return self.interactions
        return self.scores

    def _compiled(self) -> bool:
        """Whether the compiled mean-field can run on these scores: CPU, no autograd, no tracer."""
        return (
            self.unary.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.jit.is_tracing()
        )

    def _grid_scores(self, spans: bool, interaction: bool) -> GridScores:
        pairwise, blocks = [], []
        for name, relation in self.pairwise.items():
            for offsets, flat in relation.blocks(spans, interaction):
                blocks.append((tuple(offsets), flat))
                views = relation.views(offsets, flat, spans, interaction)
                pairwise.extend((name, o, z) for o, z in views)
        return GridScores(self.unary, pairwise, tuple(blocks), spans, interaction)


@dataclass
class LossTerms:
    unary: Tensor  # mean unary NLL over labelled nodes
    pairwise: Tensor  # mean pairwise NLL over edges with both ends labelled (all relations)
    total: Tensor  # unary + pairwise_weight * pairwise


class DeepStructuredModel(nn.Module):
    """FeatMap-Net with a CRF on its node grid: CNN unary potentials and one Pairwise-Net per relation.

    `forward(images)` -> `GridPotentials` (scores on the grid, and mean-field on them);
    `loss(images, labels)` -> piecewise NLL terms; `upsample` grid marginals to image size
    (`piecewise_crf.inference` puts them together with the CRF settings). Images are
    (B, 3, H, W) float RGB in [0, 1]; labels (B, H, W) int64 with `ignore_index` for void pixels.
    """

    def __init__(
        self,
        featmap: FeatMapNet,
        num_classes: int,
        relations: Sequence[Relation],
        *,
        hidden: int = 512,
        node_labels: str = "nearest",
        ignore_index: int = 255,
        max_edges: int = 32768,
    ) -> None:
        super().__init__()
        if node_labels not in NODE_LABEL_RULES:
            raise ValueError(f"node_labels must be one of {NODE_LABEL_RULES}, got {node_labels!r}")
        names = [r.name for r in relations]
        if len(set(names)) != len(names):
            raise ValueError(f"relation names must be unique, got {names}")
        self.featmap = featmap
        self.num_classes = num_classes
        self.relations = list(relations)
        self.node_label_rule = node_labels
        self.ignore_index = ignore_index
        self.max_edges = max_edges
        channels = featmap.out_channels
        self.unary_net = UnaryNet(channels, num_classes, hidden)
        self.pairwise_nets = nn.ModuleDict(
            {r.name: PairwiseNet(channels, num_classes, hidden) for r in self.relations}
        )

    def forward(
        self,
        images: Tensor,
        *,
        box_fraction: float | None = None,
        detach_pairwise: bool = False,
    ) -> GridPotentials:
        """Unary and pairwise scores on the node grid.

        `box_fraction` replaces the relations' trained range box (None keeps it). A Pairwise-Net
        scores any pair of node features, so a model trained with one box can predict with a
        smaller one: fewer edges, each a near neighbour, and a cheaper mean-field.
        `detach_pairwise` stops the pairwise scores' gradient at the Pairwise-Nets' inputs (the
        scores themselves are unchanged).
        """
        if box_fraction is not None and not 0 < box_fraction <= 1:
            raise ValueError(f"the prediction box fraction must be in (0, 1], got {box_fraction}")
        features = self.featmap(images)
        h, w = map(int, features.shape[-2:])  # ints under the ONNX tracer too
        relations = self.relations
        if box_fraction is not None:
            relations = [r.resized(box_fraction) for r in relations]
        pair_features = features.detach() if detach_pairwise else features
        pairwise = {
            r.name: RelationScores(
                net=self.pairwise_nets[r.name],
                maps=self.pairwise_nets[r.name].first_layer_maps(pair_features),
                offsets=r.offsets(h, w),
                max_edges=self.max_edges,
            )
            for r in relations
        }
        return GridPotentials(unary=self.unary_net(features), pairwise=pairwise)

    def _cell(self) -> float:
        """Image pixels per node along each axis (the stride at the largest scale)."""
        return self.featmap.stride / max(self.featmap.scales)

    def node_labels(self, labels: Tensor, grid: tuple[int, int]) -> Tensor:
        """Pixel labels (B, H, W) -> node labels (B, h, w) by the model's rule (`node_labels`)."""
        return node_labels(
            labels,
            grid,
            self._cell(),
            rule=self.node_label_rule,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
        )

    def loss(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        pairwise_weight: float = 1.0,
        detach_pairwise: bool = False,
        edge_fraction: float = 1.0,
        memory_efficient: bool = False,
        class_weights: Tensor | None = None,
    ) -> LossTerms:
        """Piecewise training loss (no inference, no partition function).

        edge_fraction < 1 samples that fraction of each relation's offsets and reweights them, an
        unbiased estimate of the pairwise sum (the edge count is exact). memory_efficient
        recomputes each chunk's K*K scores in the backward pass, so training memory is bounded by
        one chunk instead of all edges. class_weights (K,) turns both terms into weighted means:
        node p counts w[y_p], edge (p, q) counts sqrt(w[y_p] * w[y_q]). detach_pairwise: the
        pairwise NLL trains the Pairwise-Nets only, and FeatMap-Net learns from the unary NLL.
        """
        if (
            labels.dim() != 3
            or labels.shape[0] != images.shape[0]
            or labels.shape[-2:] != images.shape[-2:]
        ):
            raise ValueError(
                f"labels must be (B, H, W) matching images {tuple(images.shape)}, got "
                f"{tuple(labels.shape)}; resize labels with nearest-neighbour to the image size"
            )
        potentials = self(images, detach_pairwise=detach_pairwise)
        unary = potentials.unary
        nodes = self.node_labels(labels, unary.shape[-2:])
        node_weights = self._node_weights(nodes, class_weights)
        unary_nll = F.cross_entropy(
            _full_precision(unary), nodes, ignore_index=self.ignore_index, reduction="none"
        )
        unary_nll = (unary_nll * node_weights).sum() / node_weights.sum().clamp(min=1e-12)
        if not (nodes != self.ignore_index).any():
            unary_nll = unary.sum() * 0.0
        pairwise_nll = _pairwise_nll(
            potentials, nodes, node_weights, edge_fraction, memory_efficient
        )
        return LossTerms(unary_nll, pairwise_nll, unary_nll + pairwise_weight * pairwise_nll)

    def _node_weights(self, nodes: Tensor, class_weights: Tensor | None) -> Tensor:
        """Each node's weight in the loss: class_weights[y_p] (1 without them), 0 unlabelled;
        a ValueError for labels outside the classes."""
        bad = (nodes != self.ignore_index) & ((nodes < 0) | (nodes >= self.num_classes))
        if bad.any():
            raise ValueError(
                f"labels hold values {torch.unique(nodes[bad]).tolist()} outside "
                f"0..{self.num_classes - 1}; set model.num_classes or map void to {self.ignore_index}"
            )
        valid = nodes != self.ignore_index
        if class_weights is None:
            return valid.float()
        if class_weights.shape != (self.num_classes,):
            raise ValueError(
                f"class_weights must have one entry per class ({self.num_classes}), "
                f"got shape {tuple(class_weights.shape)}"
            )
        weights = class_weights.to(nodes.device, torch.float32)[nodes.masked_fill(~valid, 0)]
        return weights * valid

    def upsample(self, grid_marginals: Tensor, size: tuple[int, int]) -> Tensor:
        """Bilinear upsampling of grid marginals to image size (H, W).

        The grid may overhang the image (ceil division), so it is upsampled to its own pixel
        extent and cropped, keeping every node over the pixels it was computed from.
        """
        h, w = map(int, grid_marginals.shape[-2:])  # ints under the ONNX tracer too
        cell = self._cell()
        extent = (max(size[0], round(h * cell)), max(size[1], round(w * cell)))
        up = F.interpolate(grid_marginals, size=extent, mode="bilinear", align_corners=False)
        return up[:, :, : size[0], : size[1]]

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return grid_size(height, width, self.featmap.scales, self.featmap.stride)


def _full_precision(x: Tensor) -> Tensor:
    """Half-precision scores from autocast -> float32; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _pairwise_nll(
    potentials: GridPotentials,
    nodes: Tensor,
    node_weights: Tensor,
    edge_fraction: float,
    memory_efficient: bool,
) -> Tensor:
    """The weighted mean pairwise NLL over every relation's edges, chunk by chunk; with
    `edge_fraction` < 1, over a random subset of each relation's offsets, reweighted."""
    total = potentials.unary.new_zeros((), dtype=torch.float32)
    count = potentials.unary.new_zeros((), dtype=torch.float32)
    for scores in potentials.pairwise.values():
        offsets = scores.offsets
        weight = 1.0
        if edge_fraction < 1.0 and offsets:
            m = max(1, math.ceil(edge_fraction * len(offsets)))
            keep = torch.randperm(len(offsets))[:m].sort().values.tolist()
            weight = len(offsets) / m
            count = count + _labelled_edges(node_weights, offsets)
            offsets = [offsets[i] for i in keep]
        for chunk in scores.chunks(offsets):
            s, c = _chunk_nll(scores.net, scores.maps, chunk, nodes, node_weights, memory_efficient)
            total = total + weight * s
            if edge_fraction >= 1.0:
                count = count + c
    return total / count.clamp(min=1e-12)


def _labelled_edges(node_weights: Tensor, offsets: Sequence[Offset]) -> Tensor:
    """Total weight of the edges at `offsets` (an edge weighs sqrt(w_p * w_q); 0 if unlabelled)."""
    h, w = node_weights.shape[-2:]
    count = node_weights.new_zeros(())
    for dy, dx in offsets:
        (pr, pc), (qr, qc) = offset_slices(h, w, dy, dx)
        count = count + (node_weights[:, pr, pc] * node_weights[:, qr, qc]).sqrt().sum()
    return count


def _edge_labels(
    nodes: Tensor, node_weights: Tensor, offsets: Sequence[Offset], num_classes: int
) -> tuple[Tensor, Tensor]:
    """Pair targets y_p * K + y_q (B, S) and edge weights sqrt(w_p * w_q), in `flat_scores` order.

    Unlabelled nodes have weight 0, so an edge with an unlabelled end has weight 0."""
    h, w = nodes.shape[-2:]
    safe = nodes.masked_fill(node_weights == 0, 0)
    targets, weights = [], []
    for dy, dx in offsets:
        (pr, pc), (qr, qc) = offset_slices(h, w, dy, dx)
        targets.append((safe[:, pr, pc] * num_classes + safe[:, qr, qc]).flatten(1))
        weights.append((node_weights[:, pr, pc] * node_weights[:, qr, qc]).sqrt().flatten(1))
    return torch.cat(targets, 1), torch.cat(weights, 1)


def _chunk_nll(
    net: PairwiseNet,
    maps: tuple[Tensor, Tensor],
    chunk: list[Offset],
    nodes: Tensor,
    node_weights: Tensor,
    memory_efficient: bool,
) -> tuple[Tensor, Tensor]:
    """Weighted sum of the pairwise NLL terms of one chunk of offsets, and the weights' sum."""
    target, weight = _edge_labels(nodes, node_weights, chunk, net.num_classes)

    def run(a: Tensor, b: Tensor) -> Tensor:
        log_probs = _full_precision(net.flat_scores((a, b), chunk)).log_softmax(1)
        return -(log_probs.gather(1, target.unsqueeze(1)).squeeze(1) * weight).sum()

    if memory_efficient and torch.is_grad_enabled():
        return checkpoint(run, *maps, use_reentrant=False), weight.sum()
    return run(*maps), weight.sum()


def build_model(
    config: ModelConfig,
    *,
    load_weights: bool = True,
    max_edges: int = 32768,
    channels_last: bool = True,
) -> DeepStructuredModel:
    """The model a `ModelConfig` describes.

    load_weights=False skips reading the pretrained backbone file (use it when a checkpoint will
    overwrite every weight) but keeps the input normalisation those weights imply.
    channels_last=False keeps FeatMap-Net's CPU convolutions in (B, C, H, W) (`FeatMapNet`).
    """
    if config.num_classes is None:
        raise ValueError("model.num_classes is not set: set it (training sets it from the dataset)")
    if load_weights:
        backbone = build_backbone(config.backbone, weights=config.backbone_weights)
    else:
        style = "caffe" if config.backbone_weights == "hed" else None
        backbone = build_backbone(config.backbone, input_style=style)
    featmap = FeatMapNet(
        backbone,
        scales=config.scales,
        block6_channels=config.block6_channels,
        pool_windows=config.pool_windows,
        pool_order=config.pool_order,
        channels_last=channels_last,
    )
    relations = build_relations(
        config.relations,
        fraction=config.box_fraction,
        custom={k: [tuple(o) for o in v] for k, v in config.custom_relations.items()},
    )
    return DeepStructuredModel(
        featmap,
        config.num_classes,
        relations,
        hidden=config.hidden,
        node_labels=config.node_labels,
        ignore_index=config.ignore_index,
        max_edges=max_edges,
    )
