"""Blind scorers, cross-validation hygiene, adversarial refinement and the BiasRefiner stage, on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
from clipneg.generators.bias import (
    BiasConfig,
    BiasRefiner,
    LengthScorer,
    NgramLM,
    NgramScorer,
    PairwiseScorer,
    RefineConfig,
    assign_folds,
    balance,
    balance_by_kind,
    blind_accuracy,
    blind_report,
    cells,
    cross_val_gaps,
    format_table,
)

from clipneg.schema import NegImage, NegText, Sample

COLOURS = ["red", "blue", "green", "white", "black", "yellow"]
THINGS = ["dog", "cat", "car", "bus", "cup", "ball", "tree", "kite"]
PLACES = ["on a table", "in a park", "near a wall", "on the grass", "in a room"]


def captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"a {rng.choice(COLOURS)} {rng.choice(THINGS)} {rng.choice(PLACES)} number {i}" for i in range(n)]


def longer_pairs(n: int, share_longer: float, seed: int = 0) -> list[tuple[str, str]]:
    """Negatives that are longer than their positive for ``share_longer`` of the pairs, shorter otherwise."""
    rng = np.random.default_rng(seed)
    out = []
    for c in captions(n, seed):
        if rng.random() < share_longer:
            out.append((c, c + " " + " ".join(["and", "a", "hat"][: rng.integers(1, 4)])))
        else:
            out.append((c + " with a hat", c))
    return out


def test_ngram_lm_leave_one_out_equals_a_model_without_the_text() -> None:
    corpus = captions(50)
    full, without = NgramLM(3).fit(corpus), NgramLM(3).fit(corpus[1:])
    # exact but for the vocabulary size of the add-k unigrams (the text's own new words stay in it)
    np.testing.assert_allclose(full.logprobs(corpus[0], loo=True), without.logprobs(corpus[0], loo=False), rtol=1e-3)
    assert full.logprobs(corpus[0], loo=False).mean() > full.logprobs(corpus[0], loo=True).mean()
    char = NgramLM(4, "char").fit(corpus)
    assert char.logprobs("a red dog on a table").mean() > char.logprobs("zq xv kkj wpp").mean()


def test_ngram_scorer_prefers_typical_text() -> None:
    s = NgramScorer().fit([(c, "") for c in captions(200)])
    typical, odd = s.score(["a red dog on a table number 3", "a table red on dog number a 3"])
    assert typical > odd


class SpyScorer:
    """Remembers what it was fitted on; scores every text 0."""

    name = "spy"
    fits: list[set[str]] = []

    def fit(self, pairs, corpus=()):
        SpyScorer.fits.append({t for p in pairs for t in p} | set(corpus))
        self.seen = SpyScorer.fits[-1]
        return self

    def score(self, texts):
        assert not set(texts) & self.seen, "scored a text it was fitted on"
        return np.zeros(len(texts))


def test_cross_validation_never_trains_on_the_fold_it_scores() -> None:
    pairs = [(f"positive {i % 40}", f"negative {i}") for i in range(120)]  # 3 pairs per positive
    kinds = ["replace_obj", "add_att"] * 60
    SpyScorer.fits = []
    gaps = cross_val_gaps(SpyScorer, pairs, kinds=kinds, folds=4, seed=3)
    assert len(SpyScorer.fits) == 4 * 2 and (gaps == 0).all()
    folds = assign_folds(pairs, 4, 3)
    for i in range(0, 120, 40):  # the same positive always lands in one fold
        assert len({folds[j] for j in range(len(pairs)) if pairs[j][0] == pairs[i][0]}) == 1
    assert len(set(folds.tolist())) == 4
    np.testing.assert_array_equal(folds, assign_folds(pairs, 4, 3))  # stable


def test_pairwise_classifier_finds_a_length_cue_and_can_leave_it_out() -> None:
    pairs = longer_pairs(300, share_longer=1.0)
    kinds = ["add_obj"] * len(pairs)
    with_len = cross_val_gaps(lambda: PairwiseScorer(use_length=True), pairs, kinds=kinds, folds=3)
    length = cross_val_gaps(LengthScorer, pairs, kinds=kinds, folds=3)
    assert blind_accuracy(length) == 1.0
    assert blind_accuracy(with_len) > 0.95
    assert "n_words" not in PairwiseScorer(use_length=False).feature_names
    assert "n_words" in PairwiseScorer(use_length=True).feature_names


def test_balance_makes_the_balanced_scorer_chance_with_equal_counts_per_bin_and_sign() -> None:
    pairs = longer_pairs(600, share_longer=0.8, seed=1)
    gaps = LengthScorer().score([p for p, _ in pairs]) - LengthScorer().score([n for _, n in pairs])
    assert blind_accuracy(gaps) > 0.75
    keep = balance(gaps, RefineConfig(bins=3, seed=0))
    assert 0 < len(keep) < len(pairs)
    assert blind_accuracy(gaps[keep]) == pytest.approx(0.5)
    kept_cells = [cells(gaps, 3)[i] for i in keep]
    for c in set(kept_cells):
        mirror = tuple((-s, b) for s, b in c)
        assert kept_cells.count(c) == kept_cells.count(mirror)


def test_balance_two_scorers_and_ties_and_determinism() -> None:
    rng = np.random.default_rng(0)
    g = np.stack([rng.normal(0.5, 1, 500), rng.normal(0.3, 1, 500)], axis=1)
    g[:10] = 0.0  # ties on both: kept whole
    keep = balance(g, RefineConfig(bins=4, seed=7))
    assert set(range(10)) <= set(keep.tolist())
    for j in range(2):
        assert (g[keep, j] > 0).sum() == (g[keep, j] < 0).sum()
    np.testing.assert_array_equal(keep, balance(g, RefineConfig(bins=4, seed=7)))
    assert not np.array_equal(keep, balance(g, RefineConfig(bins=4, seed=8)))
    with pytest.raises(ValueError, match="NaN"):
        balance(np.array([np.nan, 1.0]))


def test_balance_by_kind_balances_within_each_kind() -> None:
    gaps = np.array([1, 1, 1, -1, 2, -2, -2, -2], dtype=float)
    kinds = ["a"] * 4 + ["b"] * 4
    keep = balance_by_kind(gaps, kinds, RefineConfig(bins=1))
    assert sorted(kinds[i] for i in keep) == ["a", "a", "b", "b"]


def test_balance_by_kind_balances_each_kind_on_its_own_columns() -> None:
    # column 0 is balanced already in both kinds; column 1 leans positive. Kind "a" is balanced on column 0 only
    # and keeps everything; kind "b" also on column 1 and keeps one pair per sign of it.
    gaps = np.array([[1, 1], [-1, 1], [1, 1], [-1, -1]] * 2, dtype=float)
    kinds = ["a"] * 4 + ["b"] * 4
    keep = balance_by_kind(gaps, kinds, RefineConfig(bins=1), columns={"a": [0], "b": [0, 1]})
    assert [i for i in keep if kinds[i] == "a"] == [0, 1, 2, 3]
    kept_b = [i for i in keep if kinds[i] == "b"]
    assert len(kept_b) == 2 and sorted(gaps[kept_b, 1].tolist()) == [-1.0, 1.0] and 7 in kept_b


def test_kinds_not_longer_by_construction_are_balanced_on_the_classifier_with_length() -> None:
    cfg = BiasConfig()
    assert cfg.balanced_on("add_obj") == ("lm_word", "pairwise_nolen")
    assert cfg.balanced_on("replace_att") == ("lm_word", "pairwise_nolen", "pairwise")
    # negatives longer 85% of the time: a replace kind is balanced on the classifier with length as well, which
    # is then no judge of it (50% by construction), while it stays a judge of the add kind
    pairs = longer_pairs(240, share_longer=0.85, seed=5)
    kinds = ["add_obj"] * 120 + ["replace_att"] * 120
    cfg = BiasConfig(scorers=("lm_word", "length", "pairwise"), balance_on=("length",), refit=("pairwise",),
                     folds=3, refine=RefineConfig(bins=1))
    rep = blind_report(pairs, kinds, cfg)
    add, rep_att = rep["kinds"]["add_obj"], rep["kinds"]["replace_att"]
    assert rep_att["balanced_on"] == ["length", "pairwise"] and add["balanced_on"] == ["length"]
    assert rep_att["kept"] >= 10 and add["kept"] >= 10
    assert rep_att["after"]["pairwise"] <= 0.5 + 1e-9 and "pairwise" not in rep_att["judges_after"]
    assert "pairwise" in add["judges_after"]  # not balanced on for the add kind: a judge of it
    assert "pairwise* (not add_obj, add_att)" in format_table(rep)


def test_blind_report_before_after_and_judges() -> None:
    pairs = longer_pairs(240, share_longer=0.85, seed=2)
    kinds = ["add_obj"] * 120 + ["swap_att"] * 120
    cfg = BiasConfig(scorers=("lm_word", "length", "pairwise_nolen"), balance_on=("length",),
                     refit=("pairwise_nolen",), folds=3)
    rep = blind_report(pairs, kinds, cfg)
    r = rep["kinds"]["add_obj"]
    assert r["n"] == 120 and 0 < r["kept"] < 120 and r["keep_share"] == r["kept"] / 120
    assert r["before"]["length"] > 0.7 and r["after"]["length"] == pytest.approx(0.5)
    assert "length" not in r["judges_after"] and "pairwise_nolen (refit)" in r["judges_after"]
    assert r["length_gap"]["before"] > 0 and abs(r["length_gap"]["after"]) < r["length_gap"]["before"]
    assert r["same_bag"]["before"] == 0.0
    assert rep["kept"] == len(rep["keep"])
    table = format_table(rep, "synthetic")
    assert "| add_obj | 120 |" in table and "length*" in table
    assert blind_report(pairs, kinds, cfg)["keep"] == rep["keep"]  # deterministic


def test_bias_refiner_two_passes_keeps_the_balanced_subset() -> None:
    pairs = longer_pairs(150, share_longer=0.8, seed=4)
    samples = []
    for i in range(0, 150, 3):
        chunk = pairs[i:i + 3]
        s = Sample(key=f"s{i}", image=b"x", image_ext="png", caption=chunk[0][0],
                   neg_texts=[NegText(n, "add_obj", "test", 0) for _, n in chunk],
                   neg_images=[NegImage(b"i", "png", "add_obj", "test", 0, text=2)])
        samples.append(s)
    refiner = BiasRefiner(BiasConfig(scorers=("length",), balance_on=("length",), refit=(), folds=3))
    with pytest.raises(RuntimeError, match="fit"):
        refiner(samples)
    report = refiner.fit(samples)
    out = refiner(samples)
    kept = sum(len(s.neg_texts) for s in out)
    assert kept == report["kept"] and 0 < kept < 150
    assert refiner.stats.rejected[("add_obj", "bias_refiner", "blind-scorer bias")] == 150 - kept
    for s in out:
        s.validate()  # image indices still valid
        assert all(im.text is None or im.text < len(s.neg_texts) for im in s.neg_images)
    assert refiner.manifest()["fit"]["kept"] == kept
