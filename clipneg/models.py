"""Loading and exporting open_clip models, with the activation recorded and enforced.

Three ways to name a model, one loading path (open_clip's factory) for all of them:

| name                         | pretrained                    | weights                                   |
|------------------------------|-------------------------------|-------------------------------------------|
| ``ViT-B-32-quickgelu``       | ``openai`` (a tag)            | open_clip downloads or reads its cache    |
| ``ViT-B-32-quickgelu``       | ``/path/ckpt.safetensors|.pt`` | a local file (torch.load weights_only)    |
| ``local-dir:/path/export``   | ignored                       | ``open_clip_config.json`` + safetensors   |
| ``clipneg-tiny`` (built-in)  | None                          | random init from ``seed``, for tests/demo |

The QuickGELU trap (PROTOCOLS.md §4): OpenAI weights were trained with QuickGELU, but ``ViT-B-32`` uses GELU, and
loading an OpenAI-derived file into it gives silently different scores. Exports record the activation; loading a file
whose sidecar record disagrees with the config raises, and a file that looks OpenAI-derived under a GELU config warns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file
from torch import nn

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
BUILTIN_MODELS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
LOCAL_DIR = "local-dir:"
EXPORT_CONFIG = "open_clip_config.json"
EXPORT_WEIGHTS = "open_clip_model.safetensors"


def register_builtin_configs() -> None:
    """Make the tiny configs known to open_clip (per process: spawned workers and ranks call it on import)."""
    if BUILTIN_MODELS[0] not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


register_builtin_configs()


@dataclass
class ClipBundle:
    """A model with the transforms and tokenizer that belong to it, and a record of what it is."""

    model: nn.Module
    preprocess_train: Any
    preprocess_val: Any
    tokenizer: Any
    model_cfg: dict[str, Any]
    identity: dict[str, Any] = field(default_factory=dict)


def activation_of(model: nn.Module) -> str:
    """The activation the model actually runs ("quick_gelu" or "gelu"), read from its modules, not its name."""
    return "quick_gelu" if any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules()) else "gelu"


def weights_sha256(model: nn.Module) -> str:
    """A content hash of the state dict (names, dtypes, shapes, values), independent of the file format."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _model_cfg_for(name: str) -> dict[str, Any]:
    if name.startswith(LOCAL_DIR):
        cfg_path = Path(name[len(LOCAL_DIR):]) / EXPORT_CONFIG
        return json.loads(cfg_path.read_text())["model_cfg"]
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(
            f"unknown model {name!r}: use an open_clip name (see open_clip.list_models()), one of the built-in "
            f"configs {BUILTIN_MODELS}, or local-dir:PATH to a folder with {EXPORT_CONFIG}"
        )
    return json.loads(json.dumps(cfg))  # deep copy: open_clip mutates configs it hands out


def _sidecar_record(checkpoint: str) -> dict[str, Any] | None:
    """The clipneg record written beside a checkpoint file (export folder config, or ``<file>.json``)."""
    path = Path(checkpoint)
    for cand in (path.with_suffix(path.suffix + ".json"), path.parent / EXPORT_CONFIG):
        if cand.is_file():
            try:
                return json.loads(cand.read_text()).get("clipneg")
            except (json.JSONDecodeError, AttributeError):
                return None
    return None


def check_activation(name: str, pretrained: str | None, model_cfg: dict[str, Any]) -> None:
    """Enforce the recorded activation of a checkpoint file; warn when a GELU config loads OpenAI-looking weights."""
    if not pretrained or not os.path.isfile(pretrained):
        return
    config_act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    record = _sidecar_record(pretrained)
    if record and record.get("activation") and record["activation"] != config_act:
        raise ValueError(
            f"{pretrained} was trained with {record['activation']} but {name!r} builds {config_act}: use "
            f"'{name}-quickgelu' (or the config it was exported with), or load the export folder as local-dir:"
        )
    if config_act == "gelu" and not record and "openai" in Path(pretrained).name.lower():
        warnings.warn(
            f"{pretrained} looks like OpenAI weights (trained with QuickGELU) but {name!r} uses GELU, which silently "
            f"changes scores; use '{name}-quickgelu' (PROTOCOLS.md: QuickGELU trap)",
            UserWarning,
            stacklevel=3,
        )


def load_clip(
    name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    seed: int = 0,
    aug_cfg: dict[str, Any] | None = None,
    force_quick_gelu: bool = False,
) -> ClipBundle:
    """Build an open_clip model with its transforms and tokenizer; see the module docstring for ``name``.

    ``seed`` fixes the random init of models without weights, without touching the caller's global RNG.
    """
    if name.startswith(LOCAL_DIR) and pretrained:
        raise ValueError(f"{name} carries its own weights; drop --pretrained ({pretrained})")
    if name.startswith(LOCAL_DIR) and not (Path(name[len(LOCAL_DIR):]) / EXPORT_CONFIG).is_file():
        raise FileNotFoundError(f"{name}: expected {EXPORT_CONFIG} and {EXPORT_WEIGHTS} in that folder "
                                "(write them with clipneg.models.export_local_dir or train.py)")
    model_cfg = _model_cfg_for(name)
    if force_quick_gelu:
        model_cfg["quick_gelu"] = True
    check_activation(name, pretrained, model_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, precision=precision, force_quick_gelu=force_quick_gelu,
            aug_cfg=aug_cfg, output_dict=True, weights_only=True,
        )
    tokenizer = open_clip.get_tokenizer(name)
    vocab = getattr(tokenizer, "vocab_size", None)
    if vocab is not None and vocab < 1000:  # offline hub tokenizers can come back nearly empty without raising
        raise RuntimeError(f"tokenizer for {name} has only {vocab} tokens; is the tokenizer available offline?")
    identity = {
        "name": name,
        "pretrained": pretrained,
        "activation": activation_of(model),
        "weights_sha256": weights_sha256(model),
        "n_params": sum(p.numel() for p in model.parameters()),
        "image_size": model.visual.preprocess_cfg.get("size"),
        "context_length": getattr(model, "context_length", None),
        "precision": precision,
    }
    if name.startswith(LOCAL_DIR):
        record = json.loads((Path(name[len(LOCAL_DIR):]) / EXPORT_CONFIG).read_text()).get("clipneg", {})
        identity["export"] = record
    return ClipBundle(model, preprocess_train, preprocess_val, tokenizer, model_cfg, identity)


def export_local_dir(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    model_cfg: dict[str, Any],
    record: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` in open_clip's local-dir format (config + safetensors), loadable unchanged with
    ``open_clip.create_model_and_transforms("local-dir:" + out_dir)``.

    The config's ``quick_gelu`` flag is set from the activation the model really runs, and ``record`` (provenance:
    base model, run, training data manifest) is stored under the ``clipneg`` key, which open_clip ignores.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    cfg = json.loads(json.dumps(model_cfg))
    activation = activation_of(model)
    if activation == "quick_gelu":
        cfg["quick_gelu"] = True
    else:
        cfg.pop("quick_gelu", None)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / EXPORT_WEIGHTS))
    clipneg_record = {"activation": activation, "weights_sha256": weights_sha256(model), **(record or {})}
    config = {"model_cfg": cfg, "preprocess_cfg": dict(model.visual.preprocess_cfg), "clipneg": clipneg_record}
    (out / EXPORT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    return out
