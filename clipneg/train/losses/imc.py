"""``imc_loss``: CE-CLIP's intra-modal contrast, a caption pushed away from its own negative captions."""

from __future__ import annotations

from torch import Tensor, nn

from clipneg.train.losses.per_sample import PerSampleLoss


class ImcLoss(nn.Module):
    """Per caption T_i with at least one valid negative, -log of

        exp(s cos(I_i, T_i)) / (exp(s cos(I_i, T_i)) + sum_k w_ik exp(s cos(T_i, T'_ik)))

    averaged over those captions of the global batch (CE-CLIP's intra-modal contrastive loss, Zhang, Awal & Agrawal,
    "Contrasting Intra-Modal and Ranking Cross-Modal Hard Negatives to Enhance Visio-Linguistic Compositional
    Understanding", CVPR 2024, arXiv 2306.08832; weight 0.2, the default of ``tec_loss_weight`` in the authors'
    Clip_DALoss, lezhang7/Enhance-FineGrained src/open_clip/loss.py). The positive logit is the caption's cross-modal
    similarity with its image, the negatives are text-text similarities, so the gradient moves the caption away from
    its hard negatives inside the text space, where the cross-modal terms only see them through the image.

    The authors' code puts every hard negative of the global batch in each caption's denominator; this term keeps each
    caption's own negatives (the paper's description, and what a per-kind weight or a padding mask can address).
    Plain cross-entropy: FSC-CLIP's focal weighting and label smoothing belong to ``hard_negative_loss`` only.

    | argument            | shape      | meaning                                                        |
    |---------------------|------------|----------------------------------------------------------------|
    | ``image``           | [B, D]     | images, L2-normalised                                          |
    | ``text``            | [B, D]     | their captions (the anchors)                                   |
    | ``scale``           | []         | logit scale s                                                  |
    | ``neg_text``        | [B, Kt, D] | each caption's own negative captions                           |
    | ``neg_text_weight`` | [B, Kt]    | their weights (0: padding, else the kind weight)               |
    """

    def __init__(self) -> None:
        super().__init__()
        self.per_sample = PerSampleLoss()

    def forward(self, image: Tensor, text: Tensor, scale: Tensor, neg_text: Tensor, neg_text_weight: Tensor) -> Tensor:
        # Anchor the caption: pos = s (T . I) is the cross-modal similarity, neg = s (T . T') the intra-modal ones.
        return self.per_sample(text, image, scale, neg_text, neg_text_weight)
