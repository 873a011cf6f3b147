"""The DeGLA teacher's EMA step and CLIP's logit-scale bound: what the training loop applies between steps."""

from __future__ import annotations

import math

import torch
from torch import nn


def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, parameters and floating buffers (DeGLA's EMA teacher).

    For whole tensors; DeepSpeed ZeRO-3's partitioned parameters have their own (clipneg.train.backends)."""
    with torch.no_grad():
        t_params = dict(teacher.named_parameters())
        for name, p in student.named_parameters():
            t = t_params[name]
            t.lerp_(p.detach().to(t.dtype), 1 - decay)
        t_bufs = dict(teacher.named_buffers())
        for name, buf in student.named_buffers():
            if name in t_bufs and buf.dtype.is_floating_point:
                t_bufs[name].copy_(buf)


def max_logit_scale() -> float:
    """CLIP clamps the learned temperature so the logit scale stays <= 100 (Radford et al. 2021, section 2.5)."""
    return math.log(100.0)
