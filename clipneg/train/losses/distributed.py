"""Cross-process helpers of the loss terms: gather with or without gradient, sums, the global masked mean."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_info() -> tuple[int, int]:
    """(world_size, rank) of the default process group, (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [n, ...] from every process along dim 0, keeping the autograd graph to each process's rows.

    ``accelerator.gather`` has no gradient; ``torch.distributed.nn.functional.all_gather`` sums the incoming gradients
    back onto the owner (reduce-scatter, or all-to-all + sum on gloo). Every process must pass the same shape.
    """
    world, _ = world_info()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_no_grad(x: Tensor) -> Tensor:
    """Like ``gather_with_grad`` for tensors that carry no gradient (masks, biases)."""
    world, _ = world_info()
    if world == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of a no-grad tensor over processes (a copy; the input is untouched)."""
    world, _ = world_info()
    if world == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def global_mean(per_anchor: Tensor, anchor_weight: Tensor) -> Tensor:
    """sum(w * loss) / global sum(w), scaled by world size so the mean over processes is the global weighted mean.

    DDP averages gradients over processes, so a term normalised this way optimises the loss of one process on the
    concatenated batch, however unevenly the valid anchors are spread over the processes.
    """
    world, _ = world_info()
    denom = all_reduce_sum(anchor_weight.sum().detach()).clamp_min(1e-12)
    return (per_anchor * anchor_weight).sum() * world / denom
