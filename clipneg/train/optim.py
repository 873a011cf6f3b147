"""AdamW with decoupled weight decay on matrices only, and the learning rate as a pure function of the step.

``lr_at(step)`` has no state, so resuming needs only the step count, and there is no prepared-scheduler trap
(Accelerate steps a prepared LR scheduler once per process: PROTOCOLS.md section 4).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from clipneg.train.config import OptimConfig


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup to ``lr``, then cosine to ``min_lr``.

    Warmup reaches ``lr`` at step ``warmup_steps - 1`` (step 0 already learns, at lr / warmup_steps); the cosine runs
    over the remaining ``total_steps - warmup_steps`` steps (Loshchilov & Hutter 2017, SGDR without restarts).
    """
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decay for weight matrices and embeddings, none for gains, biases and logit_scale.

    The rule is "fewer than 2 dimensions means no decay" (LayerNorm gains and biases, linear biases, the scalar
    logit_scale, class embeddings), plus any parameter named logit_scale/logit_bias whatever its shape (open_clip's
    ``nonscalar_logit_scale``). Frozen parameters (locked towers) are left out so AdamW keeps no state for them.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        (no_decay if p.ndim < 2 or leaf in ("logit_scale", "logit_bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW (betas and eps from the config; CLIP fine-tunes use (0.9, 0.98), 1e-6). The lr is set every step."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=cfg.fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
