"""``hard_negative_loss``: per anchor, a (1+K)-way cross-entropy over its own positive and its own negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipneg.train.losses.distributed import global_mean
from clipneg.train.losses.weights import column_bias


class PerSampleLoss(nn.Module):
    """Per anchor a, CE over [s cos(a, p) ; s cos(a, n_1..K) + log w_k] with target the positive p (DAC; FSC-CLIP,
    Oh et al. EMNLP 2024; DeGLA's IGC), optionally with focal weighting (1 - p)^gamma (Lin et al. 2017) and label
    smoothing y_pos = 1 - eps + eps/(1+n), y_neg = eps/(1+n) over the n valid negatives (FSC-CLIP: gamma 2, eps 0.02).

    Anchors without any valid negative have nothing to contrast and leave the mean (over the global batch).
    The ``hard_negative`` term calls it with (image, caption, negative captions); the paraphrase term with captions.

    | argument          | shape     | meaning                                                          |
    |-------------------|-----------|------------------------------------------------------------------|
    | ``anchor``        | [B, D]    | anchors, L2-normalised                                           |
    | ``positive``      | [B, D]    | each anchor's positive                                           |
    | ``scale``         | []        | logit scale s                                                    |
    | ``negatives``     | [B, K, D] | each anchor's own negatives                                      |
    | ``neg_weight``    | [B, K]    | their weights (0: padding, else the kind weight)                 |
    """

    def __init__(self, label_smoothing: float = 0.0, focal_gamma: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.focal_gamma = focal_gamma

    def forward(self, anchor: Tensor, positive: Tensor, scale: Tensor, negatives: Tensor,
                neg_weight: Tensor) -> Tensor:
        pos = scale * (anchor * positive).sum(-1, keepdim=True)  # [B, 1]
        neg = scale * torch.einsum("bd,bkd->bk", anchor, negatives) + column_bias(neg_weight)  # [B, K]
        logits = torch.cat([pos, neg], dim=1)
        logp = F.log_softmax(logits, dim=1)
        valid = (neg_weight > 0).to(logits.dtype)
        n = valid.sum(1, keepdim=True)
        eps = self.label_smoothing
        target = torch.cat([1 - eps + eps / (1 + n), valid * eps / (1 + n)], dim=1)
        weight = target
        if self.focal_gamma > 0:
            # Focal weighting (Lin et al. 2017) as FSC-CLIP applies it: down-weight classes already predicted well.
            weight = target * (1 - logp.exp()).clamp_min(0).pow(self.focal_gamma)
        per_anchor = -(weight * logp).sum(1)
        # Anchors without any valid negative have nothing to contrast: they leave the mean.
        return global_mean(per_anchor, (n.squeeze(1) > 0).to(per_anchor.dtype))
