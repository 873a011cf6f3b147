"""``contrastive_loss``: CLIP's symmetric InfoNCE, with optional NegCLIP text columns and negative-image columns."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipneg.train.losses.distributed import gather_no_grad, gather_with_grad, world_info
from clipneg.train.losses.weights import column_bias


class ContrastiveLoss(nn.Module):
    """Mean of CE(s I T^T) and CE(s T I^T) over the global batch (CLIP, Radford et al. 2021).

    With ``neg_text`` (NegCLIP, Yuksekgonul et al. ICLR 2023) every negative caption of the global batch is an extra
    image-to-text column; with ``neg_image`` every negative image is an extra text-to-image column. A column of
    weight w counts w times (weight 0: dropped, as padding is). Negatives are never anchors.

    | argument            | shape      | meaning                                                        |
    |---------------------|------------|----------------------------------------------------------------|
    | ``image``           | [B, D]     | positive images (anchors and columns), L2-normalised           |
    | ``text``            | [B, D]     | positive captions (anchors and columns)                        |
    | ``scale``           | []         | logit scale s                                                  |
    | ``neg_text``        | [B, Kt, D] | negative captions: extra image-to-text columns (optional)      |
    | ``neg_text_weight`` | [B, Kt]    | their weights (0: padding); needed with ``neg_text``           |
    | ``neg_image``       | [B, Ki, D] | negative images: extra text-to-image columns (optional)        |
    | ``neg_image_weight``| [B, Ki]    | their weights (0: padding); needed with ``neg_image``          |

    Without negatives the value and gradients equal ``open_clip.ClipLoss`` bit for bit (same operation order).
    """

    def forward(self, image: Tensor, text: Tensor, scale: Tensor, neg_text: Tensor | None = None,
                neg_text_weight: Tensor | None = None, neg_image: Tensor | None = None,
                neg_image_weight: Tensor | None = None) -> Tensor:
        _, rank = world_info()
        b = image.shape[0]
        all_txt = gather_with_grad(text)
        all_img = gather_with_grad(image)
        # Same operation order as open_clip.ClipLoss, so the plain case matches it bit for bit.
        logits_per_image = scale * image @ all_txt.T
        logits_per_text = scale * text @ all_img.T
        if neg_text is not None:
            cols = gather_with_grad(neg_text.flatten(0, 1))
            bias = gather_no_grad(column_bias(neg_text_weight).flatten())
            logits_per_image = torch.cat([logits_per_image, scale * image @ cols.T + bias], dim=1)
        if neg_image is not None:
            cols = gather_with_grad(neg_image.flatten(0, 1))
            bias = gather_no_grad(column_bias(neg_image_weight).flatten())
            logits_per_text = torch.cat([logits_per_text, scale * text @ cols.T + bias], dim=1)
        labels = torch.arange(b, device=image.device) + rank * b
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
