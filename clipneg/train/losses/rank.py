"""``rank_loss``: CE-CLIP's cross-modal ranking hinge with an adaptive, detached threshold per kind of negative."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipneg.train.losses.distributed import all_reduce_sum, global_mean


class RankLoss(nn.Module):
    """Mean over an image's valid negatives of w * relu(tau + s cos(I,T') - s cos(I,T)) (CE-CLIP, Zhang et al. CVPR
    2024), averaged over the images that have one. The threshold tau = mean s cos(I,T) - mean s cos(I,T') over the
    global batch, per kind of negative (per slot when kinds are unknown), is detached and clamped to
    [0, max_threshold].

    | argument            | shape      | meaning                                                              |
    |---------------------|------------|----------------------------------------------------------------------|
    | ``image``           | [B, D]     | images, L2-normalised                                                |
    | ``text``            | [B, D]     | their captions                                                       |
    | ``scale``           | []         | logit scale s                                                        |
    | ``neg_text``        | [B, Kt, D] | negative captions                                                    |
    | ``neg_text_weight`` | [B, Kt]    | their weights (0: padding, else the kind weight)                     |
    | ``neg_text_kind``   | [B, Kt]    | long kind ids in [0, n_kinds) or -1 (unknown); None: group by slot   |

    ``n_kinds`` is the length of the kind list the ids index (0: no kind list, group by slot).
    """

    def __init__(self, max_threshold: float = 10.0, n_kinds: int = 0) -> None:
        super().__init__()
        self.max_threshold = max_threshold
        self.n_kinds = n_kinds

    def forward(self, image: Tensor, text: Tensor, scale: Tensor, neg_text: Tensor, neg_text_weight: Tensor,
                neg_text_kind: Tensor | None = None) -> Tensor:
        pos = scale * (image * text).sum(-1, keepdim=True)  # [B, 1]
        neg = scale * torch.einsum("bd,bkd->bk", image, neg_text)  # [B, K]
        valid = neg_text_weight > 0
        # Adaptive threshold per kind of negative (per slot when kinds are unknown), over the global batch.
        if neg_text_kind is not None and self.n_kinds:
            group = torch.where(neg_text_kind < 0, torch.full_like(neg_text_kind, self.n_kinds), neg_text_kind)
            n_groups = self.n_kinds + 1
        else:
            group = torch.arange(neg.shape[1], device=neg.device).expand_as(neg)
            n_groups = neg.shape[1]
        group = group.to(neg.device).long()
        gap = (pos - neg).detach() * valid
        sums = torch.zeros(n_groups, device=neg.device).scatter_add_(0, group.flatten(), gap.flatten())
        counts = torch.zeros(n_groups, device=neg.device).scatter_add_(0, group.flatten(), valid.float().flatten())
        sums, counts = all_reduce_sum(sums), all_reduce_sum(counts)
        tau = (sums / counts.clamp_min(1)).clamp(0, self.max_threshold)[group]
        hinge = F.relu(tau + neg - pos) * neg_text_weight
        n = valid.sum(1)
        per_anchor = hinge.sum(1) / n.clamp_min(1)
        return global_mean(per_anchor, (n > 0).to(per_anchor.dtype))
