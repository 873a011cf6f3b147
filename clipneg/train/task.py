"""ContrastiveTask: one module that owns the CLIP model and the loss and takes the named batch dict.

Wrapping this module (not the bare model) in DDP means one forward through the wrapper per step, so DDP's gradient
hooks fire once and every parameter that got a gradient is reduced once (open_clip main's Task idea). Inside, the
images and the negative images go through the image tower in one call, the captions and the negative captions through
the text tower in one call: one big batch per tower is faster than several small ones and keeps normalisation layers
seeing one batch.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from clipneg.train.config import LossConfig
from clipneg.train.losses import HardNegativeLoss, ema_update
from clipneg.train.text_buckets import encode_text_bucketed, unsupported_reason

log = logging.getLogger(__name__)

# Batch keys whose rows are [B, K, ...] slots, flattened to B * K rows for the tower.
SLOTTED = ("neg_text", "neg_image", "para_neg")
# The batch keys that describe a part's rows, passed to the loss under their own names with its features.
PASS_THROUGH = {
    "neg_text": ("neg_text_mask", "neg_text_kind"),
    "neg_image": ("neg_image_mask", "neg_image_text"),
    "para_text": ("para_mask",),
    "para_neg": ("para_neg_mask",),
}


class ContrastiveTask(nn.Module):
    """``task(batch) -> {"contrastive_loss": ..., ...}``: named loss terms, the objective is their sum.

    With ``loss.distill > 0`` an EMA copy of the model (the DeGLA teacher) is kept as a frozen submodule, so it is
    saved and restored with the task's state; call :meth:`update_teacher` after each optimizer step.
    """

    def __init__(self, model: nn.Module, loss_cfg: LossConfig | None = None, kinds: Sequence[str] = (),
                 text_buckets: int = 0, channels_last: bool = False) -> None:
        super().__init__()
        if text_buckets and (why := unsupported_reason(model)):
            raise ValueError(f"model.text_buckets {text_buckets} cannot be used: {why}. Set model.text_buckets 0.")
        self.text_buckets = text_buckets  # > 0: encode captions in that many length groups without their padding
        # NHWC layout for the image tower's weights and the images it is given: the same function, faster convolutions
        self.channels_last = channels_last
        if channels_last:
            model.visual.to(memory_format=torch.channels_last)
        self.model = model
        self.loss_cfg = loss_cfg or LossConfig()
        self.loss = HardNegativeLoss(self.loss_cfg, kinds)
        self.teacher: nn.Module | None = None
        if self.loss_cfg.distill > 0:
            self.teacher = copy.deepcopy(model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ContrastiveTask:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never trains (no dropout, frozen statistics)
        return self

    def forward(self, batch: Mapping[str, Any], *, features_only: bool = False,
                cache: Sequence[Mapping[str, Any]] | None = None, index: int = 0) -> dict[str, Tensor]:
        """The named loss terms of ``batch``.

        GradCache (clipneg.train.accumulate) calls it two more ways, through the same (DDP-)wrapped module:
        ``features_only=True`` returns the loss inputs of a micro-batch (features, masks, teacher features) instead,
        and ``cache=[inputs of every micro-batch], index=j`` encodes micro-batch j with gradient and returns the loss
        of the whole batch, with micro-batch j's live features in place of its cached ones.
        """
        if features_only:
            return self.features(batch)
        if cache is None:
            return self.loss(**self.features(batch))
        live = self.features(batch, teacher=False)
        return self.loss(**splice(cache, index, live))

    def features(self, batch: Mapping[str, Any], teacher: bool = True) -> dict[str, Any]:
        """Encode each tower once on the concatenation of its named parts, split the features back by the parts'
        sizes, and name them by the loss's rule: the features of batch key X are ``X_features``, and X's masks and
        index tensors (``PASS_THROUGH``) go with them under their batch names; with ``teacher``, the EMA teacher's
        features too (when loss.distill > 0)."""
        cfg = self.loss_cfg
        image, text = batch["image"], batch["text"]
        if cfg.paraphrase > 0 and "para_text" not in batch:
            raise ValueError("loss.paraphrase > 0 needs the loader's paraphrases: set data.paraphrases true (and "
                             "write shards whose neg.json carries paraphrases, as `clipneg world` does)")
        image_parts, text_parts = self._parts(batch)
        all_images = torch.cat([x for _, x in image_parts]) if len(image_parts) > 1 else image
        if self.channels_last:
            all_images = all_images.contiguous(memory_format=torch.channels_last)
        all_texts = torch.cat([x for _, x in text_parts]) if len(text_parts) > 1 else text
        out = self._encode(self.model, all_images, all_texts)
        feats: dict[str, Any] = {"logit_scale": out["logit_scale"]}
        b = image.shape[0]
        for parts, tower in ((image_parts, out["image_features"]), (text_parts, out["text_features"])):
            pieces = torch.split(tower, [x.shape[0] for _, x in parts])
            for (name, _), piece in zip(parts, pieces, strict=True):
                slots = batch[name].shape[1] if name in SLOTTED else None  # [B, K, ...] parts were flattened
                feats[f"{name}_features"] = piece if slots is None else piece.view(b, slots, -1)
                feats.update({k: batch.get(k) for k in PASS_THROUGH.get(name, ())})
        if teacher and self.teacher is not None:
            with torch.no_grad():
                t_out = self._encode(self.teacher, image, text)
            feats["teacher_image_features"] = t_out["image_features"]
            feats["teacher_text_features"] = t_out["text_features"]
        return feats

    def _parts(self, batch: Mapping[str, Any]) -> tuple[list[tuple[str, Tensor]], list[tuple[str, Tensor]]]:
        """(batch key, rows) of what goes through the image tower and the text tower, positives first; only the parts
        some configured term reads, and no empty negative slots."""
        cfg = self.loss_cfg
        images, texts = [("image", batch["image"])], [("text", batch["text"])]
        neg_text, neg_image = batch.get("neg_text"), batch.get("neg_image")
        if cfg.uses_neg_text and neg_text is not None and neg_text.shape[1] > 0:
            texts.append(("neg_text", neg_text.flatten(0, 1)))
        if cfg.uses_neg_image and neg_image is not None and neg_image.shape[1] > 0:
            images.append(("neg_image", neg_image.flatten(0, 1)))
        if cfg.paraphrase > 0:
            texts += [("para_text", batch["para_text"]), ("para_neg", batch["para_neg"].flatten(0, 1))]
        return images, texts

    def _encode(self, model: nn.Module, image: Tensor, text: Tensor) -> dict[str, Tensor]:
        # DeepSpeed's bf16/fp16 casts the weights themselves (no autocast), so the images must follow them; under
        # autocast or FSDP's mixed precision the weights stay float32 and this is a no-op.
        image = image.to(next(p.dtype for p in model.parameters() if p.is_floating_point()))
        if not self.text_buckets:
            return model(image=image, text=text)
        return {"image_features": model.encode_image(image, normalize=True),
                "text_features": encode_text_bucketed(model, text, self.text_buckets),
                "logit_scale": model.logit_scale.exp()}

    @torch.no_grad()
    def update_teacher(self, update: Callable[[nn.Module, nn.Module, float], None] = ema_update) -> None:
        """The EMA step; ``update`` is the backend's when parameters are partitioned (clipneg.train.backends)."""
        if self.teacher is not None:
            update(self.teacher, self.model, self.loss_cfg.distill_ema)

    @torch.no_grad()
    def clamp_logit_scale(self, max_value: float) -> None:
        """CLIP keeps exp(logit_scale) <= 100 (Radford et al. 2021); open_clip clamps after every step."""
        scale = getattr(self.model, "logit_scale", None)
        if scale is not None:
            scale.clamp_(0, max_value)


def splice(cache: Sequence[Mapping[str, Any]], index: int, live: Mapping[str, Any]) -> dict[str, Any]:
    """The loss inputs of the whole batch from each micro-batch's cached inputs, micro-batch ``index``'s replaced by
    its ``live`` ones (which carry the graph). Rows are concatenated in micro-batch order, so the whole batch's rows
    keep the loader's order (and the labels their meaning).

    The logit scale enters the loss directly, not through a micro-batch's features: it keeps its graph only in the
    last micro-batch's loss (the one whose backward DDP synchronises), so its gradient is counted once, not N times.
    """
    out: dict[str, Any] = {}
    for key, value in cache[0].items():
        if key == "logit_scale":
            continue
        if value is None:
            out[key] = None
            continue
        out[key] = torch.cat([live[key] if i == index and key in live else part[key] for i, part in enumerate(cache)])
    scale = live["logit_scale"]
    out["logit_scale"] = scale if index == len(cache) - 1 else scale.detach()
    return out
