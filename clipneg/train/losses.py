"""One family of contrastive losses with hard negatives, computed from embeddings.

``HardNegativeLoss`` takes L2-normalised features (what an open_clip model returns with ``output_dict=True``, plus the
features of the negatives) and returns a dict of named, already weighted terms; the training objective is their sum
and every term is logged. The maths needs no model, so tests call it on hand-built tensors.

Inputs (local to one process; B anchors, Kt negative captions and Ki negative images per anchor, D feature size):

| name                         | shape        | meaning                                                              |
|------------------------------|--------------|----------------------------------------------------------------------|
| ``image_features``           | [B, D]       | positive images                                                      |
| ``text_features``            | [B, D]       | positive captions                                                    |
| ``logit_scale``              | []           | exp of the learned temperature (open_clip's ``logit_scale.exp()``)   |
| ``neg_text_features``        | [B, Kt, D]   | negative captions of each image                                      |
| ``neg_text_mask``            | [B, Kt] bool | False where the slot is padding                                      |
| ``neg_text_kind``            | [B, Kt] long | ids into the kind list given at construction (-1: unknown)           |
| ``neg_image_features``       | [B, Ki, D]   | negative (counterfactual) images                                     |
| ``neg_image_mask``           | [B, Ki] bool | False where the slot is padding                                      |
| ``neg_image_text``           | [B, Ki] long | which negative caption each negative image depicts, -1 if none       |
| ``teacher_image_features``   | [B, D]       | EMA-teacher features for the distillation term (no gradient)         |
| ``teacher_text_features``    | [B, D]       | idem for captions                                                    |
| ``paraphrase_features``      | [B, D]       | a paraphrase of each caption (same meaning, other words)             |
| ``paraphrase_mask``          | [B] bool     | False where the caption has no paraphrase                            |
| ``paraphrase_neg_features``  | [B, Kp, D]   | captions in the same words whose order makes them false              |
| ``paraphrase_neg_mask``      | [B, Kp] bool | False where the slot is padding                                      |

Terms (PROTOCOLS.md section 5; s = logit scale, cos = dot product of normalised features):

- ``contrastive_loss`` (CLIP, Radford et al. 2021): mean of CE(s I T^T) and CE(s T I^T) over the global batch. With
  ``neg_text_columns`` (NegCLIP, Yuksekgonul et al. ICLR 2023) every valid negative caption of the global batch is an
  extra image-to-text column; with ``neg_image_columns`` every valid negative image is an extra text-to-image column.
  Negatives are never anchors.
- ``triplet_loss`` (TripletCLIP, Patel et al. NeurIPS 2024): NegCLIP(I', T', T): each negative image that depicts a
  negative caption forms a positive pair with it, and the original captions are its hard negatives.
- ``hard_negative_loss`` (DAC; FSC-CLIP, Oh et al. EMNLP 2024; DeGLA's IGC): per image, a (1+K)-way CE over its own
  caption and its own negatives only, with optional focal weighting (1 - p)^gamma and label smoothing
  y_pos = 1 - eps + eps/(1+n), y_neg = eps/(1+n) over the n valid negatives (FSC-CLIP).
- ``rank_loss`` (CE-CLIP, Zhang et al. CVPR 2024): mean over negatives of relu(tau + s cos(I,T') - s cos(I,T)) with the
  adaptive threshold tau = mean s cos(I,T) - mean s cos(I,T') over the global batch for each kind of negative,
  detached and clamped to [0, rank_max_threshold].
- ``distill_loss`` (DeGLA, 2025): MSE between student and EMA-teacher image and text features.
- ``paraphrase_loss`` (ours; text only): the per-sample term twice, with the caption T as anchor over [its paraphrase
  P, the word-order negatives N], and with P as anchor over [T, N], averaged (same focal weighting and smoothing).
  For T = "a left of b": P = "b right of a", N = "a right of b", "b left of a": all four hold the same words, so
  only word order passes it. Why it is needed: the cross-modal terms pass order from one tower to the other only,
  and both start without it (a saddle); on the built-in world converse relations stayed at chance under every recipe
  until the text tower was given order this way. Contrasting P with the caption's own negatives instead (of which
  only some are converses) did not start it (docs/BENCHMARKS.md, session 6).

Per-kind weights: a weight w on a negative counts it w times: in a softmax its logit gets + log w (w = 0 drops it),
in the ranking hinge and as a triplet anchor its term is multiplied by w. Kinds not listed weigh 1.

Distributed: each candidate column (texts, images, negative texts, negative images) is gathered separately with
``torch.distributed.nn.functional.all_gather`` so gradients flow back to the process that made the feature; anchors
are the local rows and their labels are offset by ``rank * rows``. Concatenating positives and negatives before the
gather would interleave ranks' positives with negatives and break the label offsets (the NegCLIP layout under DDP).
Each term is normalised so that the mean over processes (what DDP's gradient averaging optimises) equals the loss of
one process on the concatenated batch: masked terms divide by the global count of valid anchors.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from clipneg.train.config import LossConfig

log = logging.getLogger(__name__)

# Additive bias for masked columns: finite so 0 * bias stays 0 (no NaN), far enough below any logit (|s cos| <= 100)
# that exp() underflows to exactly 0 in float32, so a masked column changes neither the value nor the gradients.
MASKED = -1e9


# ---------------------------------------------------------------------------------------------------------------------
# distributed helpers


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


def _global_mean(per_anchor: Tensor, anchor_weight: Tensor) -> Tensor:
    """sum(w * loss) / global sum(w), scaled by world size so the mean over processes is the global weighted mean."""
    world, _ = world_info()
    denom = all_reduce_sum(anchor_weight.sum().detach()).clamp_min(1e-12)
    return (per_anchor * anchor_weight).sum() * world / denom


# ---------------------------------------------------------------------------------------------------------------------
# the loss


class HardNegativeLoss(nn.Module):
    """CLIP, NegCLIP, negative-image columns, per-sample HN (focal + smoothing), TripletCLIP, CE-CLIP rank, DeGLA.

    ``kinds`` is the kind-name list that ``neg_text_kind`` ids index (``clipneg.schema.KIND_LIST``).
    """

    def __init__(self, cfg: LossConfig | None = None, kinds: Sequence[str] = ()) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.kinds = tuple(kinds)
        unknown = sorted(set(self.cfg.kind_weights) - set(self.kinds))
        if unknown:
            raise ValueError(f"loss.kind_weights names unknown kinds {unknown}; known kinds: {', '.join(self.kinds)}")
        table = torch.tensor([float(self.cfg.kind_weights.get(k, 1.0)) for k in self.kinds] + [1.0])
        # Last entry is for id -1 (unknown kind): weight 1. Not persistent: the config is the source of truth.
        self.register_buffer("kind_table", table, persistent=False)

    # -- per-negative weights ---------------------------------------------------------------------------------------
    def _weights(self, mask: Tensor, kind: Tensor | None) -> Tensor:
        """Float weight per negative slot: the kind weight where valid, 0 where masked."""
        w = mask.to(torch.float32)
        if kind is not None and self.kinds:
            idx = torch.where(kind < 0, torch.full_like(kind, len(self.kinds)), kind)
            w = w * self.kind_table.to(w.device)[idx]
        return w

    @staticmethod
    def _bias(w: Tensor) -> Tensor:
        """log w where w > 0, MASKED elsewhere: adding it to logits counts a column w times (or drops it)."""
        return torch.where(w > 0, torch.log(w.clamp_min(1e-30)), torch.full_like(w, MASKED))

    # -- forward ----------------------------------------------------------------------------------------------------
    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor,
                **features: Tensor | None) -> dict[str, Tensor]:
        """The configured loss terms by name (``contrastive_loss``, ...); ``_terms`` lists the optional inputs.

        Computed in float32 with autocast off: under bf16 autocast every matrix product would round the cosine
        similarities to bf16 (steps of 2^-8 near 1, i.e. 0.4 logit at scale 100), coarser than the gaps between a
        caption and its hard negatives that the terms are about.
        """
        with torch.autocast(image_features.device.type, enabled=False):
            return self._terms(image_features, text_features, logit_scale, **features)

    def _terms(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        neg_text_features: Tensor | None = None,
        neg_text_mask: Tensor | None = None,
        neg_text_kind: Tensor | None = None,
        neg_image_features: Tensor | None = None,
        neg_image_mask: Tensor | None = None,
        neg_image_text: Tensor | None = None,
        teacher_image_features: Tensor | None = None,
        teacher_text_features: Tensor | None = None,
        paraphrase_features: Tensor | None = None,
        paraphrase_mask: Tensor | None = None,
        paraphrase_neg_features: Tensor | None = None,
        paraphrase_neg_mask: Tensor | None = None,
        **_: object,
    ) -> dict[str, Tensor]:
        cfg = self.cfg
        img, txt = image_features.float(), text_features.float()
        s = logit_scale.float()
        b = img.shape[0]

        tneg = tmask = tw = None
        if neg_text_features is not None and neg_text_features.shape[1] > 0:
            tneg = neg_text_features.float()
            tmask = neg_text_mask if neg_text_mask is not None else torch.ones(tneg.shape[:2], dtype=torch.bool)
            tmask = tmask.to(tneg.device, torch.bool)
            tw = self._weights(tmask, neg_text_kind)
        ineg = imask = None
        if neg_image_features is not None and neg_image_features.shape[1] > 0:
            ineg = neg_image_features.float()
            imask = neg_image_mask if neg_image_mask is not None else torch.ones(ineg.shape[:2], dtype=torch.bool)
            imask = imask.to(ineg.device, torch.bool)

        out: dict[str, Tensor] = {}
        if cfg.contrastive > 0:
            out["contrastive_loss"] = cfg.contrastive * self._contrastive(img, txt, s, tneg, tw, ineg, imask,
                                                                          neg_text_kind, neg_image_text)
        if cfg.triplet > 0:
            out["triplet_loss"] = cfg.triplet * self._triplet(txt, s, tneg, tw, ineg, imask, neg_image_text, b)
        if cfg.hard_negative > 0:
            out["hard_negative_loss"] = cfg.hard_negative * self._per_sample(img, txt, s, tneg, tw)
        if cfg.rank > 0:
            out["rank_loss"] = cfg.rank * self._rank(img, txt, s, tneg, tw, neg_text_kind)
        if cfg.distill > 0:
            if teacher_image_features is None or teacher_text_features is None:
                raise ValueError("loss.distill > 0 needs teacher_image_features and teacher_text_features")
            out["distill_loss"] = cfg.distill * (
                F.mse_loss(img, teacher_image_features.float()) + F.mse_loss(txt, teacher_text_features.float())
            )
        if cfg.paraphrase > 0:
            if any(x is None for x in (paraphrase_features, paraphrase_mask, paraphrase_neg_features,
                                       paraphrase_neg_mask)):
                raise ValueError("loss.paraphrase > 0 needs paraphrase_features, paraphrase_mask, "
                                 "paraphrase_neg_features and paraphrase_neg_mask (set data.paraphrases true)")
            para, pneg = paraphrase_features.float(), paraphrase_neg_features.float()
            # Weight 0 where a negative slot is padding or the caption has no paraphrase: such anchors leave the mean.
            pw = (paraphrase_neg_mask.to(pneg.device, torch.bool)
                  & paraphrase_mask.to(pneg.device, torch.bool).unsqueeze(1)).to(torch.float32)
            ps = s if cfg.paraphrase_scale is None else torch.tensor(cfg.paraphrase_scale, device=s.device)
            out["paraphrase_loss"] = cfg.paraphrase * (self._per_sample(txt, para, ps, pneg, pw)
                                                       + self._per_sample(para, txt, ps, pneg, pw)) / 2
        return out

    # -- terms ------------------------------------------------------------------------------------------------------
    def _contrastive(self, img, txt, s, tneg, tw, ineg, imask, neg_text_kind, neg_image_text) -> Tensor:
        world, rank = world_info()
        b = img.shape[0]
        all_txt = gather_with_grad(txt)
        all_img = gather_with_grad(img)
        # Same operation order as open_clip.ClipLoss, so the plain case matches it bit for bit.
        logits_per_image = s * img @ all_txt.T
        logits_per_text = s * txt @ all_img.T
        if self.cfg.neg_text_columns and tneg is not None:
            cols = gather_with_grad(tneg.flatten(0, 1))
            bias = gather_no_grad(self._bias(tw).flatten())
            logits_per_image = torch.cat([logits_per_image, s * img @ cols.T + bias], dim=1)
        if self.cfg.neg_image_columns and ineg is not None:
            iw = self._image_weights(imask, neg_image_text, neg_text_kind)
            cols = gather_with_grad(ineg.flatten(0, 1))
            bias = gather_no_grad(self._bias(iw).flatten())
            logits_per_text = torch.cat([logits_per_text, s * txt @ cols.T + bias], dim=1)
        labels = torch.arange(b, device=img.device) + rank * b
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2

    def _image_weights(self, imask: Tensor, neg_image_text: Tensor | None, neg_text_kind: Tensor | None) -> Tensor:
        """A negative image takes the kind weight of the caption it depicts (weight 1 when it depicts none)."""
        if neg_image_text is None or neg_text_kind is None:
            return self._weights(imask, None)
        idx = neg_image_text.clamp_min(0)
        kind = torch.gather(neg_text_kind, 1, idx)
        kind = torch.where(neg_image_text < 0, torch.full_like(kind, -1), kind)
        return self._weights(imask, kind)

    def _triplet(self, txt, s, tneg, tw, ineg, imask, neg_image_text, b) -> Tensor:
        if tneg is None or ineg is None or neg_image_text is None:
            return txt.new_zeros(())
        _, rank = world_info()
        ki, d = ineg.shape[1], ineg.shape[2]
        idx = neg_image_text.to(tneg.device).long()
        paired = imask & (idx >= 0) & (idx < tneg.shape[1])
        safe = idx.clamp(0, tneg.shape[1] - 1)
        # T'_pair[b, j] = the negative caption that negative image j of anchor b depicts.
        tpair = torch.gather(tneg, 1, safe.unsqueeze(-1).expand(-1, -1, d))
        pw = torch.gather(tw, 1, safe) * paired  # kind weight of the pair, 0 when unpaired or masked
        ip, tp, w = ineg.flatten(0, 1), tpair.flatten(0, 1), pw.flatten()
        all_ip, all_tp, all_txt = gather_with_grad(ip), gather_with_grad(tp), gather_with_grad(txt)
        bias = gather_no_grad(self._bias(w))  # invalid pairs are dropped as columns too
        # NegCLIP(I', T', T): I' -> [T'_pairs ; T] (original captions are the hard negatives), T'_pair -> I'.
        logits_i2t = torch.cat([s * ip @ all_tp.T + bias, s * ip @ all_txt.T], dim=1)
        logits_t2i = s * tp @ all_ip.T + bias
        labels = torch.arange(b * ki, device=ip.device) + rank * b * ki
        per_anchor = (F.cross_entropy(logits_i2t, labels, reduction="none")
                      + F.cross_entropy(logits_t2i, labels, reduction="none")) / 2
        # Masked anchors have a -1e9 logit at their own label: a huge but finite loss that the 0 weight removes.
        per_anchor = torch.where(w > 0, per_anchor, torch.zeros_like(per_anchor))
        return _global_mean(per_anchor, w)

    def _per_sample(self, img, txt, s, tneg, tw) -> Tensor:
        if tneg is None:
            return img.new_zeros(())
        pos = s * (img * txt).sum(-1, keepdim=True)  # [B, 1]
        neg = s * torch.einsum("bd,bkd->bk", img, tneg) + self._bias(tw)  # [B, K]
        logits = torch.cat([pos, neg], dim=1)
        logp = F.log_softmax(logits, dim=1)
        valid = (tw > 0).to(logits.dtype)
        n = valid.sum(1, keepdim=True)
        eps = self.cfg.label_smoothing
        target = torch.cat([1 - eps + eps / (1 + n), valid * eps / (1 + n)], dim=1)
        weight = target
        if self.cfg.focal_gamma > 0:
            # Focal weighting (Lin et al. 2017) as FSC-CLIP applies it: down-weight classes already predicted well.
            weight = target * (1 - logp.exp()).clamp_min(0).pow(self.cfg.focal_gamma)
        per_anchor = -(weight * logp).sum(1)
        # Anchors without any valid negative have nothing to contrast: they leave the mean.
        return _global_mean(per_anchor, (n.squeeze(1) > 0).to(per_anchor.dtype))

    def _rank(self, img, txt, s, tneg, tw, neg_text_kind) -> Tensor:
        if tneg is None:
            return img.new_zeros(())
        pos = s * (img * txt).sum(-1, keepdim=True)  # [B, 1]
        neg = s * torch.einsum("bd,bkd->bk", img, tneg)  # [B, K]
        valid = tw > 0
        # Adaptive threshold per kind of negative (per slot when kinds are unknown), over the global batch.
        if neg_text_kind is not None and self.kinds:
            group = torch.where(neg_text_kind < 0, torch.full_like(neg_text_kind, len(self.kinds)), neg_text_kind)
            n_groups = len(self.kinds) + 1
        else:
            group = torch.arange(neg.shape[1], device=neg.device).expand_as(neg)
            n_groups = neg.shape[1]
        group = group.to(neg.device).long()
        gap = (pos - neg).detach() * valid
        sums = torch.zeros(n_groups, device=neg.device).scatter_add_(0, group.flatten(), gap.flatten())
        counts = torch.zeros(n_groups, device=neg.device).scatter_add_(0, group.flatten(), valid.float().flatten())
        sums, counts = all_reduce_sum(sums), all_reduce_sum(counts)
        tau = (sums / counts.clamp_min(1)).clamp(0, self.cfg.rank_max_threshold)[group]
        hinge = F.relu(tau + neg - pos) * tw
        n = valid.sum(1)
        per_anchor = hinge.sum(1) / n.clamp_min(1)
        return _global_mean(per_anchor, (n > 0).to(per_anchor.dtype))


def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, parameters and floating buffers (DeGLA's EMA teacher)."""
    with torch.no_grad():
        t_params = dict(teacher.named_parameters())
        for name, p in student.named_parameters():
            t = t_params[name]
            if hasattr(p, "ds_tensor"):
                # DeepSpeed ZeRO-3: a parameter is this process's partition (ds_tensor), which the optimizer updates,
                # plus the whole tensor while it is gathered or persisted (small ones stay gathered). A parameter's
                # teacher and student partitions hold the same elements, so the update is local.
                t.ds_tensor.lerp_(p.ds_tensor.to(t.dtype), 1 - decay)
                if p.data.numel() != p.ds_numel or t.data.numel() != t.ds_numel:
                    continue
            t.lerp_(p.detach().to(t.dtype), 1 - decay)
        t_bufs = dict(teacher.named_buffers())
        for name, buf in student.named_buffers():
            if name in t_bufs and buf.dtype.is_floating_point:
                t_bufs[name].copy_(buf)


def max_logit_scale() -> float:
    """CLIP clamps the learned temperature so the logit scale stays <= 100 (Radford et al. 2021, section 2.5)."""
    return math.log(100.0)
