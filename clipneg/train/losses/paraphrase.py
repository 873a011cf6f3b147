"""``paraphrase_loss``: text-only word order, a caption and its paraphrase against their word-order negatives."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clipneg.train.losses.per_sample import PerSampleLoss


class ParaphraseLoss(nn.Module):
    """(per-sample(T -> [P ; N]) + per-sample(P -> [T ; N])) / 2, with the caption T and its paraphrase P each the
    anchor once, over the word-order negatives N (ours; same focal weighting and smoothing as ``PerSampleLoss``).

    For T = "a left of b": P = "b right of a", N = "a right of b", "b left of a": all four hold the same words, so
    only word order passes it. Why it is needed: the cross-modal terms pass order from one tower to the other only,
    and both start without it (a saddle); on the built-in world converse relations stayed at chance under every recipe
    until the text tower was given order this way. Contrasting P with the caption's own negatives instead (of which
    only some are converses) did not start it (docs/BENCHMARKS.md, the world-gain section).

    | argument          | shape      | meaning                                                        |
    |-------------------|------------|----------------------------------------------------------------|
    | ``text``          | [B, D]     | captions, L2-normalised                                        |
    | ``paraphrase``    | [B, D]     | a paraphrase of each caption                                   |
    | ``paraphrase_mask``| [B]       | bool, False where the caption has no paraphrase (no anchor)    |
    | ``negatives``     | [B, Kp, D] | word-order negatives of each caption                           |
    | ``negatives_mask``| [B, Kp]    | bool, False where the slot is padding                          |
    | ``scale``         | []         | the model's logit scale, used unless ``fixed_scale`` is set    |
    """

    def __init__(self, per_sample: PerSampleLoss, fixed_scale: float | None = None) -> None:
        super().__init__()
        self.per_sample = per_sample
        self.fixed_scale = fixed_scale

    def forward(self, text: Tensor, paraphrase: Tensor, paraphrase_mask: Tensor, negatives: Tensor,
                negatives_mask: Tensor, scale: Tensor) -> Tensor:
        para, pneg = paraphrase.float(), negatives.float()
        # Weight 0 where a negative slot is padding or the caption has no paraphrase: such anchors leave the mean.
        pw = (negatives_mask.to(pneg.device, torch.bool)
              & paraphrase_mask.to(pneg.device, torch.bool).unsqueeze(1)).to(torch.float32)
        ps = scale if self.fixed_scale is None else torch.tensor(self.fixed_scale, device=scale.device)
        return (self.per_sample(text, para, ps, pneg, pw) + self.per_sample(para, text, ps, pneg, pw)) / 2
