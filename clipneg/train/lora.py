"""LoRA adapters on the open_clip towers through peft, and their merge into plain weights for the export.

```
accelerate launch train.py --config configs/demo_world_lora.yaml --model.lora.rank 4 --model.lora.towers [text]
```

``apply_lora`` injects peft LoRA layers in place (``peft.inject_adapter_in_model``, no ``PeftModel`` wrapper, so the
task still owns an open_clip model and the loop, checkpoints and resume are unchanged) into every residual block of
the chosen towers: ``visual.transformer.resblocks.N`` (image) and ``transformer.resblocks.N`` (text), at the modules
that ``model.lora.target_modules`` names (clipneg.train.config.LORA_TARGETS):

- ``attn``: the block's ``nn.MultiheadAttention``. Its q/k/v projection is one packed parameter (``in_proj_weight``),
  not an ``nn.Linear``, and its ``out_proj`` is an ``nn.Linear`` whose ``forward`` is never called (the attention
  reads ``out_proj.weight`` itself). peft's ``lora.MultiheadAttention`` (peft >= 0.13) adapts both, in_proj with one
  rank-r adapter over the packed [3d, d] weight and out_proj with another, by merging the adapters into the weights
  around each forward. An adapter on ``out_proj`` alone would be silently dead, so the config refuses it.
  Two faults of peft's class (0.21.2) are worked around: its merge adds the out_proj delta twice (W + 2 dW, in the
  forward as in merge_and_unload, while the gradient is that of one dW; huggingface/peft PR #3774, open), and its
  unmerge computes W = (W + dW) - dW, which in floating point is not W, so the frozen base weights drifted by
  rounding at every forward (seen here: in_proj_weight changed after 3 steps); it also re-creates the base
  Parameter objects on every ``state_dict()`` / ``named_modules()`` call. ``ExactLoraMultiheadAttention`` (peft's
  class with its forward replaced) runs the attention on W + dW (once) computed out of place and registers the very
  same base Parameter objects again afterwards, and ``merge_lora`` folds W + dW itself: the frozen weights stay bit
  for bit, the function trained is the function exported.
- ``c_fc`` / ``c_proj``: the MLP's linears (peft's ``lora.Linear``).

Every other weight is frozen (peft marks only adapters trainable), the logit scale too unless
``model.lora.train_logit_scale``. ``merge_lora`` folds W + (alpha / r) B A into each base weight and puts the plain
modules back, so the state dict has exactly a plain model's keys: the export is an ordinary open_clip local-dir
model that open_clip and ``clipneg eval`` load unchanged.
"""

from __future__ import annotations

import logging
import re
import sys

import torch
from torch import nn

from clipneg.train.config import LORA_TARGETS, LoraSettings

log = logging.getLogger(__name__)

# Where each tower's residual blocks live in open_clip's CLIP (VisionTransformer and the text TextTransformer).
TOWER_BLOCKS = {"image": "visual.transformer.resblocks", "text": "transformer.resblocks"}


def target_regex(cfg: LoraSettings) -> str:
    """peft's ``target_modules`` as one regular expression (peft full-matches it against each module name)."""
    towers = "|".join(re.escape(TOWER_BLOCKS[t]) for t in cfg.towers)
    targets = "|".join(re.escape(LORA_TARGETS[t]) for t in cfg.target_modules)
    return rf"(?:{towers})\.\d+\.(?:{targets})"


def apply_lora(model: nn.Module, cfg: LoraSettings, seed: int = 0) -> list[str]:
    """Inject LoRA adapters into ``model`` in place; return the adapted module names.

    The A matrices are drawn from ``seed`` without touching the caller's RNG (B starts at zero, so the adapted model
    computes exactly the base model's function at step 0). Every tower in ``cfg.towers`` must get adapters.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:
        raise ImportError("model.lora needs peft: pip install 'clipneg[lora]' (or pip install 'peft>=0.13')") from e

    pattern = target_regex(cfg)
    names = [n for n, _ in model.named_modules() if re.fullmatch(pattern, n)]
    missing = [t for t in cfg.towers if not any(n.startswith(TOWER_BLOCKS[t] + ".") for n in names)]
    if missing:
        raise ValueError(f"model.lora.towers {missing}: this model has no {', '.join(cfg.target_modules)} modules "
                         f"under {', '.join(TOWER_BLOCKS[t] for t in missing)} (a ResNet image tower?); adapt only "
                         "transformer towers, e.g. --model.lora.towers [text]")
    peft_cfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
                          lora_dropout=cfg.dropout, target_modules=pattern, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_cfg, model)
    _make_attention_exact(model)
    if cfg.train_logit_scale and getattr(model, "logit_scale", None) is not None:
        model.logit_scale.requires_grad_(True)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA rank %d on %d modules: %d trainable parameters of %d", cfg.rank, len(names), trained,
             sum(p.numel() for p in model.parameters()))
    return names


def has_lora(model: nn.Module) -> bool:
    from_peft = _tuner_layer_type()
    return from_peft is not None and any(isinstance(m, from_peft) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain module back, in place (call it on a copy to keep
    training); returns ``model``, whose state dict then has a plain open_clip model's keys."""
    layer_type = _tuner_layer_type()
    if layer_type is None:
        return model
    tuners = [n for n, m in model.named_modules() if isinstance(m, layer_type)]
    # Only outermost tuner layers: peft's MultiheadAttention holds a LoRA out_proj inside, which it unloads itself.
    outer = [n for n in tuners if not any(n.startswith(o + ".") for o in tuners if o != n)]
    for name in outer:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        target = getattr(parent, child)
        if hasattr(target, "unload_and_optionally_merge_module"):  # peft's MultiheadAttention
            plain = _merged_attention(target)
        else:
            target.merge(safe_merge=True)
            plain = target.get_base_layer()
        setattr(parent, child, plain)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


