"""``HardNegativeLoss``: the weighted sum of the configured terms, from the named inputs of the package table."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from clipneg.train.config import LossConfig
from clipneg.train.losses.contrastive import ContrastiveLoss
from clipneg.train.losses.distill import DistillLoss
from clipneg.train.losses.imc import ImcLoss
from clipneg.train.losses.paraphrase import ParaphraseLoss
from clipneg.train.losses.per_sample import PerSampleLoss
from clipneg.train.losses.rank import RankLoss
from clipneg.train.losses.triplet import TripletLoss
from clipneg.train.losses.weights import image_weights, slot_weights

# Every input the loss accepts (the table in clipneg.train.losses): a batch key X gives the feature X_features, masks
# and index tensors keep their batch names, the EMA teacher's features are teacher_ + the feature name.
INPUT_NAMES = (
    "image_features", "text_features", "logit_scale",
    "neg_text_features", "neg_text_mask", "neg_text_kind",
    "neg_image_features", "neg_image_mask", "neg_image_text",
    "teacher_image_features", "teacher_text_features",
    "para_text_features", "para_mask", "para_neg_features", "para_neg_mask",
)
# Names the loss took before the naming rule, for the error message.
RENAMED = {"paraphrase_features": "para_text_features", "paraphrase_mask": "para_mask",
           "paraphrase_neg_features": "para_neg_features", "paraphrase_neg_mask": "para_neg_mask"}
# Features with a slot dimension [B, K, D]: K = 0 holds no negative, the same as leaving the input out.
SLOT_FEATURES = ("neg_text_features", "neg_image_features", "para_neg_features")


class _Inputs(NamedTuple):
    """The inputs in float32 with defaults filled in, shared by every term (cast once, so bf16 features get one cast
    node each and their gradients from all terms are summed in float32 before it, as in a single function)."""

    image: Tensor
    text: Tensor
    scale: Tensor
    neg_text: Tensor | None
    neg_text_weight: Tensor | None
    neg_text_kind: Tensor | None
    neg_image: Tensor | None
    neg_image_mask: Tensor | None
    neg_image_text: Tensor | None
    raw: dict[str, Tensor | None]


@dataclass(frozen=True)
class _Term:
    """One term: its LossConfig weight's name, the weight, the inputs it cannot do without, and the fix if missing.
    ``HardNegativeLoss._<key>`` maps the named inputs to the term's arguments; the output is ``<key>_loss``."""

    key: str
    weight: float
    needs: tuple[str, ...]
    fix: str

    @property
    def name(self) -> str:
        return f"{self.key}_loss"


