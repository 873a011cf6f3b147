"""Per-negative weights: padding masks and per-kind weights, as float weights and as additive logit biases.

A weight w on a negative counts it w times: in a softmax its logit gets + log w (w = 0 drops it), in the ranking hinge
and as a triplet anchor its term is multiplied by w.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Additive bias for masked columns: finite so 0 * bias stays 0 (no NaN), far enough below any logit (|s cos| <= 100)
# that exp() underflows to exactly 0 in float32, so a masked column changes neither the value nor the gradients.
MASKED = -1e9


def slot_weights(mask: Tensor, kind: Tensor | None, table: Tensor) -> Tensor:
    """Float weight per negative slot [B, K]: the kind weight where valid, 0 where masked.

    ``kind`` [B, K] holds ids into ``table`` [n_kinds + 1] whose last entry is the weight of id -1 (unknown kind);
    with ``kind`` None or a table of unknown kinds only (no kind list), every valid slot weighs 1.
    """
    w = mask.to(torch.float32)
    n_kinds = table.numel() - 1
    if kind is not None and n_kinds:
        idx = torch.where(kind < 0, torch.full_like(kind, n_kinds), kind)
        w = w * table.to(w.device)[idx]
    return w


def image_weights(mask: Tensor, neg_image_text: Tensor | None, neg_text_kind: Tensor | None,
                  table: Tensor) -> Tensor:
    """A negative image [B, Ki] takes the kind weight of the caption it depicts (weight 1 when it depicts none)."""
    if neg_image_text is None or neg_text_kind is None:
        return slot_weights(mask, None, table)
    idx = neg_image_text.clamp_min(0)
    kind = torch.gather(neg_text_kind, 1, idx)
    kind = torch.where(neg_image_text < 0, torch.full_like(kind, -1), kind)
    return slot_weights(mask, kind, table)


def column_bias(w: Tensor) -> Tensor:
    """log w where w > 0, MASKED elsewhere: adding it to logits counts a column w times (or drops it)."""
    return torch.where(w > 0, torch.log(w.clamp_min(1e-30)), torch.full_like(w, MASKED))
