"""``distill_loss``: DeGLA's self-distillation towards an EMA teacher."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DistillLoss(nn.Module):
    """MSE(student image, teacher image) + MSE(student text, teacher text) (DeGLA, 2025): keeps the features near an
    EMA copy of the model (clipneg.train.losses.ema_update), which preserves zero-shot ability.

    | argument            | shape  | meaning                                          |
    |---------------------|--------|--------------------------------------------------|
    | ``image``           | [B, D] | student image features                           |
    | ``text``            | [B, D] | student caption features                         |
    | ``teacher_image``   | [B, D] | the EMA teacher's image features (no gradient)   |
    | ``teacher_text``    | [B, D] | the EMA teacher's caption features (no gradient) |
    """

    def forward(self, image: Tensor, text: Tensor, teacher_image: Tensor, teacher_text: Tensor) -> Tensor:
        return F.mse_loss(image, teacher_image.float()) + F.mse_loss(text, teacher_text.float())
