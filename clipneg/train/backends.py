"""What differs between plain/DDP, FSDP2 and DeepSpeed training, behind one small object built from the Accelerator.

train.py's loop is the same for every launch mode; it calls the backend where a mode needs something of its own:

- ``configure(cfg)``: checks the config against the mode before the model is built (FSDP/DeepSpeed refuse
  channels-last weights; FSDP turns Accelerate's rank-0 weight broadcast off; DeepSpeed fills its "auto" entries and
  refuses GradCache accumulation, and LoRA's attention adapters under ZeRO-3).
- ``prepare(task, make_optimizer)``: ``accelerator.prepare``; the sharded modes first give 0-d parameters shape [1].
- ``after_step(task)``: clamp the logit scale and step the EMA teacher (DeepSpeed also clamps its fp32 master and
  steps the teacher partition by partition under ZeRO-3).
- ``logit_scale(task)``: exp of the parameter (FSDP gathers the DTensor, DeepSpeed reads the fp32 master).
- ``full_state_dict(task)``: None where the unwrapped model holds the weights, else the gathered state dict (a
  collective; DeepSpeed's fp32 masters over its working copy).
- ``can_eval_in_loop``: False for the sharded modes (the final export is scored instead).

Launch topology itself (process count, FSDP/DeepSpeed and their settings) comes from ``accelerate launch`` and its
config, never from our flags.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from torch import nn

from clipneg.train.config import TrainConfig
from clipneg.train.losses import ema_update, max_logit_scale

log = logging.getLogger(__name__)


def process_group_kwargs() -> list[Any]:
    """Accelerator kwargs handlers that must exist before the Accelerator does.

    Accelerate 1.15 names no process-group backend for DeepSpeed without an accelerator, so it counts one process
    while DeepSpeed counts all; gloo (DeepSpeed's own CPU backend) makes both see the same group.
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and not torch.cuda.is_available():
        return [InitProcessGroupKwargs(backend="gloo")]
    return []


class Backend:
    """One process holding the whole model, or DDP (which wraps it and averages gradients)."""

    sharded = False  # True: each process holds shards of the weights, so full weights need a collective gather
    can_eval_in_loop = True

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.max_scale = max_logit_scale()

    @property
    def name(self) -> str:
        return self.accelerator.distributed_type.value

    def configure(self, cfg: TrainConfig) -> None:
        """Check the config against the launch mode, before the model is built."""

    def prepare(self, task: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
                ) -> tuple[Any, Any]:
        """(wrapped task, optimizer): the optimizer is made here because sharded modes must reshape parameters
        before it takes hold of them."""
        if self.sharded:
            log.info("%s: parameters given shape [1]: %s", self.name, promote_scalar_parameters(task))
        return self.accelerator.prepare(task, make_optimizer(task.model))

    @torch.no_grad()
    def after_step(self, task: nn.Module) -> None:
        """After each optimizer step: CLIP keeps exp(logit_scale) <= 100 (Radford et al. 2021; open_clip clamps after
        every step), and the DeGLA teacher follows the student."""
        self.clamp_logit_scale(task)
        task.update_teacher(self.ema_update)

    def clamp_logit_scale(self, task: nn.Module) -> None:
        task.clamp_logit_scale(self.max_scale)

    def ema_update(self, teacher: nn.Module, student: nn.Module, decay: float) -> None:
        ema_update(teacher, student, decay)

    def logit_scale(self, task: nn.Module) -> float:
        """exp(logit_scale) for the log. A collective under FSDP/DeepSpeed: every process calls it."""
        return task.model.logit_scale.detach().exp().item()

    def full_state_dict(self, task: Any) -> dict[str, torch.Tensor] | None:
        """The task's whole state dict when the weights are sharded (a collective), else None: the unwrapped model
        already holds them."""
        return None


class FSDPBackend(Backend):
    """FSDP2 (``accelerate launch --use_fsdp --fsdp_version 2``)."""

    sharded = True
    can_eval_in_loop = False

    def configure(self, cfg: TrainConfig) -> None:
        _refuse_channels_last(cfg, self.name)
        # Every process has built the whole model already (same weights or same seed), so rank 0's broadcast buys
        # nothing, and Accelerate 1.15's version of it fails on persistent buffers (a ResNet tower's BatchNorm
        # statistics: "'Tensor' object has no attribute 'device_mesh'").
        self.accelerator.state.fsdp_plugin.cpu_ram_efficient_loading = False

    def logit_scale(self, task: nn.Module) -> float:
        p = task.model.logit_scale.detach()
        return p.full_tensor().exp().item() if hasattr(p, "full_tensor") else p.exp().item()

    def full_state_dict(self, task: Any) -> dict[str, torch.Tensor] | None:
        return self.accelerator.get_state_dict(task)


class DeepSpeedBackend(FSDPBackend):
    """DeepSpeed ZeRO stages 1-3, with or without offload, through Accelerate's DeepSpeed plugin."""

    def configure(self, cfg: TrainConfig) -> None:
        _refuse_channels_last(cfg, self.name)
        ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
        if cfg.optim.accumulate > 1:
            # Accelerate's backward under DeepSpeed is engine.backward + engine.step, and the engine scales each loss
            # by 1 / gradient_accumulation_steps: GradCache's N backward passes of the whole batch's loss would step
            # N times (or be divided by N). Not wired; DeepSpeed's own accumulation sums per-micro-batch losses, which
            # is not the contrastive objective.
            raise ValueError("optim.accumulate > 1 (GradCache) is not supported under DeepSpeed: set "
                             "--optim.accumulate 1 and lower data.batch_size, or train with DDP or FSDP")
        if (cfg.model.lora.enabled and "attn" in cfg.model.lora.target_modules
                and (ds.get("zero_optimization") or {}).get("stage") == 3):
            # peft's MultiheadAttention deletes in_proj_weight and sets the merged tensor around every forward;
            # ZeRO-3's partitioned parameters are empty placeholders outside DeepSpeed's own gather hooks.
            raise ValueError("model.lora.target_modules attn cannot be used under DeepSpeed ZeRO-3: use "
                             "--model.lora.target_modules [c_fc, c_proj], or ZeRO-1/2, DDP or FSDP")
        fill_deepspeed_config(ds, cfg, self.accelerator.num_processes)

    def clamp_logit_scale(self, task: nn.Module) -> None:
        super().clamp_logit_scale(task)
        clamp_deepspeed_logit_scale(task, self.max_scale)

    def ema_update(self, teacher: nn.Module, student: nn.Module, decay: float) -> None:
        """Under ZeRO-3 a parameter is this process's partition (``ds_tensor``), which the optimizer updates, plus the
        whole tensor while it is gathered or persisted (small ones stay gathered). A parameter's teacher and student
        partitions hold the same elements, so the update is local, with no collective."""
        t_params = dict(teacher.named_parameters())
        for name, p in student.named_parameters():
            t = t_params[name]
            if hasattr(p, "ds_tensor"):
                t.ds_tensor.lerp_(p.ds_tensor.to(t.dtype), 1 - decay)
                if p.data.numel() != p.ds_numel or t.data.numel() != t.ds_numel:
                    continue
            t.lerp_(p.detach().to(t.dtype), 1 - decay)
        t_bufs = dict(teacher.named_buffers())
        for name, buf in student.named_buffers():
            if name in t_bufs and buf.dtype.is_floating_point:
                t_bufs[name].copy_(buf)

    def logit_scale(self, task: nn.Module) -> float:
        # The fp32 master (under ZeRO-3 the parameter itself is an empty placeholder)
        from deepspeed.utils import safe_get_full_fp32_param

        p = task.model.logit_scale
        return safe_get_full_fp32_param(p).exp().item() if p.requires_grad else super().logit_scale(task)

    def full_state_dict(self, task: Any) -> dict[str, torch.Tensor] | None:
        full = self.accelerator.get_state_dict(task)
        # get_state_dict returns DeepSpeed's working (bf16/fp16 under mixed precision) weights: export its fp32
        # masters. Every process gathers them, though under ZeRO-3 only the main one receives a state dict.
        masters = deepspeed_masters(self.accelerator.unwrap_model(task))
        if full is not None:
            full.update(masters)
        return full


def build_backend(accelerator: Accelerator) -> Backend:
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return DeepSpeedBackend(accelerator)
    if kind == DistributedType.FSDP:
        return FSDPBackend(accelerator)
    return Backend(accelerator)


def _refuse_channels_last(cfg: TrainConfig, mode: str) -> None:
    if cfg.model.channels_last:
        # An NHWC weight is not contiguous: DeepSpeed broadcasts every parameter viewed as contiguous bytes, and
        # FSDP2's fully_shard raises NotImplementedError for non-contiguous parameters.
        raise ValueError(f"model.channels_last cannot be used with {mode}: set --model.channels_last false")


def promote_scalar_parameters(module: nn.Module) -> list[str]:
    """Give every 0-d parameter (open_clip's ``logit_scale``, SigLIP's ``logit_bias``) shape [1], in place.

    FSDP2's ``fully_shard`` refuses 0-d parameters ("fully_shard doesn't support scalar parameters", seen on torch
    2.11) and DeepSpeed cannot broadcast them (it views each as bytes). open_clip only multiplies, adds or
    exponentiates them, so shape [1] broadcasts to the same function. Call it before the optimizer is built (it holds
    the parameter objects); the export reshapes them back (clipneg.train.export).
    """
    names = []
    for prefix, mod in module.named_modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.dim() == 0:
                setattr(mod, name, nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad))
                names.append(f"{prefix}.{name}" if prefix else name)
    return names


