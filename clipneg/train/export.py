"""The end of a run: the fine-tuned model (and its WiSE-FT interpolation) in open_clip's local-dir format.

``clipneg eval ... --model local-dir:runs/<name>/export`` and open_clip's own
``create_model_and_transforms("local-dir:...")`` load it unchanged.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from clipneg.models import ClipBundle, export_local_dir, load_clip
from clipneg.train.backends import Backend
from clipneg.train.checkpoints import TrainState, wise_ft
from clipneg.train.config import TrainConfig


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
    if full is not None:
        # The gathered state dict goes into a fresh CPU model; the scalar parameters that the sharded modes gave
        # shape [1] (backends.promote_scalar_parameters) get their own shape back.
        out_model = load_clip(cfg.model.name, seed=cfg.run.seed, force_quick_gelu=cfg.model.force_quick_gelu).model
        shapes = {k: v.shape for k, v in out_model.state_dict().items()}
        tuned = {k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")}
        out_model.load_state_dict({k: v.reshape(shapes[k]) for k, v in tuned.items()})
    else:
        out_model = accelerator.unwrap_model(task).model
    paths = {"export": str(export_local_dir(out_model, run_dir / "export", model_cfg=bundle.model_cfg, record=record))}
    if cfg.run.wise_alpha is not None and start is not None:
        tuned = {k: v.detach().cpu() for k, v in out_model.state_dict().items()}
        wise_model = copy.deepcopy(out_model).cpu()
        wise_model.load_state_dict(wise_ft(start, tuned, cfg.run.wise_alpha))
        paths["export_wise"] = str(export_local_dir(wise_model, run_dir / "export_wise", model_cfg=bundle.model_cfg,
                                                    record={**record, "wise_alpha": cfg.run.wise_alpha}))
    return paths
