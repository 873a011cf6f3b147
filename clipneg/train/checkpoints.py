"""Checkpoints (resume), exports (open_clip local-dir) and WiSE-FT weight interpolation.

A checkpoint is ``accelerator.save_state`` of the prepared task and optimizer plus the registered ``TrainState``:
model and optimizer state, each process's RNG states (Python, NumPy, torch, CUDA) and the step, epoch and position in
the epoch, so ``--resume`` continues the same trajectory. It is written to ``step-N.tmp`` and renamed when complete,
so a run killed while saving never leaves a half checkpoint that ``latest`` would pick.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """Loop position, saved with every checkpoint (``accelerator.register_for_checkpointing``)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current data epoch
    epoch_start_step: int = 0  # global step at which the current epoch began (batches into it = step - this)
    samples_seen: int = 0  # global samples (all processes)

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for k, v in state.items():
            setattr(self, k, int(v))


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(run_dir: str | os.PathLike, resume: str | None) -> Path | None:
    """The checkpoint folder to resume from: ``latest`` (None if the run has none yet) or an explicit folder."""
    if not resume:
        return None
    if resume == "latest":
        ckpts = list_checkpoints(run_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint folder (use 'latest' or {run_dir}/checkpoints/"
                                "step-N)")
    return path


def save_checkpoint(accelerator: Any, run_dir: str | os.PathLike, step: int, keep_last: int) -> Path:
    """Save the accelerator state as ``checkpoints/step-N`` (atomically) and drop all but the last ``keep_last``."""
    root = checkpoint_root(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[: -max(keep_last, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    log.info("saved checkpoint %s", final)
    return final


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the state dict (the starting weights kept for WiSE-FT)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def wise_ft(start: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT (Wortsman et al. CVPR 2022; CLoVe uses alpha 0.6): (1 - alpha) * start + alpha * tuned, per tensor.

    Integer tensors (e.g. position ids, attention masks) are taken from the fine-tuned model unchanged.
    """
    if set(start) != set(tuned):
        raise ValueError("WiSE-FT needs the same architecture: the state dicts have different keys")
    out = {}
    for k, t in tuned.items():
        s = start[k].to(t.device)
        out[k] = torch.lerp(s.float(), t.float(), alpha).to(t.dtype) if t.is_floating_point() else t.clone()
    return out