def fill_deepspeed_config(ds: dict[str, Any], cfg: TrainConfig, processes: int) -> None:
    """Fill the "auto" entries of Accelerate's DeepSpeed config that it would read from a prepared loader.

    The loader never goes through ``prepare`` (it splits shards by node and worker itself), so Accelerate cannot
    find the per-process batch there; gradient clipping follows ``optim.grad_clip_norm`` (DeepSpeed clips inside its
    own step, so it must be told).
    """
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    if ds.get("train_batch_size", "auto") == "auto":
        accumulation = ds.get("gradient_accumulation_steps", "auto")
        ds["train_batch_size"] = cfg.data.batch_size * processes * (1 if accumulation == "auto" else accumulation)
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = cfg.optim.grad_clip_norm or 0.0
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        # The export gathers the whole model (Accelerate's get_state_dict refuses under ZeRO-3 without this); the
        # sharded checkpoints do not depend on it.
        zero["stage3_gather_16bit_weights_on_model_save"] = True


def deepspeed_masters(task: nn.Module) -> dict[str, torch.Tensor]:
    """DeepSpeed's fp32 master copy of each trained parameter, on the CPU (a collective: every process calls it)."""
    from deepspeed.utils import safe_get_full_fp32_param

    masters = {name: safe_get_full_fp32_param(p) for name, p in task.named_parameters() if p.requires_grad}
    return {name: m.detach().cpu() for name, m in masters.items() if m is not None}


def clamp_deepspeed_logit_scale(task: nn.Module, max_value: float) -> None:
    """Clamp the fp32 master of logit_scale too: DeepSpeed copies the masters over the working weights at each step,
    so the in-place clamp of the working copy alone would be undone (a collective: every process calls it)."""
    from deepspeed.utils import (
        safe_get_full_fp32_param,
        safe_get_local_fp32_param,
        safe_set_full_fp32_param,
        safe_set_local_fp32_param,
    )

    p = task.model.logit_scale
    if hasattr(p, "ds_tensor"):
        # ZeRO-3: master and working copy are both partitioned (the loop's clamp met an empty placeholder), and the
        # padding of a partition is 0, which the clamp keeps. Clamped here, partition by partition: DeepSpeed
        # 0.19.8's full setter fails on a 1-element parameter split over 2 processes.
        master = safe_get_local_fp32_param(p)
        if master is not None:
            safe_set_local_fp32_param(p, master.clamp(0, max_value))
        p.ds_tensor.clamp_(0, max_value)
        return
    master = safe_get_full_fp32_param(p)
    if master is not None and not torch.equal(clamped := master.clamp(0, max_value), master):
        safe_set_full_fp32_param(p, clamped)
