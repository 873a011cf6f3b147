"""The loss family, computed from embeddings (no model), plus the task, optimizer and config parts it plugs into.

Given / When / Then in each test's docstring where the setup is not obvious.
"""

from __future__ import annotations

import dataclasses
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipneg.schema import KIND_ID, KIND_LIST
from clipneg.train.config import ConfigError, LossConfig, OptimConfig, TrainConfig, parse_args, to_dict
from clipneg.train.losses import HardNegativeLoss
from clipneg.train.optim import lr_at, param_groups

B, KT, KI, D = 6, 3, 2, 16
SCALE = torch.tensor(14.0)

ALL_TERMS = LossConfig(neg_text_columns=True, neg_image_columns=True, triplet=1.0, hard_negative=0.5, focal_gamma=2.0,
                       label_smoothing=0.02, rank=0.2, paraphrase=0.5)
# One config per term that reads negatives, so each is checked on its own.
NEG_TERMS = {
    "negclip": LossConfig(neg_text_columns=True),
    "neg_image_columns": LossConfig(neg_image_columns=True),
    "triplet": LossConfig(contrastive=0.0, triplet=1.0),
    "per_sample": LossConfig(contrastive=0.0, hard_negative=1.0),
    "per_sample_fsc": LossConfig(contrastive=0.0, hard_negative=0.5, focal_gamma=2.0, label_smoothing=0.02),
    "rank": LossConfig(contrastive=0.0, rank=1.0),
    "paraphrase": LossConfig(contrastive=0.0, paraphrase=1.0),
    "imc": LossConfig(contrastive=0.0, imc=1.0),
}


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 100)
    kinds = torch.tensor([KIND_ID["replace_rel"], KIND_ID["swap_att"], KIND_ID["replace_obj"]]).repeat(B, 1)
    return {
        "image_features": unit(B, D, seed=seed),
        "text_features": unit(B, D, seed=seed + 1),
        "logit_scale": SCALE.clone(),
        "neg_text_features": unit(B, KT, D, seed=seed + 2),
        "neg_text_mask": torch.rand(B, KT, generator=g) > 0.2,
        "neg_text_kind": kinds,
        "neg_image_features": unit(B, KI, D, seed=seed + 3),
        "neg_image_mask": torch.rand(B, KI, generator=g) > 0.2,
        "neg_image_text": torch.tensor([[0, 1], [2, -1], [1, 0], [0, 2], [-1, -1], [1, 2]]),
        "para_text_features": unit(B, D, seed=seed + 4),
        "para_mask": torch.tensor([True, True, False, True, True, True]),
        "para_neg_features": unit(B, 2, D, seed=seed + 5),
        "para_neg_mask": torch.tensor([[True, True], [True, False], [True, True], [False, False], [True, True],
                                       [False, True]]),
    }


