"""The dense CRF as a trainable layer (CRF-as-RNN, Zheng et al. 2015): ``dense_crf``'s
mean-field with learnable kernel weights and compatibility."""

from __future__ import annotations

import torch
from torch import nn

from permutocrf.dense import PARAMS, check_params, image_layout
from permutocrf.dense_torch import as_tensor, compat_matrix, refine


class DenseCRFLayer(nn.Module):
    """``iterations`` mean-field steps of a Gaussian (position) + bilateral (position, RGB)
    dense CRF whose weights w_k and (K, K) compatibility mu are parameters. With gradients it
    runs on torch lattices (any device); in ``torch.no_grad()`` as ``dense_crf`` (numba on CPU).

    Sign convention (pydensecrf's, as ``dense_crf``): ``compat`` is an *energy*, the penalty
    mu(l, l') for labels l, l' at two similar pixels, initialised to Potts ``1 - I``; it is
    symmetrised in use. The weights are stored as ``log_weights`` (log w_pos, log w_bi), so
    they stay positive. The stds fix the lattice and are not learned.

    ``forward(images, scores)``: images (B, 3, H, W) or (B, H, W, 3), uint8 (0-255) or float
    RGB in [0, 1] (scaled by 255, so ``bi_rgb_std`` is in pydensecrf's units); ``scores``
    (B, K, H, W) unary scores, minus the unary energy: logits and log-probabilities give the
    same marginals (the softmax ignores a per-pixel constant). Returns the marginals Q
    (B, K, H, W). With ``scores = log(max(probs, PROB_FLOOR))`` and the initial parameters it
    computes ``dense_crf(images, probs)``.
    """

    def __init__(
        self,
        num_classes: int,
        iterations: int = 5,
        pos_xy_std: float = PARAMS["pos_xy_std"],
        pos_weight: float = PARAMS["pos_weight"],
        bi_xy_std: float = PARAMS["bi_xy_std"],
        bi_rgb_std: float = PARAMS["bi_rgb_std"],
        bi_weight: float = PARAMS["bi_weight"],
    ) -> None:
        super().__init__()
        check_params(iterations, pos_xy_std, bi_xy_std, bi_rgb_std, pos_weight, bi_weight)
        if not (pos_weight > 0 and bi_weight > 0):
            raise ValueError(f"weights must be positive, got {pos_weight!r}, {bi_weight!r}")
        self.num_classes = num_classes
        self.iterations = iterations
        self.stds = (float(pos_xy_std), float(bi_xy_std), float(bi_rgb_std))
        self.log_weights = nn.Parameter(torch.tensor([pos_weight, bi_weight]).log())
        self.compat = nn.Parameter(1 - torch.eye(num_classes))

    def forward(self, images: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.dim() != 4 or scores.shape[1] != self.num_classes:
            raise ValueError(
                f"scores must be (B, {self.num_classes}, H, W), got {tuple(scores.shape)}"
            )
        b, k, h, w = scores.shape
        img = image_layout(as_tensor(images, "images"), (b, k, h, w), True, floats=True)
        img = img.to(scores.device)
        if img.is_floating_point():
            img = img.detach() * 255
        mu = compat_matrix(self.compat, k, scores)
        # refine overwrites its scores where nothing needs gradients (numba, on CPU).
        logp = scores.clone(memory_format=torch.contiguous_format)
        return refine(img, logp, self.log_weights.exp().unbind(), mu, self.iterations, self.stds)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, iterations={self.iterations}, stds={self.stds}"
