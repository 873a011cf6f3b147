"""The end of a run: the fine-tuned model (and its WiSE-FT interpolation) in open_clip's local-dir format.

``clipneg eval ... --model local-dir:runs/<name>/export`` and open_clip's own
``create_model_and_transforms("local-dir:...")`` load it unchanged. A LoRA run's adapters are merged into the weights
first (clipneg.train.lora.merge_lora), so its export has exactly a plain model's keys.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch

from clipneg.models import ClipBundle, export_local_dir, load_clip
from clipneg.train.backends import Backend
from clipneg.train.checkpoints import TrainState, cpu_state, wise_ft
from clipneg.train.config import TrainConfig
from clipneg.train.lora import apply_lora, has_lora, merge_lora


def plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the state dict under a plain open_clip model's keys: a LoRA model's merged weights (the model
    itself is left as it is), anyone else's state dict as it is (the starting weights kept for WiSE-FT)."""
    if not has_lora(model):
        return cpu_state(model)
    return cpu_state(merge_lora(copy.deepcopy(model).cpu()))


def export_run(backend: Backend, task: Any, bundle: ClipBundle, cfg: TrainConfig, run_dir: Path,
               start: dict[str, torch.Tensor] | None, state: TrainState) -> dict[str, str]:
    """``{"export": path[, "export_wise": path]}`` on the main process, ``{}`` on the others.

    Every process must call it: under FSDP/DeepSpeed gathering the weights is a collective.
    """
    accelerator = backend.accelerator
    full = backend.full_state_dict(task)
    if not accelerator.is_main_process:
        return {}
    record = {"base_model": cfg.model.name, "base_pretrained": cfg.model.pretrained, "run": str(run_dir),
              "step": state.step, "samples_seen": state.samples_seen, "data": cfg.data.shards}
    if cfg.model.lora.enabled:
        record["lora_merged"] = dataclasses.asdict(cfg.model.lora)
    if full is not None:
        # The gathered state dict goes into a fresh CPU model; the scalar parameters that the sharded modes gave
        # shape [1] (backends.promote_scalar_parameters) get their own shape back.
        out_model = load_clip(cfg.model.name, seed=cfg.run.seed, force_quick_gelu=cfg.model.force_quick_gelu).model
        if cfg.model.lora.enabled:  # the same adapters, to take the gathered adapter weights
            apply_lora(out_model, cfg.model.lora, seed=cfg.run.seed)
        shapes = {k: v.shape for k, v in out_model.state_dict().items()}
        tuned = {k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")}
        out_model.load_state_dict({k: v.reshape(shapes[k]) for k, v in tuned.items()})
    else:
        out_model = accelerator.unwrap_model(task).model
        if has_lora(out_model):  # merged on a copy: the trained model stays as it is for the final evaluation
            out_model = copy.deepcopy(out_model).cpu()
    out_model = merge_lora(out_model)
    paths = {"export": str(export_local_dir(out_model, run_dir / "export", model_cfg=bundle.model_cfg, record=record))}
    if cfg.run.wise_alpha is not None and start is not None:
        tuned = {k: v.detach().cpu() for k, v in out_model.state_dict().items()}
        wise_model = copy.deepcopy(out_model).cpu()
        wise_model.load_state_dict(wise_ft(start, tuned, cfg.run.wise_alpha))
        paths["export_wise"] = str(export_local_dir(wise_model, run_dir / "export_wise", model_cfg=bundle.model_cfg,
                                                    record={**record, "wise_alpha": cfg.run.wise_alpha}))
    return paths
