"""``triplet_loss``: TripletCLIP's NegCLIP(I', T', T) on the (negative image, negative caption) pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipneg.train.losses.distributed import gather_no_grad, gather_with_grad, global_mean, world_info
from clipneg.train.losses.weights import column_bias


class TripletLoss(nn.Module):
    """NegCLIP(I', T', T) (TripletCLIP, Patel et al. NeurIPS 2024): each negative image I' and the negative caption T'
    it depicts form a positive pair, and the original captions T are its hard negatives.

    Per pair: (CE of I' over [all pairs' T' ; all T] + CE of T' over all pairs' I') / 2, weighted by the kind weight
    of T' and averaged over the valid pairs of the global batch. A pair is valid when the image slot is present, it
    depicts a caption slot (``neg_image_text`` >= 0) and that slot has weight > 0; invalid pairs are no anchors and
    no columns.

    | argument            | shape      | meaning                                                        |
    |---------------------|------------|----------------------------------------------------------------|
    | ``text``            | [B, D]     | positive captions (the hard-negative columns)                  |
    | ``scale``           | []         | logit scale s                                                  |
    | ``neg_text``        | [B, Kt, D] | negative captions                                              |
    | ``neg_text_weight`` | [B, Kt]    | their weights (0: padding)                                     |
    | ``neg_image``       | [B, Ki, D] | negative images                                                |
    | ``neg_image_mask``  | [B, Ki]    | bool, False where the slot is padding                          |
    | ``neg_image_text``  | [B, Ki]    | long, the ``neg_text`` slot each image depicts, -1 if none     |
    """

    def forward(self, text: Tensor, scale: Tensor, neg_text: Tensor, neg_text_weight: Tensor, neg_image: Tensor,
                neg_image_mask: Tensor, neg_image_text: Tensor) -> Tensor:
        _, rank = world_info()
        b, ki, d = neg_image.shape
        idx = neg_image_text.to(neg_text.device).long()
        paired = neg_image_mask & (idx >= 0) & (idx < neg_text.shape[1])
        safe = idx.clamp(0, neg_text.shape[1] - 1)
        # T'_pair[b, j] = the negative caption that negative image j of anchor b depicts.
        tpair = torch.gather(neg_text, 1, safe.unsqueeze(-1).expand(-1, -1, d))
        pw = torch.gather(neg_text_weight, 1, safe) * paired  # kind weight of the pair, 0 when unpaired or masked
        ip, tp, w = neg_image.flatten(0, 1), tpair.flatten(0, 1), pw.flatten()
        all_ip, all_tp, all_txt = gather_with_grad(ip), gather_with_grad(tp), gather_with_grad(text)
        bias = gather_no_grad(column_bias(w))  # invalid pairs are dropped as columns too
        # NegCLIP(I', T', T): I' -> [T'_pairs ; T] (original captions are the hard negatives), T'_pair -> I'.
        logits_i2t = torch.cat([scale * ip @ all_tp.T + bias, scale * ip @ all_txt.T], dim=1)
        logits_t2i = scale * tp @ all_ip.T + bias
        labels = torch.arange(b * ki, device=ip.device) + rank * b * ki
        per_anchor = (F.cross_entropy(logits_i2t, labels, reduction="none")
                      + F.cross_entropy(logits_t2i, labels, reduction="none")) / 2
        # Masked anchors have a -1e9 logit at their own label: a huge but finite loss that the 0 weight removes.
        per_anchor = torch.where(w > 0, per_anchor, torch.zeros_like(per_anchor))
        return global_mean(per_anchor, w)
