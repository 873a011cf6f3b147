"""ARO COCO-/Flickr30k-Order: caption cleaning, the 4 perturbations, seeding, masking, ties counted as official."""

from __future__ import annotations

import numpy as np
import pytest
from clipneg.eval.order import (
    PERTURBATIONS,
    OrderConfig,
    evaluate_order,
    perturb,
    perturbed_options,
    pre_caption,
)

from tests.test_eval_support import RED, solid, stub_scorer, write_json

TAGS = {"a": "DT", "red": "JJ", "big": "JJ", "dog": "NN", "cat": "NN", "on": "IN", "the": "DT", "mat": "NN",
        "sits": "VBZ", ".": "."}


def fake_tagger(texts):
    """Whitespace tokens with a fixed tag table (spaCy is tested separately)."""
    return [[(t, TAGS.get(t.lower(), "NN")) for t in text.replace(".", " .").split()] for text in texts]


fake_tagger.model = "fake"


def test_pre_caption_like_blip():
    assert pre_caption('A "Big" dog (sitting)!  on: the mat.') == "a big dog sitting on the mat"
    assert pre_caption(" ".join(["w"] * 40)) == " ".join(["w"] * 30)


def test_perturbations_keep_words_and_respect_tags():
    tagged = fake_tagger(["a big red dog sits on the cat mat"])[0]
    words = sorted(t for t, _ in tagged)
    rng = np.random.default_rng(0)
    for kind in PERTURBATIONS:
        assert sorted(perturb(tagged, kind, rng).split()) == words
    for seed in range(20):
        out = perturb(tagged, "shuffle_nouns_and_adj", np.random.default_rng(seed)).split()
        # nouns stay in noun slots, adjectives in adjective slots, everything else in place
        assert [out[i] for i in (0, 4, 5, 6)] == ["a", "sits", "on", "the"]
        assert set(out[1:3]) == {"big", "red"} and {out[3], out[7], out[8]} == {"dog", "cat", "mat"}
        out = perturb(tagged, "shuffle_allbut_nouns_and_adj", np.random.default_rng(seed)).split()
        assert [out[i] for i in (1, 2, 3, 7, 8)] == ["big", "red", "dog", "cat", "mat"]
        out = perturb(tagged, "shuffle_within_trigrams", np.random.default_rng(seed)).split()
        assert [set(out[i:i + 3]) for i in (0, 3, 6)] == [{"a", "big", "red"}, {"dog", "sits", "on"},
                                                          {"the", "cat", "mat"}]
        out = perturb(tagged, "shuffle_trigrams", np.random.default_rng(seed)).split()
        assert sorted(" ".join(out[i:i + 3]) for i in (0, 3, 6)) == ["a big red", "dog sits on", "the cat mat"]


def test_seeding_is_reproducible_and_seeds_differ():
    raw = ["A big red dog sits on the cat mat.", "The red cat sits on a big dog mat."] * 5
    tagged = fake_tagger(raw)
    a = perturbed_options(tagged, raw, seed=3)
    assert a == perturbed_options(tagged, raw, seed=3)
    assert a != perturbed_options(tagged, raw, seed=4)
    assert all(len(opts) == 5 and opts[0] == pre_caption(r) for opts, r in zip(a, raw, strict=True))


def make_order(tmp, captions):
    solid(tmp / "val2014" / "x.jpg", RED)
    write_json(tmp / "coco_karpathy_test.json", [{"image": "val2014/x.jpg", "caption": captions}])
    return OrderConfig("coco", str(tmp / "coco_karpathy_test.json"), str(tmp), seeds=(0, 1, 2))


def test_identical_perturbations_tie_and_count_as_correct_officially(tmp_path):
    # "dog" has one noun, no adjective: shuffling nouns/adjectives returns the caption itself (an exact tie)
    cfg = make_order(tmp_path, ["dog sits"])
    table = {"dog sits": [1.0, 0, 0], "sits dog": [0.0, 1, 0]}
    scorer, _, _ = stub_scorer(table)
    res = evaluate_order(scorer, cfg, tagger=fake_tagger)  # official: first
    assert res.metrics["mean"] == 100.0 and res.counts["seed_0"]["ties"] == 1
    assert res.details["per_seed"]["0"]["identical_to_original_pct"]["shuffle_nouns_and_adj"] == 100.0
    strict = evaluate_order(stub_scorer(table)[0], cfg, "strict", tagger=fake_tagger)
    assert strict.metrics["mean"] == 0.0
    # masking identical perturbations removes the tie; a caption whose perturbations are all identical is skipped
    masked = evaluate_order(stub_scorer(table)[0], OrderConfig(**{**cfg.__dict__, "mask_identical": True}), "strict",
                            tagger=fake_tagger)
    assert masked.protocol["mask_identical"] is True
    assert masked.counts["seed_0"]["ties"] == 0
    single = make_order(tmp_path / "s", ["dog"])
    res = evaluate_order(stub_scorer({"dog": [1.0, 0, 0]})[0], OrderConfig(**{**single.__dict__,
                                                                             "mask_identical": True}),
                         tagger=fake_tagger)
    assert res.data["skipped_all_identical"] == {0: 1, 1: 1, 2: 1}


def test_mean_and_spread_over_seeds(tmp_path):
    caps = ["a red dog", "a big cat", "the red mat"]
    cfg = make_order(tmp_path, caps)
    raw_opts = {o for s in cfg.seeds for opts in perturbed_options(fake_tagger(caps), caps, s) for o in opts}
    rng = np.random.default_rng(0)
    table = {t: rng.normal(size=3).tolist() for t in sorted(raw_opts)}
    res = evaluate_order(stub_scorer(table)[0], cfg, tagger=fake_tagger)
    per_seed = [res.metrics[f"seed_{s}"] for s in cfg.seeds]
    assert res.metrics["mean"] == pytest.approx(np.mean(per_seed))
    assert res.metrics["std"] == pytest.approx(np.std(per_seed))
    assert res.protocol["seeds"] == [0, 1, 2] and res.columns == ["mean", "std"]


def test_spacy_tagger_if_installed():
    pytest.importorskip("spacy")
    from clipneg.eval.order import load_spacy, spacy_tagger

    try:
        nlp = load_spacy()
    except RuntimeError:
        pytest.skip("no spaCy English model installed")
    (tagged,) = spacy_tagger(nlp)(["A red dog sits on the mat."])
    tags = dict(tagged)
    assert tags["dog"].startswith("NN") and tags["red"].startswith("JJ")


def test_missing_spacy_model_error_is_clear():
    from clipneg.eval.order import load_spacy

    with pytest.raises(RuntimeError, match="spacy download en_core_web_sm"):
        load_spacy(("no_such_model_xyz",))


def test_protocol_names_the_tokeniser_of_each_perturbation(tmp_path):
    cfg = make_order(tmp_path, ["a red dog"])
    caps = ["a red dog"]
    opts = {o for s in cfg.seeds for o in perturbed_options(fake_tagger(caps), caps, s)[0]}
    res = evaluate_order(stub_scorer({t: [1.0, 0, 0] for t in opts})[0], cfg, tagger=fake_tagger)
    tok = res.protocol["tokenizer"]
    assert tok["shuffle_trigrams"] == tok["shuffle_within_trigrams"] == "nltk.word_tokenize(preserve_line=True)"
    assert tok["shuffle_nouns_and_adj"] == "spacy fake"


def test_kind_names_are_the_schema_names():
    from clipneg.schema import KIND_ID

    # ARO's official names, at the ids the schema always gave the order perturbations
    assert [KIND_ID[k] for k in PERTURBATIONS] == [7, 8, 9, 10]