def run(cfg: LossConfig, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Loss terms and the gradients of their sum with respect to every feature input."""
    inputs = {k: (v.clone().requires_grad_(True) if k.endswith("_features") else v) for k, v in batch.items()}
    out = HardNegativeLoss(cfg, KIND_LIST)(**inputs)
    total = sum(out.values())
    feats = {k: v for k, v in inputs.items() if k.endswith("_features")}
    grads = torch.autograd.grad(total, list(feats.values()), allow_unused=True)
    return out, {k: (g if g is not None else torch.zeros_like(feats[k])) for k, g in zip(feats, grads, strict=True)}


# ---------------------------------------------------------------------------------------------------------------------
# equivalences


def test_plain_loss_equals_open_clip_exactly():
    """Given no negatives, then value and gradients equal open_clip.ClipLoss bitwise."""
    img, txt = unit(B, D, seed=1).requires_grad_(), unit(B, D, seed=2).requires_grad_()
    ours = HardNegativeLoss(LossConfig(), KIND_LIST)(img, txt, SCALE)
    assert list(ours) == ["contrastive_loss"]
    g_ours = torch.autograd.grad(ours["contrastive_loss"], [img, txt])
    img2, txt2 = img.detach().clone().requires_grad_(), txt.detach().clone().requires_grad_()
    ref = open_clip.ClipLoss()(img2, txt2, SCALE)
    g_ref = torch.autograd.grad(ref, [img2, txt2])
    assert torch.equal(ours["contrastive_loss"], ref)
    assert all(torch.equal(a, b) for a, b in zip(g_ours, g_ref, strict=True))


def test_negatives_unused_by_the_config_change_nothing():
    batch = make_batch()
    plain, _ = run(LossConfig(), {k: batch[k] for k in ("image_features", "text_features", "logit_scale")})
    with_negs, grads = run(LossConfig(), batch)
    assert torch.equal(plain["contrastive_loss"], with_negs["contrastive_loss"])
    assert grads["neg_text_features"].abs().sum() == 0 and grads["neg_image_features"].abs().sum() == 0


def test_negclip_matches_explicit_columns():
    """NegCLIP = image-to-text CE over [T ; valid T'] plus the unchanged text-to-image CE."""
    batch = make_batch()
    out, _ = run(LossConfig(neg_text_columns=True), batch)
    img, txt, s = batch["image_features"], batch["text_features"], SCALE
    cols = torch.cat([txt, batch["neg_text_features"][batch["neg_text_mask"]]])
    expected = (F.cross_entropy(s * img @ cols.T, torch.arange(B)) + F.cross_entropy(s * txt @ img.T, torch.arange(B)))
    torch.testing.assert_close(out["contrastive_loss"], expected / 2)


def test_per_sample_term_is_cross_entropy_over_own_negatives():
    batch = make_batch()
    batch["neg_text_mask"] = torch.ones(B, KT, dtype=torch.bool)
    out, _ = run(NEG_TERMS["per_sample"], batch)
    img, txt, neg = batch["image_features"], batch["text_features"], batch["neg_text_features"]
    logits = SCALE * torch.cat([(img * txt).sum(-1, keepdim=True), torch.einsum("bd,bkd->bk", img, neg)], 1)
    torch.testing.assert_close(out["hard_negative_loss"], F.cross_entropy(logits, torch.zeros(B, dtype=torch.long)))


@pytest.mark.parametrize("scale", [None, 50.0])
def test_paraphrase_term_contrasts_caption_and_paraphrase_with_word_order_negatives(scale):
    """Per caption with a paraphrase: (CE from T over [P, valid N] + CE from P over [T, valid N]) / 2, averaged over
    the captions that have one, at the model's logit scale or ``paraphrase_scale``; the others, and every masked slot,
    neither give nor get a gradient through it."""
    batch = make_batch()
    cfg = dataclasses.replace(NEG_TERMS["paraphrase"], paraphrase_scale=scale)
    s = SCALE if scale is None else scale
    out, grads = run(cfg, batch)
    txt, para, neg = batch["text_features"], batch["para_text_features"], batch["para_neg_features"]
    losses = []
    for i in range(B):
        valid = batch["para_neg_mask"][i]
        if batch["para_mask"][i] and valid.any():
            for anchor, pos in ((txt[i], para[i]), (para[i], txt[i])):
                logits = s * torch.cat([(anchor * pos).sum(-1, keepdim=True), neg[i][valid] @ anchor])
                losses.append(F.cross_entropy(logits[None], torch.zeros(1, dtype=torch.long)) / 2)
    n_anchors = sum(bool(batch["para_mask"][i] and batch["para_neg_mask"][i].any()) for i in range(B))
    assert n_anchors == 4
    torch.testing.assert_close(out["paraphrase_loss"], torch.stack(losses).sum() / n_anchors)
    # text only, and nothing from the caption's own negatives
    for k in ("image_features", "neg_image_features", "neg_text_features"):
        assert grads[k].abs().max() == 0, k
    assert grads["para_text_features"][2].abs().max() == 0 and grads["text_features"][2].abs().max() == 0
    assert grads["para_text_features"][0].abs().max() > 0 and grads["para_neg_features"][0].abs().max() > 0
    keep = batch["para_mask"][:, None] & batch["para_neg_mask"]
    assert grads["para_neg_features"][~keep].abs().max() == 0
    changed = dict(batch, para_text_features=torch.where(batch["para_mask"][:, None],
                                                         batch["para_text_features"], unit(B, D, seed=79)),
                   para_neg_features=torch.where(keep[..., None], neg, unit(B, 2, D, seed=80)))
    torch.testing.assert_close(run(cfg, changed)[0]["paraphrase_loss"], out["paraphrase_loss"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="data.paraphrases"):
        run(NEG_TERMS["paraphrase"], {k: v for k, v in batch.items() if not k.startswith("para_")})


def test_focal_and_label_smoothing_follow_fsc_clip():
    """y_pos = 1 - eps + eps/(1+n), y_neg = eps/(1+n), each class weighted by (1 - p)^gamma; then times the weight."""
    batch = make_batch()
    cfg = NEG_TERMS["per_sample_fsc"]
    out, _ = run(cfg, batch)
    img, txt, neg, mask = (batch[k] for k in ("image_features", "text_features", "neg_text_features", "neg_text_mask"))
    total, count = 0.0, 0
    for i in range(B):
        negs = neg[i][mask[i]]
        n = len(negs)
        if n == 0:
            continue
        logits = SCALE * torch.cat([(img[i] * txt[i]).sum()[None], negs @ img[i]])
        logp = F.log_softmax(logits, 0)
        eps = cfg.label_smoothing
        y = torch.tensor([1 - eps + eps / (1 + n)] + [eps / (1 + n)] * n)
        total += -(y * (1 - logp.exp()) ** cfg.focal_gamma * logp).sum()
        count += 1
    torch.testing.assert_close(out["hard_negative_loss"], cfg.hard_negative * total / count)


def test_rank_term_uses_detached_adaptive_threshold_per_kind():
    batch = make_batch()
    out, grads = run(NEG_TERMS["rank"], batch)
    img, txt, neg, mask, kind = (batch[k] for k in ("image_features", "text_features", "neg_text_features",
                                                   "neg_text_mask", "neg_text_kind"))
    pos = SCALE * (img * txt).sum(-1)
    sims = SCALE * torch.einsum("bd,bkd->bk", img, neg)
    tau = torch.zeros(B, KT)
    for k in kind.unique():
        sel = (kind == k) & mask
        tau[kind == k] = (pos[:, None].expand(-1, KT)[sel] - sims[sel]).mean().clamp(0, 10)
    hinge = F.relu(tau + sims - pos[:, None]) * mask
    n = mask.sum(1)
    per = hinge.sum(1) / n.clamp_min(1)
    torch.testing.assert_close(out["rank_loss"], per[n > 0].mean())


def test_imc_term_contrasts_each_caption_with_its_own_negative_captions():
    """CE-CLIP's IMC on hand-built features: per caption with a valid negative, CE over [s cos(I,T) ; s cos(T,T'_k)
    + log w_k] with target the image, averaged over those captions; each caption meets only its own negatives, so
    another row's negatives change nothing, and the image enters through the positive logit only."""
    batch = make_batch()
    cfg = LossConfig(contrastive=0.0, imc=0.2, kind_weights={"replace_rel": 2.0})
    out, grads = run(cfg, batch)
    assert list(out) == ["imc_loss"]
    img, txt, neg, mask, kind = (batch[k] for k in ("image_features", "text_features", "neg_text_features",
                                                   "neg_text_mask", "neg_text_kind"))
    losses = []
    for i in range(B):
        if not mask[i].any():
            continue
        w = torch.tensor([2.0 if k == KIND_ID["replace_rel"] else 1.0 for k in kind[i][mask[i]]])
        logits = torch.cat([SCALE * (img[i] @ txt[i])[None], SCALE * neg[i][mask[i]] @ txt[i] + w.log()])
        losses.append(F.cross_entropy(logits[None], torch.zeros(1, dtype=torch.long)))
    torch.testing.assert_close(out["imc_loss"], 0.2 * torch.stack(losses).mean())
    # Hand-built: a caption whose negative is itself gets -log(e^{s c} / (e^{s c} + e^{s})), c = cos(I,T)
    one = {"image_features": img[:1], "text_features": txt[:1], "logit_scale": SCALE,
           "neg_text_features": txt[:1, None], "neg_text_mask": torch.ones(1, 1, dtype=torch.bool)}
    c = img[0] @ txt[0]
    expected = -torch.log(torch.exp(SCALE * c) / (torch.exp(SCALE * c) + torch.exp(SCALE)))
    torch.testing.assert_close(run(LossConfig(contrastive=0.0, imc=1.0), one)[0]["imc_loss"], expected)
    # gradients: captions, their negatives and the images (positive logit); never the negative images
    assert grads["text_features"].abs().sum() > 0 and grads["neg_text_features"].abs().sum() > 0
    assert grads["image_features"].abs().sum() > 0 and grads["neg_image_features"].abs().max() == 0
    shuffled = dict(batch, neg_text_features=batch["neg_text_features"].clone())
    shuffled["neg_text_features"][1:] = unit(B - 1, KT, D, seed=91)  # other rows' negatives
    other, _ = run(cfg, {k: (v[:1] if k != "logit_scale" and v.ndim else v) for k, v in shuffled.items()})
    alone, _ = run(cfg, {k: (v[:1] if k != "logit_scale" and v.ndim else v) for k, v in batch.items()})
    assert torch.equal(other["imc_loss"], alone["imc_loss"])


def test_triplet_term_is_negclip_on_the_negative_pairs():
    """TripletCLIP's second term: each (negative image, the caption it depicts) is a positive pair whose hard negative
    columns are the original captions."""
    batch = make_batch()
    out, _ = run(NEG_TERMS["triplet"], batch)
    img_n, txt_n, txt = batch["neg_image_features"], batch["neg_text_features"], batch["text_features"]
    idx, imask, tmask = batch["neg_image_text"], batch["neg_image_mask"], batch["neg_text_mask"]
    # A pair needs both halves: a present negative image that depicts a present negative caption.
    pairs = [(b, j) for b in range(B) for j in range(KI) if imask[b, j] and idx[b, j] >= 0 and tmask[b, idx[b, j]]]
    ip = torch.stack([img_n[b, j] for b, j in pairs])
    tp = torch.stack([txt_n[b, idx[b, j]] for b, j in pairs])
    labels = torch.arange(len(pairs))
    i2t = F.cross_entropy(SCALE * ip @ torch.cat([tp, txt]).T, labels)
    t2i = F.cross_entropy(SCALE * tp @ ip.T, labels)
    torch.testing.assert_close(out["triplet_loss"], (i2t + t2i) / 2)


def test_kind_weight_counts_a_negative_that_many_times():
    """Given weight 2 on a kind, when NegCLIP runs, then it equals the batch with those negatives duplicated."""
    batch = make_batch()
    batch["neg_text_mask"] = torch.ones(B, KT, dtype=torch.bool)
    weighted, _ = run(LossConfig(neg_text_columns=True, kind_weights={"replace_rel": 2.0}), batch)
    dup = dict(batch)
    dup["neg_text_features"] = torch.cat([batch["neg_text_features"], batch["neg_text_features"][:, :1]], 1)
    dup["neg_text_mask"] = torch.ones(B, KT + 1, dtype=torch.bool)
    dup["neg_text_kind"] = torch.cat([batch["neg_text_kind"], batch["neg_text_kind"][:, :1]], 1)
    doubled, _ = run(LossConfig(neg_text_columns=True), dup)
    torch.testing.assert_close(weighted["contrastive_loss"], doubled["contrastive_loss"])
    zero, _ = run(LossConfig(neg_text_columns=True, kind_weights={"replace_rel": 0.0}), batch)
    masked = dict(batch, neg_text_mask=batch["neg_text_kind"] != KIND_ID["replace_rel"])
    ref, _ = run(LossConfig(neg_text_columns=True), masked)
    torch.testing.assert_close(zero["contrastive_loss"], ref["contrastive_loss"])


# ---------------------------------------------------------------------------------------------------------------------
# properties every negative term must have


@pytest.mark.parametrize("name", list(NEG_TERMS))
def test_masked_negative_changes_nothing(name):
    """Given a masked negative slot, when its features change arbitrarily, then the loss and all gradients are the same
    and the masked features get exactly zero gradient."""
    cfg = NEG_TERMS[name]
    batch = make_batch()
    base, g_base = run(cfg, batch)
    changed = dict(batch)
    changed["neg_text_features"] = torch.where(batch["neg_text_mask"][..., None], batch["neg_text_features"],
                                               unit(B, KT, D, seed=77))
    changed["neg_image_features"] = torch.where(batch["neg_image_mask"][..., None], batch["neg_image_features"],
                                                unit(B, KI, D, seed=78))
    changed["para_neg_features"] = torch.where(batch["para_neg_mask"][..., None],
                                               batch["para_neg_features"], unit(B, 2, D, seed=81))
    other, g_other = run(cfg, changed)
    for k in base:
        torch.testing.assert_close(base[k], other[k], rtol=0, atol=1e-6)
    for k in g_base:
        torch.testing.assert_close(g_base[k], g_other[k], rtol=0, atol=1e-6)
    assert g_base["neg_text_features"][~batch["neg_text_mask"]].abs().max() == 0
    assert g_base["neg_image_features"][~batch["neg_image_mask"]].abs().max() == 0


@pytest.mark.parametrize("name", list(NEG_TERMS))
def test_masked_slot_equals_absent_slot(name):
    """A batch with the last slots masked everywhere equals the same batch without those slots."""
    cfg = NEG_TERMS[name]
    batch = make_batch()
    batch["neg_text_mask"][:, -1] = False
    batch["neg_image_mask"][:, -1] = False
    batch["neg_image_text"] = batch["neg_image_text"].clamp(max=KT - 2)
    full, _ = run(cfg, batch)
    short = dict(batch)
    for k in ("neg_text_features", "neg_text_mask", "neg_text_kind"):
        short[k] = batch[k][:, :-1]
    for k in ("neg_image_features", "neg_image_mask", "neg_image_text"):
        short[k] = batch[k][:, :-1]
    cut, _ = run(cfg, short)
    for k in full:
        torch.testing.assert_close(full[k], cut[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(NEG_TERMS))
def test_harder_negative_raises_loss(name):
    """Given one negative per anchor, when it moves closer to what it competes with, then the term grows."""
    cfg = NEG_TERMS[name]
    batch = make_batch()
    batch["neg_text_mask"] = torch.ones(B, KT, dtype=torch.bool)
    batch["neg_image_mask"] = torch.ones(B, KI, dtype=torch.bool)
    batch["neg_image_text"] = torch.tensor([[0, 1]]).repeat(B, 1)
    # Make every positive pair well aligned, so there is room for a negative to become harder.
    batch["text_features"] = F.normalize(batch["image_features"] + 0.3 * batch["text_features"], dim=-1)
    easy, _ = run(cfg, batch)
    hard = dict(batch)
    # A hard negative caption nearly equals the image; a hard negative image nearly equals the caption.
    hard["neg_text_features"] = batch["neg_text_features"].clone()
    hard["neg_text_features"][:, 0] = F.normalize(batch["image_features"] + 0.2 * batch["neg_text_features"][:, 0], -1)
    hard["neg_image_features"] = batch["neg_image_features"].clone()
    hard["neg_image_features"][:, 0] = F.normalize(batch["text_features"] + 0.2 * batch["neg_image_features"][:, 0],
                                                   -1)
    if name == "triplet":  # its anchors are the negative images: harder = their original caption nears them
        hard = dict(batch)
        hard["text_features"] = F.normalize(batch["neg_image_features"][:, 0] + 0.2 * batch["text_features"], -1)
    if name == "paraphrase":  # its anchors are the caption and its paraphrase: harder = a negative nears the caption
        hard = dict(batch, para_neg_features=batch["para_neg_features"].clone())
        hard["para_neg_features"][:, 0] = F.normalize(
            batch["text_features"] + 0.2 * batch["para_neg_features"][:, 0], -1)
    harder, _ = run(cfg, hard)
    term = next(iter(easy))
    assert harder[term] > easy[term] + 1e-3, (name, easy[term].item(), harder[term].item())


@pytest.mark.parametrize("name", list(NEG_TERMS))
def test_gradients_reach_negative_features(name):
    cfg = NEG_TERMS[name]
    _, grads = run(cfg, make_batch())
    uses_images = name in ("neg_image_columns", "triplet")
    uses_texts = name not in ("neg_image_columns", "paraphrase")
    if uses_texts:
        assert grads["neg_text_features"].abs().sum() > 0
    if name == "paraphrase":
        assert grads["para_neg_features"].abs().sum() > 0
    if uses_images:
        assert grads["neg_image_features"].abs().sum() > 0
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_no_valid_negative_gives_zero_not_nan():
    batch = make_batch()
    batch["neg_text_mask"] = torch.zeros(B, KT, dtype=torch.bool)
    batch["neg_image_mask"] = torch.zeros(B, KI, dtype=torch.bool)
    out, grads = run(LossConfig(contrastive=0.0, triplet=1.0, hard_negative=1.0, rank=1.0), batch)
    assert all(v.item() == 0 for v in out.values())
    assert all(torch.isfinite(g).all() and g.abs().sum() == 0 for g in grads.values())


def test_all_terms_together_are_finite_under_bf16_features():
    batch = {k: (v.bfloat16() if k.endswith("_features") else v) for k, v in make_batch().items()}
    out, grads = run(ALL_TERMS, batch)
    assert set(out) == {"contrastive_loss", "triplet_loss", "hard_negative_loss", "rank_loss", "paraphrase_loss"}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())


def test_terms_stay_float32_under_bf16_autocast():
    """Under autocast (DDP's bf16) every term and gradient equals the float32 computation: the similarities are not
    rounded to bf16 by autocast's matrix products."""
    batch = make_batch()
    ref, ref_grads = run(ALL_TERMS, batch)
    inputs = {k: (v.clone().requires_grad_(True) if k.endswith("_features") else v) for k, v in batch.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as Accelerate does: the forward under autocast, not backward
        out = HardNegativeLoss(ALL_TERMS, KIND_LIST)(**inputs)
    grads = dict(zip(ref_grads, torch.autograd.grad(sum(out.values()), [inputs[k] for k in ref_grads]), strict=True))
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-6, atol=1e-7, msg=k)
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-5, atol=1e-7, msg=k)


def test_distill_term_and_config_errors():
    batch = make_batch()
    out, _ = run(LossConfig(contrastive=0.0, distill=0.5), dict(
        batch, teacher_image_features=batch["image_features"], teacher_text_features=batch["text_features"] * 0))
    torch.testing.assert_close(out["distill_loss"], 0.5 * (batch["text_features"] ** 2).mean())
    with pytest.raises(ValueError, match="teacher"):
        run(LossConfig(distill=0.5), batch)
    with pytest.raises(ValueError, match="unknown kinds"):
        HardNegativeLoss(LossConfig(kind_weights={"replace_rell": 2.0}), KIND_LIST)
    with pytest.raises(ValueError, match="label_smoothing"):
        LossConfig(label_smoothing=1.5)
    for bad in (0.0, -50.0):  # a scale <= 0 would flip or flatten the term's softmax
        with pytest.raises(ValueError, match="paraphrase_scale"):
            LossConfig(paraphrase=0.5, paraphrase_scale=bad)
    assert LossConfig(paraphrase=0.5, paraphrase_scale=50.0).paraphrase_scale == 50.0


# ---------------------------------------------------------------------------------------------------------------------
# task, optimizer, config


class CountingClip(torch.nn.Module):
    """Wraps a CLIP and counts tower calls, to check the task's one-forward contract."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.calls = {"image": 0, "text": 0}

    @property
    def logit_scale(self):
        return self.inner.logit_scale

    def forward(self, image, text):
        self.calls["image"] += 1
        self.calls["text"] += 1
        return self.inner(image=image, text=text)


def test_task_encodes_each_tower_once_and_matches_the_loss(tiny_bundle):
    from clipneg.train.task import ContrastiveTask

    model = tiny_bundle.model
    g = torch.Generator().manual_seed(0)
    b, kt, ki = 4, 2, 1
    batch = {
        "image": torch.randn(b, 3, 32, 32, generator=g),
        "text": tiny_bundle.tokenizer([f"a red cube {i}" for i in range(b)]),
        "neg_text": tiny_bundle.tokenizer([f"a blue ball {i}" for i in range(b * kt)]).view(b, kt, -1),
        "neg_text_mask": torch.ones(b, kt, dtype=torch.bool),
        "neg_text_kind": torch.zeros(b, kt, dtype=torch.long),
        "neg_image": torch.randn(b, ki, 3, 32, 32, generator=g),
        "neg_image_mask": torch.ones(b, ki, dtype=torch.bool),
        "neg_image_text": torch.zeros(b, ki, dtype=torch.long),
        "para_text": tiny_bundle.tokenizer([f"a cube {i} that is red" for i in range(b)]),
        "para_mask": torch.tensor([True, False, True, True]),
        "para_neg": tiny_bundle.tokenizer([f"a cube {i} that is blue" for i in range(b * 2)]).view(b, 2, -1),
        "para_neg_mask": torch.tensor([[True, True], [True, True], [True, False], [True, True]]),
    }
    counting = CountingClip(model)
    task = ContrastiveTask(counting, ALL_TERMS, KIND_LIST).eval()
    out = task(batch)
    assert counting.calls == {"image": 1, "text": 1}
    with torch.no_grad():
        ref = HardNegativeLoss(ALL_TERMS, KIND_LIST)(
            image_features=model.encode_image(batch["image"], normalize=True),
            text_features=model.encode_text(batch["text"], normalize=True),
            logit_scale=model.logit_scale.exp(),
            neg_text_features=model.encode_text(batch["neg_text"].flatten(0, 1), normalize=True).view(b, kt, -1),
            neg_text_mask=batch["neg_text_mask"], neg_text_kind=batch["neg_text_kind"],
            neg_image_features=model.encode_image(batch["neg_image"].flatten(0, 1), normalize=True).view(b, ki, -1),
            neg_image_mask=batch["neg_image_mask"], neg_image_text=batch["neg_image_text"],
            para_text_features=model.encode_text(batch["para_text"], normalize=True),
            para_neg_features=model.encode_text(batch["para_neg"].flatten(0, 1), normalize=True).view(b, 2, -1),
            para_mask=batch["para_mask"], para_neg_mask=batch["para_neg_mask"])
    assert "paraphrase_loss" in ref
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-5)


def test_scalar_parameters_promoted_for_fsdp2_compute_the_same_losses(tiny_bundle):
    """FSDP2 cannot shard 0-d parameters; train.py gives them shape [1] under FSDP. Every loss term and its gradient
    must be unchanged by that, the EMA teacher's distillation included."""
    import copy

    from clipneg.train.backends import promote_scalar_parameters
    from clipneg.train.task import ContrastiveTask

    g = torch.Generator().manual_seed(1)
    b, kt = 4, 2
    batch = {"image": torch.randn(b, 3, 32, 32, generator=g),
             "text": tiny_bundle.tokenizer([f"a red cube {i}" for i in range(b)]),
             "neg_text": tiny_bundle.tokenizer([f"a blue ball {i}" for i in range(b * kt)]).view(b, kt, -1),
             "neg_text_mask": torch.ones(b, kt, dtype=torch.bool),
             "neg_text_kind": torch.zeros(b, kt, dtype=torch.long),
             # ALL_TERMS has the triplet term and negative-image columns: they need negative images
             "neg_image": torch.randn(b, 1, 3, 32, 32, generator=g),
             "neg_image_mask": torch.ones(b, 1, dtype=torch.bool),
             "neg_image_text": torch.zeros(b, 1, dtype=torch.long),
             "para_text": tiny_bundle.tokenizer([f"a cube {i} that is red" for i in range(b)]),
             "para_mask": torch.ones(b, dtype=torch.bool),
             "para_neg": tiny_bundle.tokenizer([f"a cube {i} that is blue" for i in range(b)]).view(b, 1, -1),
             "para_neg_mask": torch.ones(b, 1, dtype=torch.bool)}
    terms = dataclasses.replace(ALL_TERMS, distill=0.5)
    plain = ContrastiveTask(copy.deepcopy(tiny_bundle.model), terms, KIND_LIST).eval()
    promoted = copy.deepcopy(plain)
    assert promote_scalar_parameters(promoted) == ["model.logit_scale", "teacher.logit_scale"]
    assert promoted.model.logit_scale.shape == (1,) and promoted.teacher.logit_scale.requires_grad is False
    out_a, out_b = plain(batch), promoted(batch)
    assert out_a.keys() == out_b.keys() and {"distill_loss", "triplet_loss"} <= out_a.keys()
    for k in out_a:
        torch.testing.assert_close(out_b[k], out_a[k], rtol=0, atol=0)
    sum(out_a.values()).backward()
    sum(out_b.values()).backward()
    torch.testing.assert_close(promoted.model.logit_scale.grad, plain.model.logit_scale.grad.reshape(1))


def test_lr_schedule_is_warmup_then_cosine():
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=4)
    assert [lr_at(s, cfg, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(9, cfg, 14) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(14, cfg, 14) == pytest.approx(0.1) and lr_at(100, cfg, 14) == pytest.approx(0.1)
    assert lr_at(10, OptimConfig(lr=2.0, warmup_steps=0, schedule="constant"), 14) == 2.0


def test_no_weight_decay_on_gains_biases_and_logit_scale(tiny_bundle):
    model = tiny_bundle.model
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in nd and any(n.endswith(".bias") for n in nd) and any("ln_" in n for n in nd)
    assert all(p.ndim >= 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_config_layers_defaults_yaml_and_flags(tmp_path):
    yml = tmp_path / "r.yaml"
    yml.write_text("optim: {lr: 1.0e-5, warmup_steps: 7}\nloss: {kind_weights: {replace_rel: 3}}\n"
                   "data: {kind_schedule: [{until_step: 10, weights: {replace_rel: 1}}]}\n")
    cfg, plain = parse_args(["--config", str(yml), "--optim.lr", "2e-5", "--loss.kind_weights.swap_att", "0.5",
                             "--run.name=x", "--resume"])
    assert cfg.optim.lr == 2e-5 and cfg.optim.warmup_steps == 7 and cfg.optim.weight_decay == 0.1
    assert cfg.loss.kind_weights == {"replace_rel": 3.0, "swap_att": 0.5}
    assert cfg.data.kind_schedule[0].until_step == 10 and cfg.run.resume == "latest" and cfg.run.name == "x"
    # The resolved config round-trips through YAML.
    again, _ = parse_args(["--config", str(_dump(tmp_path, plain))])
    assert again == cfg
    assert parse_args([])[0] == TrainConfig()
    with pytest.raises(ConfigError, match="did you mean optim.lr"):
        parse_args(["--optim.lrr", "1"])
    with pytest.raises(ConfigError, match="integer"):
        parse_args(["--run.steps", "1.5"])
    with pytest.raises(ConfigError, match="mixed_precision"):
        parse_args(["--run.mixed_precision", "fp8"])
    assert to_dict(cfg)["optim"]["betas"] == [0.9, 0.98]
    with pytest.raises(ConfigError, match="needs data.paraphrases true"):
        parse_args(["--loss.paraphrase", "1"])
    with pytest.raises(ConfigError, match="needs data.k_para_neg > 0"):
        parse_args(["--loss.paraphrase", "1", "--data.paraphrases", "true", "--data.k_para_neg", "0"])


def _dump(tmp_path, plain):
    import yaml

    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(plain))
    return path


def test_train_help_prints_usage_and_exits_zero(capsys):
    from clipneg.train.config import parse_args

    with pytest.raises(SystemExit) as stop:
        parse_args(["--help"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("usage: train.py --config FILE")
