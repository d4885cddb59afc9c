"""The losses a training step minimises: the piecewise likelihood (the method's), with optional
class weights, and for comparison the joint loss through mean-field inference."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from piecewise_crf.config import CRFConfig, TrainConfig
from piecewise_crf.crf import marginal_loss
from piecewise_crf.data.balancing import class_frequencies, median_frequency_weights
from piecewise_crf.inference import grid_marginals
from piecewise_crf.model import DeepStructuredModel, LossTerms


def class_weights(power: float, dataset: Dataset, device: torch.device) -> Tensor | None:
    """Class weights (K,) for `train.class_balance` = `power` from the dataset's labels; None
    when off (power 0)."""
    if not power:
        return None
    weights = median_frequency_weights(class_frequencies(dataset), power)
    return torch.tensor(weights, dtype=torch.float32, device=device)


def piecewise_loss(
    model: DeepStructuredModel,
    images: Tensor,
    labels: Tensor,
    tc: TrainConfig,
    *,
    weights: Tensor | None = None,
) -> LossTerms:
    """A training step's piecewise loss with the config's `pairwise_weight`, `detach_pairwise`,
    `edge_fraction` and `memory_efficient`; class `weights` from `class_weights`."""
    return model.loss(
        images,
        labels,
        pairwise_weight=tc.pairwise_weight,
        detach_pairwise=tc.detach_pairwise,
        edge_fraction=tc.edge_fraction,
        memory_efficient=tc.memory_efficient,
        class_weights=weights,
    )


class PiecewiseLoss(nn.Module):
    """`piecewise_loss` as a forward pass, so DistributedDataParallel sees (and syncs) it."""

    def __init__(
        self, model: DeepStructuredModel, tc: TrainConfig, *, weights: Tensor | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.tc = tc
        self.weights = weights

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        terms = piecewise_loss(self.model, images, labels, self.tc, weights=self.weights)
        return terms.unary, terms.pairwise, terms.total


def mean_field_loss(
    model: DeepStructuredModel,
    images: Tensor,
    labels: Tensor,
    crf: CRFConfig,
    *,
    weights: Tensor | None = None,
) -> Tensor:
    """Joint training's loss: the mean -log Q_p(y_p) of the mean-field marginals (`crf`'s
    settings) over labelled nodes, weighted by class `weights`[y_p] when given.

    It back-propagates through the mean-field iterations (inference inside training), the cost
    that piecewise training avoids; the experiments use it for comparisons.
    """
    potentials = model(images)
    nodes = model.node_labels(labels, potentials.unary.shape[-2:])
    q = grid_marginals(potentials.scores_for(crf.pairwise_mode), crf)
    weights = None if weights is None else weights.to(q.device, q.dtype)
    return marginal_loss(q, nodes, class_weights=weights, ignore_index=model.ignore_index)
