"""Gradient accumulation that is exact for a contrastive loss: GradCache (Gao et al. 2021), as open_clip_train's
``--accum-freq`` does it, over every clipneg term.

A contrastive loss does not split over samples: each row's loss depends on every other row of the batch (its
negatives), so summing the losses of N independent micro-batches gives a different objective with fewer negatives.
GradCache keeps the whole batch's objective with one micro-batch's activation memory:

1. encode every micro-batch without gradient and cache the loss inputs (features of images, captions, negative
   captions and images, paraphrases, the EMA teacher's features, and the masks and kind ids that go with them);
2. for each micro-batch j: encode it again with gradient, compute the loss of the WHOLE batch with j's live features
   in place of its cached ones, and backpropagate. The gradient reaching the weights is dL/df_j df_j/dtheta, and the
   N backward passes add up to exactly dL/dtheta of the whole batch (the chain rule over the micro-batches' rows);
3. one optimizer step (train.py).

``optim.accumulate N`` splits each loader batch of ``data.batch_size`` rows into N micro-batches (open_clip
accumulates N loader batches instead): ``data.batch_size`` keeps its meaning, samples per process per optimizer
step, and so do the learning-rate schedule, ``samples_seen`` and the resume position; N is a pure memory knob whose
loss and gradients equal N = 1 up to float rounding (the summation order differs).

Every cross-process part of the loss works as in one pass: each micro-step's loss gathers the whole local batch from
every process (with gradient), so process r receives the other processes' gradients for its live rows in the same
micro-step; masked means and CE-CLIP's thresholds use the whole batch's counts. DDP synchronises gradients only in
the last backward (``accelerator.no_sync`` before), and the logit scale keeps its graph only in that last micro-step
(clipneg.train.task.splice), so its gradient is counted once. The RNG is put back to its state before each
micro-batch's first pass when it is encoded again, so dropout (e.g. LoRA's) draws the same masks in both passes.

Limits: BatchNorm towers (ResNets) normalise per micro-batch and update their running statistics in both passes (as
open_clip's --accum-freq does); transformer towers (LayerNorm) are exact. DeepSpeed steps inside its own backward,
so it is refused there (clipneg.train.backends).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


def split_batch(batch: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """The batch as ``n`` equal micro-batches along the row dimension, in order (tensors and per-row lists)."""
    rows = batch["image"].shape[0]
    if rows % n:
        raise ValueError(f"optim.accumulate {n} must divide the batch of {rows} rows")
    size = rows // n
    return [{k: (v[i * size:(i + 1) * size] if isinstance(v, (Tensor, list, tuple)) else v) for k, v in batch.items()}
            for i in range(n)]


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def grad_cache_backward(task: Any, batch: Mapping[str, Any], n: int, accelerator: Any) -> dict[str, Tensor]:
    """Accumulate the whole batch's gradients into ``.grad`` in ``n`` micro-batches (module docstring); returns the
    loss terms (detached), which equal the one-pass terms of the batch. ``task`` is the prepared ContrastiveTask."""
    device = accelerator.device
    micro = split_batch(batch, n)
    cache, states = [], []
    with torch.no_grad():
        for part in micro:
            states.append(_rng_state(device))
            cache.append(task(part, features_only=True))
    after = _rng_state(device)
    losses: dict[str, Tensor] = {}
    for j, part in enumerate(micro):
        _set_rng_state(states[j], device)
        sync = contextlib.nullcontext() if j == n - 1 else accelerator.no_sync(task)
        with sync:
            terms = task(part, cache=cache, index=j)
            accelerator.backward(sum(terms.values()))
        losses = {k: v.detach() for k, v in terms.items()}
    _set_rng_state(after, device)
    return losses
