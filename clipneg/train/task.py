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
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from clipneg.train.config import LossConfig
from clipneg.train.losses import HardNegativeLoss, ema_update
from clipneg.train.text_buckets import encode_text_bucketed, unsupported_reason

log = logging.getLogger(__name__)


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

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        cfg = self.loss_cfg
        image, text = batch["image"], batch["text"]
        b = image.shape[0]
        images, texts = [image], [text]
        neg_text = batch.get("neg_text")
        use_nt = cfg.uses_neg_text and neg_text is not None and neg_text.shape[1] > 0
        neg_image = batch.get("neg_image")
        use_ni = cfg.uses_neg_image and neg_image is not None and neg_image.shape[1] > 0
        if use_nt:
            texts.append(neg_text.flatten(0, 1))
        if use_ni:
            images.append(neg_image.flatten(0, 1))
        if cfg.paraphrase > 0:
            if "para_text" not in batch:
                raise ValueError("loss.paraphrase > 0 needs the loader's paraphrases: set data.paraphrases true (and "
                                 "write shards whose neg.json carries paraphrases, as `clipneg world` does)")
            texts += [batch["para_text"], batch["para_neg"].flatten(0, 1)]
        all_images = torch.cat(images) if len(images) > 1 else image
        if self.channels_last:
            all_images = all_images.contiguous(memory_format=torch.channels_last)
        out = self._encode(self.model, all_images, torch.cat(texts) if len(texts) > 1 else text)
        img_f, txt_f = out["image_features"], out["text_features"]
        feats: dict[str, Any] = {
            "image_features": img_f[:b],
            "text_features": txt_f[:b],
            "logit_scale": out["logit_scale"],
        }
        if use_nt:
            kt = neg_text.shape[1]
            feats["neg_text_features"] = txt_f[b:b + b * kt].view(b, kt, -1)
            feats["neg_text_mask"] = batch.get("neg_text_mask")
            feats["neg_text_kind"] = batch.get("neg_text_kind")
        if cfg.paraphrase > 0:
            n, kp = txt_f.shape[0], batch["para_neg"].shape[1]  # the paraphrases and their negatives come last
            feats["paraphrase_features"] = txt_f[n - b * (1 + kp):n - b * kp]
            feats["paraphrase_neg_features"] = txt_f[n - b * kp:].view(b, kp, -1)
            feats["paraphrase_mask"] = batch["para_mask"]
            feats["paraphrase_neg_mask"] = batch["para_neg_mask"]
        if use_ni:
            ki = neg_image.shape[1]
            feats["neg_image_features"] = img_f[b:].view(b, ki, -1)
            feats["neg_image_mask"] = batch.get("neg_image_mask")
            feats["neg_image_text"] = batch.get("neg_image_text") if use_nt else None
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self._encode(self.teacher, image, text)
            feats["teacher_image_features"] = t_out["image_features"]
            feats["teacher_text_features"] = t_out["text_features"]
        return self.loss(**feats)

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
    def update_teacher(self) -> None:
        if self.teacher is not None:
            ema_update(self.teacher, self.model, self.loss_cfg.distill_ema)

    @torch.no_grad()
    def clamp_logit_scale(self, max_value: float) -> None:
        """CLIP keeps exp(logit_scale) <= 100 (Radford et al. 2021); open_clip clamps after every step."""
        scale = getattr(self.model, "logit_scale", None)
        if scale is not None:
            scale.clamp_(0, max_value)


def promote_scalar_parameters(module: nn.Module) -> list[str]:
    """Give every 0-d parameter (open_clip's ``logit_scale``, SigLIP's ``logit_bias``) shape [1], in place.

    FSDP2's ``fully_shard`` refuses 0-d parameters ("fully_shard doesn't support scalar parameters", seen on torch
    2.11). open_clip only multiplies, adds or exponentiates them, so shape [1] broadcasts to the same function. Call it
    before the optimizer is built (it holds the parameter objects); exports reshape them back (see train.export).
    """
    names = []
    for prefix, mod in module.named_modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.dim() == 0:
                setattr(mod, name, nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad))
                names.append(f"{prefix}.{name}" if prefix else name)
    return names
