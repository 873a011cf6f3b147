"""One family of contrastive losses with hard negatives, computed from embeddings.

``HardNegativeLoss`` takes L2-normalised features (what an open_clip model returns with ``output_dict=True``, plus the
features of the negatives) and returns a dict of named, already weighted terms; the training objective is their sum
and every term is logged. It is a weighted sum over the configured terms, one small module each, whose maths needs no
model, so tests call them on hand-built tensors:

| module        | class               | output term            | weight in LossConfig (and its options)             |
|---------------|---------------------|------------------------|----------------------------------------------------|
| contrastive   | ``ContrastiveLoss`` | ``contrastive_loss``   | contrastive (neg_text_columns, neg_image_columns)  |
| triplet       | ``TripletLoss``     | ``triplet_loss``       | triplet                                            |
| per_sample    | ``PerSampleLoss``   | ``hard_negative_loss`` | hard_negative (focal_gamma, label_smoothing)       |
| rank          | ``RankLoss``        | ``rank_loss``          | rank (rank_max_threshold)                          |
| distill       | ``DistillLoss``     | ``distill_loss``       | distill                                            |
| paraphrase    | ``ParaphraseLoss``  | ``paraphrase_loss``    | paraphrase (paraphrase_scale; focal and smoothing) |
| imc           | ``ImcLoss``         | ``imc_loss``           | imc                                                |

``combined`` holds the dispatcher, ``weights`` the masks and per-kind weights, ``distributed`` the gathers, ``ema``
the teacher update and the logit-scale bound.

Inputs (local to one process; B anchors, Kt negative captions, Ki negative images and Kp word-order negatives per
anchor, D feature size). The names follow one rule from the batch (clipneg.train.data): the features of batch key X
are ``X_features``; masks and index tensors keep their batch names ("= name" below); the EMA teacher's features are
``teacher_`` + the feature name. Any other name is a TypeError; a configured term whose inputs are missing (None, or
K = 0 slots) is a ValueError that names them.

| name                       | batch key     | shape        | meaning                                              |
|----------------------------|---------------|--------------|------------------------------------------------------|
| ``image_features``         | ``image``     | [B, D]       | positive images                                      |
| ``text_features``          | ``text``      | [B, D]       | positive captions                                    |
| ``logit_scale``            | (the model)   | []           | exp of the learned temperature (``logit_scale.exp()``) |
| ``neg_text_features``      | ``neg_text``  | [B, Kt, D]   | negative captions of each image                      |
| ``neg_text_mask``          | = name        | [B, Kt] bool | False where the slot is padding (None: all valid)    |
| ``neg_text_kind``          | = name        | [B, Kt] long | ids into the constructor's kind list (-1: unknown)   |
| ``neg_image_features``     | ``neg_image`` | [B, Ki, D]   | negative (counterfactual) images                     |
| ``neg_image_mask``         | = name        | [B, Ki] bool | False where the slot is padding (None: all valid)    |
| ``neg_image_text``         | = name        | [B, Ki] long | the neg_text slot each neg image depicts (-1: none)  |
| ``teacher_image_features`` | ``image``     | [B, D]       | EMA-teacher features for the distill term (no grad)  |
| ``teacher_text_features``  | ``text``      | [B, D]       | idem for captions                                    |
| ``para_text_features``     | ``para_text`` | [B, D]       | a paraphrase of each caption (same meaning)          |
| ``para_mask``              | = name        | [B] bool     | False where the caption has no paraphrase            |
| ``para_neg_features``      | ``para_neg``  | [B, Kp, D]   | same words, an order that makes them false           |
| ``para_neg_mask``          | = name        | [B, Kp] bool | False where the slot is padding                      |

Terms (PROTOCOLS.md section 5; s = logit scale, cos = dot product of normalised features; each class documents its
arguments):

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
- ``imc_loss`` (CE-CLIP's intra-modal contrast, Zhang et al. CVPR 2024): per caption, a (1+K)-way CE over
  [s cos(I, T) ; s cos(T, T'_1..K)] with target the image: the caption is pushed away from its own negative captions
  inside the text space.

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

from clipneg.train.losses.combined import INPUT_NAMES, HardNegativeLoss
from clipneg.train.losses.contrastive import ContrastiveLoss
from clipneg.train.losses.distill import DistillLoss
from clipneg.train.losses.distributed import all_reduce_sum, gather_no_grad, gather_with_grad, world_info
from clipneg.train.losses.ema import ema_update, max_logit_scale
from clipneg.train.losses.imc import ImcLoss
from clipneg.train.losses.paraphrase import ParaphraseLoss
from clipneg.train.losses.per_sample import PerSampleLoss
from clipneg.train.losses.rank import RankLoss
from clipneg.train.losses.triplet import TripletLoss
from clipneg.train.losses.weights import MASKED

__all__ = [
    "INPUT_NAMES", "MASKED", "ContrastiveLoss", "DistillLoss", "HardNegativeLoss", "ImcLoss", "ParaphraseLoss",
    "PerSampleLoss", "RankLoss", "TripletLoss", "all_reduce_sum", "ema_update", "gather_no_grad", "gather_with_grad",
    "max_logit_scale", "world_info",
]
