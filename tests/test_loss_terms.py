"""The loss terms one module at a time, the dispatcher's contract (named inputs, no silent zero terms) and the configs
that would train a term on inputs the loader never fills.

Given / When / Then in each test's docstring where the setup is not obvious.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import clipneg.train.losses as losses_pkg
from clipneg.schema import KIND_LIST
from clipneg.train.config import ConfigError, LossConfig, parse_args
from clipneg.train.losses import (
    INPUT_NAMES,
    ContrastiveLoss,
    DistillLoss,
    HardNegativeLoss,
    ParaphraseLoss,
    PerSampleLoss,
    RankLoss,
    TripletLoss,
)

from .test_losses import ALL_TERMS, KT, SCALE, B, make_batch, run, unit

ROOT = Path(__file__).resolve().parents[1]
D = 16


# ---------------------------------------------------------------------------------------------------------------------
# each term module against a hand-written formula, from embeddings only


def test_contrastive_module_is_clip_with_weighted_extra_columns():
    """Given weights 2 / 1 / 0 on negative columns, the module equals CE over explicit columns where weight 2 is the
    column twice and weight 0 is no column, for images over captions and captions over images."""
    img, txt = unit(4, D, seed=1), unit(4, D, seed=2)
    tneg, ineg = unit(4, 2, D, seed=3), unit(4, 1, D, seed=4)
    tw = torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    iw = torch.tensor([[1.0], [0.0], [1.0], [1.0]])
    got = ContrastiveLoss()(img, txt, SCALE, tneg, tw, ineg, iw)
    tcols = [txt] + [tneg[b, k][None] for b in range(4) for k in range(2) for _ in range(int(tw[b, k]))]
    icols = [img] + [ineg[b, 0][None] for b in range(4) if iw[b, 0] > 0]
    labels = torch.arange(4)
    expected = (F.cross_entropy(SCALE * img @ torch.cat(tcols).T, labels)
                + F.cross_entropy(SCALE * txt @ torch.cat(icols).T, labels)) / 2
    torch.testing.assert_close(got, expected)
    plain = ContrastiveLoss()(img, txt, SCALE)
    torch.testing.assert_close(plain, (F.cross_entropy(SCALE * img @ txt.T, labels)
                                       + F.cross_entropy(SCALE * txt @ img.T, labels)) / 2)


def test_per_sample_module_follows_the_fsc_formula():
    """Per anchor with n valid negatives: -sum_c y_c (1 - p_c)^gamma log p_c over [positive, valid negatives], with
    y_pos = 1 - eps + eps/(1+n), y_neg = eps/(1+n); anchors without a valid negative leave the mean."""
    anchor, pos, negs = unit(5, D, seed=5), unit(5, D, seed=6), unit(5, 3, D, seed=7)
    w = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    eps, gamma = 0.1, 2.0
    got = PerSampleLoss(label_smoothing=eps, focal_gamma=gamma)(anchor, pos, SCALE, negs, w)
    per = []
    for i in range(5):
        valid = negs[i][w[i] > 0]
        n = len(valid)
        if n == 0:
            continue
        logp = F.log_softmax(SCALE * torch.cat([(anchor[i] * pos[i]).sum()[None], valid @ anchor[i]]), 0)
        y = torch.tensor([1 - eps + eps / (1 + n)] + [eps / (1 + n)] * n)
        per.append(-(y * (1 - logp.exp()) ** gamma * logp).sum())
    torch.testing.assert_close(got, torch.stack(per).mean())
    plain = PerSampleLoss()(anchor[2:3], pos[2:3], SCALE, negs[2:3], w[2:3])
    logits = SCALE * torch.cat([(anchor[2] * pos[2]).sum()[None], negs[2] @ anchor[2]])
    torch.testing.assert_close(plain, F.cross_entropy(logits[None], torch.zeros(1, dtype=torch.long)))


def test_rank_module_hinges_on_a_detached_threshold_per_slot_without_kinds():
    """Without kind ids the adaptive threshold is per slot: tau_k = mean over valid rows of s(I,T) - s(I,T'_k),
    clamped to [0, max]; the loss is the mean over images with a valid negative of mean_k w_k relu(tau_k + s(I,T'_k)
    - s(I,T)), and tau passes no gradient."""
    img = unit(4, D, seed=8).requires_grad_()
    txt, negs = unit(4, D, seed=9), unit(4, 2, D, seed=10)
    w = torch.tensor([[1.0, 0.5], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    got = RankLoss(max_threshold=0.3)(img, txt, SCALE, negs, w)
    pos = SCALE * (img * txt).sum(-1)
    sims = SCALE * torch.einsum("bd,bkd->bk", img, negs)
    valid = w > 0
    tau = torch.stack([(pos.detach() - sims.detach()[:, k])[valid[:, k]].mean().clamp(0, 0.3) for k in range(2)])
    hinge = F.relu(tau + sims - pos[:, None]) * w
    n = valid.sum(1)
    expected = (hinge.sum(1) / n.clamp_min(1))[n > 0].mean()
    torch.testing.assert_close(got, expected)
    g_got, = torch.autograd.grad(got, img)
    g_exp, = torch.autograd.grad(expected, img)
    torch.testing.assert_close(g_got, g_exp)


def test_triplet_module_is_negclip_on_negative_image_caption_pairs():
    """A pair is (negative image, the negative caption it depicts); only pairs with a present image and a caption
    slot of weight > 0 count, as anchors and as columns; the original captions are extra image-to-text columns."""
    txt, tneg, ineg = unit(3, D, seed=11), unit(3, 2, D, seed=12), unit(3, 2, D, seed=13)
    tw = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    imask = torch.tensor([[True, True], [True, True], [False, True]])
    depicts = torch.tensor([[1, -1], [1, 0], [0, 0]])
    got = TripletLoss()(txt, SCALE, tneg, tw, ineg, imask, depicts)
    pairs = [(0, 0), (1, 1), (2, 1)]  # (0, 1) depicts none, (1, 0) depicts a weight-0 slot, (2, 0) is absent
    ip = torch.stack([ineg[b, j] for b, j in pairs])
    tp = torch.stack([tneg[b, depicts[b, j]] for b, j in pairs])
    labels = torch.arange(3)
    expected = (F.cross_entropy(SCALE * ip @ torch.cat([tp, txt]).T, labels)
                + F.cross_entropy(SCALE * tp @ ip.T, labels)) / 2
    torch.testing.assert_close(got, expected)


def test_distill_and_paraphrase_modules():
    img, txt, t_img, t_txt = (unit(4, D, seed=s) for s in (14, 15, 16, 17))
    torch.testing.assert_close(DistillLoss()(img, txt, t_img, t_txt),
                               ((img - t_img) ** 2).mean() + ((txt - t_txt) ** 2).mean())
    para, negs = unit(4, D, seed=18), unit(4, 2, D, seed=19)
    pmask = torch.tensor([True, False, True, True])
    nmask = torch.tensor([[True, True], [True, True], [False, True], [False, False]])
    got = ParaphraseLoss(PerSampleLoss(), fixed_scale=30.0)(txt, para, pmask, negs, nmask, SCALE)
    per = []
    for i in (0, 2):  # 1 has no paraphrase, 3 no valid negative
        for a, p in ((txt[i], para[i]), (para[i], txt[i])):
            logits = 30.0 * torch.cat([(a * p).sum()[None], negs[i][nmask[i]] @ a])
            per.append(F.cross_entropy(logits[None], torch.zeros(1, dtype=torch.long)))
    torch.testing.assert_close(got, (torch.stack(per[0::2]).mean() + torch.stack(per[1::2]).mean()) / 2)


def test_dispatcher_is_the_weighted_sum_of_the_term_modules_bit_for_bit():
    """Given every term configured, each output equals weight * its module called on the same float32 inputs,
    exactly (the dispatcher adds nothing but the weight)."""
    batch = make_batch()
    cfg = dataclasses.replace(ALL_TERMS, distill=0.25, kind_weights={"replace_rel": 2.0, "swap_att": 0.0})
    batch["teacher_image_features"], batch["teacher_text_features"] = batch["text_features"], batch["image_features"]
    loss = HardNegativeLoss(cfg, KIND_LIST)
    out = loss(**batch)
    assert list(out) == ["contrastive_loss", "triplet_loss", "hard_negative_loss", "rank_loss", "distill_loss",
                         "paraphrase_loss"]
    table = torch.tensor([cfg.kind_weights.get(k, 1.0) for k in KIND_LIST] + [1.0])
    kind = batch["neg_text_kind"]
    tw = batch["neg_text_mask"].float() * table[torch.where(kind < 0, len(KIND_LIST), kind)]
    depicted = torch.gather(kind, 1, batch["neg_image_text"].clamp_min(0))
    iw = batch["neg_image_mask"].float() * torch.where(batch["neg_image_text"] < 0, 1.0,
                                                       table[torch.where(depicted < 0, len(KIND_LIST), depicted)])
    img, txt, tneg, ineg = (batch[k] for k in ("image_features", "text_features", "neg_text_features",
                                               "neg_image_features"))
    per_sample = PerSampleLoss(cfg.label_smoothing, cfg.focal_gamma)
    expected = {
        "contrastive_loss": cfg.contrastive * ContrastiveLoss()(img, txt, SCALE, tneg, tw, ineg, iw),
        "triplet_loss": cfg.triplet * TripletLoss()(txt, SCALE, tneg, tw, ineg, batch["neg_image_mask"],
                                                    batch["neg_image_text"]),
        "hard_negative_loss": cfg.hard_negative * per_sample(img, txt, SCALE, tneg, tw),
        "rank_loss": cfg.rank * RankLoss(cfg.rank_max_threshold, len(KIND_LIST))(img, txt, SCALE, tneg, tw, kind),
        "distill_loss": cfg.distill * DistillLoss()(img, txt, txt, img),
        "paraphrase_loss": cfg.paraphrase * ParaphraseLoss(per_sample)(
            txt, batch["para_text_features"], batch["para_mask"], batch["para_neg_features"], batch["para_neg_mask"],
            SCALE),
    }
    for k, v in expected.items():
        assert torch.equal(out[k], v), k


def test_values_and_gradients_are_those_of_the_implementation_before_the_split():
    """Pinned: every term and two checksums of every gradient, as the single-file losses.py (before the split into
    one module per term and the para_* input names) computed them on this batch. Bitwise equality was checked
    when the split was made; here a relative 1e-6 (1e-5 for gradient sums) allows other CPUs' kernels."""
    batch = make_batch()
    cfg = dataclasses.replace(ALL_TERMS, distill=0.25, kind_weights={"replace_rel": 2.0, "swap_att": 0.0})
    batch["teacher_image_features"] = batch["text_features"].roll(1, 0)
    batch["teacher_text_features"] = batch["image_features"].roll(1, 0)
    out, grads = run(cfg, batch)
    terms = {"contrastive_loss": 5.897586822509766, "triplet_loss": 8.95987319946289,
             "hard_negative_loss": 1.218220829963684, "rank_loss": 0.429735004901886,
             "distill_loss": 0.059012070298194885, "paraphrase_loss": 0.4414432942867279}
    sums = {"image_features": (54.74258804321289, -8.448175430297852),
            "text_features": (60.51106643676758, -0.7514837980270386),
            "neg_text_features": (78.15669250488281, 1.5519075393676758),
            "neg_image_features": (70.13871765136719, 7.17729377746582),
            "para_text_features": (14.392513275146484, -1.4006068706512451),
            "para_neg_features": (11.167459487915039, -2.4397928714752197)}
    assert list(out) == list(terms)
    for k, v in terms.items():
        assert out[k].item() == pytest.approx(v, rel=1e-6), k
    for k, (abs_sum, wave_sum) in sums.items():
        g = grads[k]
        assert g.abs().sum().item() == pytest.approx(abs_sum, rel=1e-5), k
        assert (g * torch.arange(g.numel()).view_as(g).sin()).sum().item() == pytest.approx(wave_sum, rel=1e-5), k


# ---------------------------------------------------------------------------------------------------------------------
# named inputs


def test_input_table_documents_exactly_the_accepted_names():
    documented = re.findall(r"^\| ``(\w+)`` +\| (?:``\w+``|\(the model\)|= name)", losses_pkg.__doc__, re.M)
    assert tuple(documented) == INPUT_NAMES


@pytest.mark.parametrize(("wrong", "suggestion"), [("paraphrase_features", "para_text_features"),
                                                   ("neg_txt_mask", "neg_text_mask"),
                                                   ("logit_bias", None)])
def test_unknown_input_is_an_error_naming_it_and_the_known_ones(wrong, suggestion):
    """Given a misspelt or foreign input (open_clip's SigLIP ``logit_bias``, the old ``paraphrase_features``), when
    the loss is called, then it refuses with the name, a suggestion where one is close, and the known names; it is
    not silently ignored."""
    batch = make_batch()
    with pytest.raises(TypeError, match=re.escape(wrong)) as err:
        HardNegativeLoss(ALL_TERMS, KIND_LIST)(**batch, **{wrong: batch["text_features"]})
    msg = str(err.value)
    assert all(name in msg for name in INPUT_NAMES)
    if suggestion:
        assert f"{wrong}: did you mean {suggestion}?" in msg


MISSING = {  # config, inputs removed or emptied, the names the error must give
    "neg_text_columns": (LossConfig(neg_text_columns=True), ("neg_text_features",), "neg_text_features"),
    "neg_image_columns": (LossConfig(neg_image_columns=True), ("neg_image_features",), "neg_image_features"),
    "triplet_no_pairs": (LossConfig(contrastive=0.0, triplet=1.0), ("neg_image_text",), "neg_image_text"),
    "triplet_no_images": (LossConfig(contrastive=0.0, triplet=1.0), ("neg_image_features", "neg_image_mask",
                                                                      "neg_image_text"), "neg_image_features"),
    "hard_negative": (LossConfig(contrastive=0.0, hard_negative=1.0), ("neg_text_features",), "neg_text_features"),
    "hard_negative_k0": (LossConfig(contrastive=0.0, hard_negative=1.0), "k=0", "neg_text_features"),
    "rank": (LossConfig(contrastive=0.0, rank=0.2), ("neg_text_features", "neg_text_mask", "neg_text_kind"),
             "neg_text_features"),
    "rank_k0": (LossConfig(contrastive=0.0, rank=0.2), "k=0", "neg_text_features"),
    "distill": (LossConfig(distill=0.1), (), "teacher_image_features, teacher_text_features"),
    "paraphrase": (LossConfig(contrastive=0.0, paraphrase=1.0), ("para_neg_mask",), "para_neg_mask"),
    "imc": (LossConfig(contrastive=0.0, imc=0.2), ("neg_text_features",), "neg_text_features"),
    "imc_k0": (LossConfig(contrastive=0.0, imc=0.2), "k=0", "neg_text_features"),
}


@pytest.mark.parametrize("name", list(MISSING))
def test_configured_term_without_its_inputs_raises(name):
    """Given a term whose weight is > 0 and a call without its inputs (left out, or K = 0 negative slots), when the
    loss runs, then it raises naming the term and the missing inputs, instead of returning a zero term."""
    cfg, drop, missing = MISSING[name]
    batch = make_batch()
    if drop == "k=0":
        batch.update(neg_text_features=batch["neg_text_features"][:, :0], neg_text_mask=batch["neg_text_mask"][:, :0],
                     neg_text_kind=batch["neg_text_kind"][:, :0])
    else:
        batch = {k: v for k, v in batch.items() if k not in drop}
    with pytest.raises(ValueError, match=re.escape(f"needs {missing}")):
        run(cfg, batch)


def test_all_masked_negatives_are_inputs_not_missing_ones():
    """Present but all-padding negatives are a valid batch (a term of exactly 0), unlike absent ones."""
    batch = make_batch()
    batch["neg_text_mask"] = torch.zeros(B, KT, dtype=torch.bool)
    out, _ = run(LossConfig(contrastive=0.0, hard_negative=1.0, rank=1.0), batch)
    assert all(v.item() == 0 for v in out.values())


# ---------------------------------------------------------------------------------------------------------------------
# the task names the features by the rule


def test_task_passes_features_under_batch_key_plus_features(tiny_bundle):
    """Given a batch with every part, when the task runs the loss, then it passes each part's features as
    ``<batch key>_features`` with that part's masks under their batch names, split back to the right rows."""
    from clipneg.train.task import ContrastiveTask

    b, kt, ki, kp = 3, 2, 1, 2
    tok, g = tiny_bundle.tokenizer, torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(b, 3, 32, 32, generator=g), "text": tok([f"a cube {i}" for i in range(b)]),
             "neg_text": tok([f"a ball {i}" for i in range(b * kt)]).view(b, kt, -1),
             "neg_text_mask": torch.ones(b, kt, dtype=torch.bool),
             "neg_text_kind": torch.zeros(b, kt, dtype=torch.long),
             "neg_image": torch.randn(b, ki, 3, 32, 32, generator=g),
             "neg_image_mask": torch.ones(b, ki, dtype=torch.bool),
             "neg_image_text": torch.zeros(b, ki, dtype=torch.long),
             "para_text": tok([f"cube {i}, a" for i in range(b)]), "para_mask": torch.ones(b, dtype=torch.bool),
             "para_neg": tok([f"a {i} cube" for i in range(b * kp)]).view(b, kp, -1),
             "para_neg_mask": torch.ones(b, kp, dtype=torch.bool), "key": ["a", "b", "c"]}
    task = ContrastiveTask(tiny_bundle.model, dataclasses.replace(ALL_TERMS, distill=0.1), KIND_LIST).eval()
    seen = {}
    real_forward = task.loss.forward

    def spy(**kw):
        seen.update(kw)
        return real_forward(**kw)

    task.loss.forward = spy
    task(batch)
    assert set(seen) == set(INPUT_NAMES)
    model = tiny_bundle.model
    with torch.no_grad():
        for key, tower in (("image", model.encode_image), ("neg_image", model.encode_image),
                           ("text", model.encode_text), ("neg_text", model.encode_text),
                           ("para_text", model.encode_text), ("para_neg", model.encode_text)):
            x = batch[key]
            expected = tower(x.flatten(0, 1) if key in ("neg_image", "neg_text", "para_neg") else x, normalize=True)
            torch.testing.assert_close(seen[f"{key}_features"], expected.view(seen[f"{key}_features"].shape),
                                       rtol=1e-4, atol=1e-5)
    for key in ("neg_text_mask", "neg_text_kind", "neg_image_mask", "neg_image_text", "para_mask", "para_neg_mask"):
        assert seen[key] is batch[key]


def test_task_refuses_a_batch_without_the_configured_terms_inputs(tiny_bundle):
    from clipneg.train.task import ContrastiveTask

    tok = tiny_bundle.tokenizer
    batch = {"image": torch.randn(2, 3, 32, 32), "text": tok(["a", "b"]),
             "neg_text": tok(["c", "d"]).view(2, 1, -1), "neg_text_mask": torch.ones(2, 1, dtype=torch.bool)}
    task = ContrastiveTask(tiny_bundle.model, LossConfig(triplet=1.0), KIND_LIST)
    with pytest.raises(ValueError, match="triplet_loss .* needs neg_image_features, neg_image_text"):
        task(batch)


# ---------------------------------------------------------------------------------------------------------------------
# configs whose terms the loader would never feed


REJECTED = {
    "hard_negative": (["--loss.hard_negative", "0.5", "--data.k_text", "0"],
                      "loss.hard_negative > 0 needs negative captions: set data.k_text > 0 (e.g. 4) or "
                      "loss.hard_negative 0"),
    "rank": (["--loss.rank", "0.2", "--data.k_text", "0"],
             "loss.rank > 0 needs negative captions: set data.k_text > 0 (e.g. 4) or loss.rank 0"),
    "imc": (["--loss.imc", "0.2", "--data.k_text", "0"],
            "loss.imc > 0 needs negative captions: set data.k_text > 0 (e.g. 4) or loss.imc 0"),
    "triplet_text": (["--loss.triplet", "1", "--data.k_text", "0", "--data.k_image", "1"],
                     "loss.triplet > 0 needs negative captions: set data.k_text > 0 (e.g. 4) or loss.triplet 0"),
    "neg_text_columns": (["--loss.neg_text_columns", "true", "--data.k_text", "0"],
                         "loss.neg_text_columns needs negative captions: set data.k_text > 0 (e.g. 4) or "
                         "loss.neg_text_columns false"),
    "triplet_image": (["--loss.triplet", "1", "--data.k_image", "0"],
                      "loss.triplet > 0 needs negative images: set data.k_image > 0 (e.g. 1) or loss.triplet 0"),
    "neg_image_columns": (["--loss.neg_image_columns", "true", "--data.k_image", "0"],
                          "loss.neg_image_columns needs negative images: set data.k_image > 0 (e.g. 1) or "
                          "loss.neg_image_columns false"),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_config_with_a_term_the_loader_never_feeds_is_rejected_with_the_fix(name):
    argv, message = REJECTED[name]
    with pytest.raises(ConfigError) as err:
        parse_args(argv)
    assert message in str(err.value)


def test_every_problem_is_reported_at_once_and_fed_terms_pass():
    with pytest.raises(ConfigError) as err:
        parse_args(["--loss.triplet", "1", "--loss.rank", "0.2", "--data.k_text", "0", "--data.k_image", "0"])
    assert str(err.value).count("needs negative") == 3  # triplet (captions, images) and rank
    cfg, _ = parse_args(["--loss.triplet", "1", "--loss.rank", "0.2", "--loss.neg_image_columns", "true",
                         "--data.k_text", "1", "--data.k_image", "1"])
    assert cfg.loss.triplet == 1.0
    assert parse_args(["--data.k_text", "0", "--data.k_image", "0"])[0].loss == LossConfig()  # plain CLIP needs none


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_recipe_still_loads(recipe):
    cfg, _ = parse_args(["--config", str(ROOT / "configs" / recipe)])
    assert cfg.run.name == Path(recipe).stem

