"""clipneg.text: caption cleaning, NLTK tokenisation of ARO's trigram perturbations, spaCy loading."""

from __future__ import annotations

import numpy as np
import pytest

from clipneg.text import (
    NLTK_TOKENIZER,
    PERTURBATIONS,
    load_spacy,
    nltk_tokenize,
    perturb,
    perturbed_options,
    pre_caption,
    tokenizers,
    trigrams,
)

pytest.importorskip("nltk")


def test_nltk_tokenisation_like_word_tokenize_without_punkt():
    # Given captions with hyphens, double quotes, runs of spaces and clitics
    # When tokenised as ARO's trigram perturbations do (no NLTK data needed)
    # Then the Treebank rules apply: hyphenated words stay whole, quotes become `` and '', spaces vanish
    assert nltk_tokenize("A man in a t-shirt.") == ["A", "man", "in", "a", "t-shirt", "."]
    assert nltk_tokenize('A "big" dog  runs.') == ["A", "``", "big", "''", "dog", "runs", "."]
    assert nltk_tokenize("A   dog \t runs") == ["A", "dog", "runs"]
    assert nltk_tokenize("A man's hat isn't red.") == ["A", "man", "'s", "hat", "is", "n't", "red", "."]
    assert nltk_tokenize("café 😀") == ["café", "😀"]
    assert nltk_tokenize("") == []


def test_trigram_perturbations_use_nltk_tokens_of_the_raw_caption():
    text = 'A "big" man in a t-shirt  rides.'
    tagged = [(w, "NN") for w in text.split()]  # whitespace tokens: what the kinds must NOT use when text is given
    want = sorted(nltk_tokenize(text))
    for seed in range(10):
        for kind in ("shuffle_within_trigrams", "shuffle_trigrams"):
            out = perturb(tagged, kind, np.random.default_rng(seed), text).split(" ")
            assert sorted(out) == want
        out = perturb(tagged, "shuffle_trigrams", np.random.default_rng(seed), text)
        assert all(" ".join(g) in out for g in trigrams(nltk_tokenize(text)))  # trigrams move whole


def test_trigrams_like_aro():
    assert trigrams(list("abcdefgh")) == [["a", "b", "c"], ["d", "e", "f"], ["g", "h"]]
    assert trigrams([]) == []


def test_options_and_tokenizer_record():
    raw = ['A "big" dog in a t-shirt.']
    tagged = [[("A", "DT"), ('"', "``"), ("big", "JJ"), ('"', "''"), ("dog", "NN"), ("in", "IN"), ("a", "DT"),
               ("t", "NN"), ("-", "HYPH"), ("shirt", "NN"), (".", ".")]]
    (opts,) = perturbed_options(tagged, raw, seed=0)
    assert opts[0] == "a big dog in a t-shirt"
    # the trigram options hold NLTK's t-shirt, the tag options spaCy's split t - shirt
    assert "t-shirt" in opts[3].split() and "t-shirt" in opts[4].split()
    assert "shirt" in opts[1].split()
    rec = tokenizers("en_core_web_sm-3.8.0")
    assert rec["shuffle_trigrams"] == rec["shuffle_within_trigrams"] == NLTK_TOKENIZER
    assert rec["shuffle_nouns_and_adj"] == "spacy en_core_web_sm-3.8.0" and set(rec) == set(PERTURBATIONS)


def test_pre_caption():
    assert pre_caption('A "Big" dog (sitting)!  on: the mat.') == "a big dog sitting on the mat"


def test_core_does_not_import_eval_generators_or_train():
    import ast
    from pathlib import Path

    import clipneg.text

    for path in Path(clipneg.text.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in names if m.startswith(("clipneg.eval", "clipneg.generators", "clipneg.train"))]


def test_load_spacy_pipes_and_missing_model():
    pytest.importorskip("spacy")
    with pytest.raises(RuntimeError, match="spacy download en_core_web_sm"):
        load_spacy(("no_such_model_xyz",))
    try:
        nlp = load_spacy(pipes=("tok2vec", "tagger", "attribute_ruler", "parser"))
    except RuntimeError:
        pytest.skip("no spaCy English model installed")
    assert nlp.pipe_names == ["tok2vec", "tagger", "parser", "attribute_ruler"]
    with pytest.raises(RuntimeError, match="has no pipe"):
        load_spacy(pipes=("tok2vec", "no_such_pipe"))