class HardNegativeLoss(nn.Module):
    """CLIP, NegCLIP, negative-image columns, per-sample HN (focal + smoothing), TripletCLIP, CE-CLIP rank, DeGLA,
    paraphrase, CE-CLIP IMC: ``loss(**inputs) -> {"contrastive_loss": w * ContrastiveLoss(...), ...}`` for each term
    whose weight in ``cfg`` is > 0, in the order contrastive, triplet, hard_negative, rank, distill, paraphrase, imc.

    ``kinds`` is the kind-name list that ``neg_text_kind`` ids index (``clipneg.schema.KIND_LIST``). An input not in
    the table is a TypeError; a configured term whose inputs are missing (or hold K = 0 slots) is a ValueError that
    names them, never a silent zero.
    """

    def __init__(self, cfg: LossConfig | None = None, kinds: Sequence[str] = ()) -> None:
        super().__init__()
        self.cfg = cfg = cfg or LossConfig()
        self.kinds = tuple(kinds)
        unknown = sorted(set(cfg.kind_weights) - set(self.kinds))
        if unknown:
            raise ValueError(f"loss.kind_weights names unknown kinds {unknown}; known kinds: {', '.join(self.kinds)}")
        table = torch.tensor([float(cfg.kind_weights.get(k, 1.0)) for k in self.kinds] + [1.0])
        # Last entry is for id -1 (unknown kind): weight 1. Not persistent: the config is the source of truth.
        self.register_buffer("kind_table", table, persistent=False)

        self.contrastive = ContrastiveLoss()
        self.triplet = TripletLoss()
        self.per_sample = PerSampleLoss(cfg.label_smoothing, cfg.focal_gamma)
        self.rank = RankLoss(cfg.rank_max_threshold, len(self.kinds))
        self.distill = DistillLoss()
        self.paraphrase = ParaphraseLoss(self.per_sample, cfg.paraphrase_scale)
        self.imc = ImcLoss()

        captions = "negative captions: set data.k_text > 0"
        contrastive_needs = (("neg_text_features",) if cfg.neg_text_columns else ()) + (
            ("neg_image_features",) if cfg.neg_image_columns else ())
        terms = [
            _Term("contrastive", cfg.contrastive, contrastive_needs,
                  "loss.neg_text_columns needs negative captions (data.k_text > 0), loss.neg_image_columns negative "
                  "images (data.k_image > 0)"),
            _Term("triplet", cfg.triplet, ("neg_text_features", "neg_image_features", "neg_image_text"),
                  "negative images and the negative captions they depict: set data.k_text > 0 and data.k_image > 0"),
            _Term("hard_negative", cfg.hard_negative, ("neg_text_features",), captions),
            _Term("rank", cfg.rank, ("neg_text_features",), captions),
            _Term("distill", cfg.distill, ("teacher_image_features", "teacher_text_features"),
                  "the EMA teacher's features, which ContrastiveTask computes when loss.distill > 0"),
            _Term("paraphrase", cfg.paraphrase,
                  ("para_text_features", "para_mask", "para_neg_features", "para_neg_mask"),
                  "set data.paraphrases true and data.k_para_neg > 0"),
            _Term("imc", cfg.imc, ("neg_text_features",), captions),
        ]
        self.terms = tuple(t for t in terms if t.weight > 0)

    # -- forward ----------------------------------------------------------------------------------------------------
    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor,
                **inputs: Tensor | None) -> dict[str, Tensor]:
        """The configured loss terms by name; the inputs are those of the table in ``clipneg.train.losses``.

        Computed in float32 with autocast off: under bf16 autocast every matrix product would round the cosine
        similarities to bf16 (steps of 2^-8 near 1, i.e. 0.4 logit at scale 100), coarser than the gaps between a
        caption and its hard negatives that the terms are about.
        """
        self._check(inputs)
        with torch.autocast(image_features.device.type, enabled=False):
            x = self._prepare(image_features, text_features, logit_scale, inputs)
            return {t.name: t.weight * getattr(self, f"_{t.key}")(x) for t in self.terms}

    def _check(self, inputs: dict[str, Tensor | None]) -> None:
        unknown = sorted(set(inputs) - set(INPUT_NAMES))
        if unknown:
            close = {k: RENAMED.get(k) or next(iter(difflib.get_close_matches(k, INPUT_NAMES, n=1)), None)
                     for k in unknown}
            hint = "".join(f"; {k}: did you mean {m}?" for k, m in close.items() if m)
            raise TypeError(f"HardNegativeLoss got unknown inputs {unknown}{hint}; known inputs: "
                            f"{', '.join(INPUT_NAMES)}")
        for t in self.terms:
            missing = [k for k in t.needs if not _present(k, inputs.get(k))]
            if missing:
                raise ValueError(f"{t.name} (loss.{t.key} > 0) needs {', '.join(missing)}: absent from the inputs "
                                 f"or with 0 slots ({t.fix})")

    def _prepare(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor,
                 inputs: dict[str, Tensor | None]) -> _Inputs:
        img, txt = image_features.float(), text_features.float()
        s = logit_scale.float()
        neg_text, neg_text_mask, kind = (inputs.get(k) for k in ("neg_text_features", "neg_text_mask",
                                                                 "neg_text_kind"))
        tneg = tw = None
        if _present("neg_text_features", neg_text):
            tneg = neg_text.float()
            tmask = neg_text_mask if neg_text_mask is not None else torch.ones(tneg.shape[:2], dtype=torch.bool)
            tmask = tmask.to(tneg.device, torch.bool)
            tw = slot_weights(tmask, kind, self.kind_table)
        neg_image, neg_image_mask = inputs.get("neg_image_features"), inputs.get("neg_image_mask")
        ineg = imask = None
        if _present("neg_image_features", neg_image):
            ineg = neg_image.float()
            imask = neg_image_mask if neg_image_mask is not None else torch.ones(ineg.shape[:2], dtype=torch.bool)
            imask = imask.to(ineg.device, torch.bool)
        return _Inputs(img, txt, s, tneg, tw, kind, ineg, imask, inputs.get("neg_image_text"), inputs)

    # -- named inputs -> each term's arguments ----------------------------------------------------------------------
    def _contrastive(self, x: _Inputs) -> Tensor:
        neg_text = x.neg_text if self.cfg.neg_text_columns else None
        neg_image = iw = None
        if self.cfg.neg_image_columns:
            neg_image = x.neg_image
            iw = image_weights(x.neg_image_mask, x.neg_image_text, x.neg_text_kind, self.kind_table)
        return self.contrastive(x.image, x.text, x.scale, neg_text, x.neg_text_weight, neg_image, iw)

    def _triplet(self, x: _Inputs) -> Tensor:
        return self.triplet(x.text, x.scale, x.neg_text, x.neg_text_weight, x.neg_image, x.neg_image_mask,
                            x.neg_image_text)

    def _hard_negative(self, x: _Inputs) -> Tensor:
        return self.per_sample(x.image, x.text, x.scale, x.neg_text, x.neg_text_weight)

    def _rank(self, x: _Inputs) -> Tensor:
        return self.rank(x.image, x.text, x.scale, x.neg_text, x.neg_text_weight, x.neg_text_kind)

    def _distill(self, x: _Inputs) -> Tensor:
        return self.distill(x.image, x.text, x.raw["teacher_image_features"], x.raw["teacher_text_features"])

    def _paraphrase(self, x: _Inputs) -> Tensor:
        r = x.raw
        return self.paraphrase(x.text, r["para_text_features"], r["para_mask"], r["para_neg_features"],
                               r["para_neg_mask"], x.scale)

    def _imc(self, x: _Inputs) -> Tensor:
        return self.imc(x.image, x.text, x.scale, x.neg_text, x.neg_text_weight)


def _present(name: str, value: Tensor | None) -> bool:
    """An input is there when it is not None and, for slot features, has at least one slot."""
    return value is not None and (name not in SLOT_FEATURES or value.shape[1] > 0)