@torch.no_grad()
def _merged_attention(layer: nn.Module) -> nn.Module:
    """The plain nn.MultiheadAttention of a LoRA one, with in_proj W + dW and out_proj W + dW (each delta once; not
    peft's merge, which adds the out_proj delta twice)."""
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    attn = layer.get_base_layer()
    out_lora = attn.out_proj
    out_linear = out_lora.get_base_layer()
    w_in, w_out = attn.in_proj_weight, out_linear.weight
    merged_in = w_in + sum(layer.get_delta_weight(a) for a in active).to(w_in.dtype)
    merged_out = w_out + sum(out_lora.get_delta_weight(a) for a in active).to(w_out.dtype)
    if not (torch.isfinite(merged_in).all() and torch.isfinite(merged_out).all()):
        raise ValueError("LoRA merge produced non-finite attention weights: the adapters are broken")
    attn.in_proj_weight = nn.Parameter(merged_in, requires_grad=w_in.requires_grad)
    out_linear.weight = nn.Parameter(merged_out, requires_grad=w_out.requires_grad)
    attn.out_proj = out_linear
    return attn


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Names of the LoRA parameters (what trains, with the logit scale when configured)."""
    return [n for n, _ in model.named_parameters() if ".lora_" in n]


def _tuner_layer_type() -> type | None:
    """peft's tuner-layer base class, or None when peft was never imported (then no model holds its layers; plain runs
    do not pay for importing peft)."""
    if "peft" not in sys.modules:
        return None
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return None
    return BaseTunerLayer


def _make_attention_exact(model: nn.Module) -> None:
    """Give peft's MultiheadAttention layers the exact forward (module docstring), in place."""
    from peft.tuners.lora.layer import MultiheadAttention

    exact = _exact_attention_class(MultiheadAttention)
    for module in model.modules():
        if type(module) is MultiheadAttention:
            module.__class__ = exact


_EXACT: dict[type, type] = {}


def _exact_attention_class(base: type) -> type:
    if base in _EXACT:
        return _EXACT[base]

    class ExactLoraMultiheadAttention(base):
        """peft's LoRA MultiheadAttention whose forward leaves the frozen base weights untouched (bit for bit)."""

        def forward(self, query: torch.Tensor, *args, **kwargs):
            active = [a for a in self.active_adapters if a in self.lora_A]
            if self.disable_adapters or self.merged or not active:
                return super().forward(query, *args, **kwargs)
            self._check_forward_args(query, *args, **kwargs)
            attn = self.get_base_layer()
            out_lora = attn.out_proj  # peft's lora.Linear around the attention's out_proj
            out_linear = out_lora.get_base_layer()
            w_in, w_out = attn.in_proj_weight, out_linear.weight  # the registered (frozen) Parameters
            d_in = sum(self.get_delta_weight(a) for a in active)
            d_out = sum(out_lora.get_delta_weight(a) for a in active)
            # nn.MultiheadAttention reads both weights as attributes inside its forward: swap in the adapted tensors
            # (out of place, so the adapters get their gradients), then register the same Parameter objects again.
            del attn.in_proj_weight, out_linear.weight
            attn.in_proj_weight, out_linear.weight = w_in + d_in.to(w_in.dtype), w_out + d_out.to(w_out.dtype)
            try:
                result = attn(query, *args, **kwargs)
            finally:
                del attn.in_proj_weight, out_linear.weight
                attn.register_parameter("in_proj_weight", w_in)
                out_linear.register_parameter("weight", w_out)
            dtype = query.dtype
            return result[0].to(dtype), (result[1].to(dtype) if result[1] is not None else None)

        def _restore_weights(self) -> None:
            # peft re-registers the base weights after its own merge/unmerge forgot them; this forward never does.
            attn = self.get_base_layer()
            if "in_proj_weight" not in attn._parameters or "weight" not in attn.out_proj.get_base_layer()._parameters:
                super()._restore_weights()

    _EXACT[base] = ExactLoraMultiheadAttention
    return ExactLoraMultiheadAttention
