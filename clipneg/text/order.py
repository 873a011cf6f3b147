"""ARO's four word-order perturbations (Yuksekgonul et al., ICLR 2023; mertyg/vision-language-models-are-bows,
dataset_zoo/perturbations.py, class TextShuffler), one definition for the COCO-/Flickr30k-Order benchmark
(clipneg.eval.order) and for the order negatives of the rule generator.

| kind                           | tokens from             | what moves                                         |
|--------------------------------|-------------------------|----------------------------------------------------|
| ``shuffle_nouns_and_adj``      | spaCy tokens and tags   | nouns (NN NNS NNP NNPS) among noun positions, then |
|                                |                         | adjectives (JJ JJR JJS) among adjective positions  |
| ``shuffle_allbut_nouns_and_adj``| spaCy                  | every other token among the remaining positions    |
| ``shuffle_within_trigrams``    | NLTK ``word_tokenize``  | tokens inside each consecutive trigram             |
| ``shuffle_trigrams``           | NLTK ``word_tokenize``  | the order of the trigrams                          |

Tokens are joined with single spaces (the benchmark then applies ``pre_caption``). The official code draws from
Python's and numpy's global RNGs, seeded once by ``seed_all(1)`` in main_aro.py and consumed caption by caption; we
draw from an explicit numpy Generator, so each permutation has the official distribution but not the official draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .nlp import MAX_WORDS, NLTK_TOKENIZER, Tagged, nltk_tokenize, pre_caption

PERTURBATIONS = ("shuffle_nouns_and_adj", "shuffle_allbut_nouns_and_adj", "shuffle_within_trigrams",
                 "shuffle_trigrams")
TAG_KINDS = frozenset(PERTURBATIONS[:2])  # tokenised and tagged by spaCy
TRIGRAM_KINDS = frozenset(PERTURBATIONS[2:])  # tokenised by NLTK
NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
ADJ_TAGS = frozenset({"JJ", "JJR", "JJS"})


def tokenizers(spacy_model: str) -> dict[str, str]:
    """Which tokeniser each perturbation uses, for results and manifests."""
    return {k: (f"spacy {spacy_model}" if k in TAG_KINDS else NLTK_TOKENIZER) for k in PERTURBATIONS}


def trigrams(tokens: Sequence[str]) -> list[list[str]]:
    """Consecutive groups of 3 tokens, the last one shorter (ARO's get_trigrams)."""
    return [list(tokens[i:i + 3]) for i in range(0, len(tokens), 3)]


def perturb(tagged: Tagged, kind: str, rng: np.random.Generator, text: str | None = None) -> str:
    """One ARO perturbation drawn from rng, tokens joined with single spaces.

    ``tagged`` is the spaCy (token, tag) list of the caption; ``text`` is the raw caption, which the trigram kinds
    tokenise with NLTK as the official code does (without it they fall back to the tagged tokens).
    """
    tokens = [t for t, _ in tagged]
    if kind in TAG_KINDS:
        out = np.array(tokens, dtype=object)
        if kind == "shuffle_nouns_and_adj":
            noun = [i for i, (_, tag) in enumerate(tagged) if tag in NOUN_TAGS]
            adj = [i for i, (_, tag) in enumerate(tagged) if tag in ADJ_TAGS]
            out[noun] = rng.permutation(out[noun])
            out[adj] = rng.permutation(out[adj])
        else:
            other = [i for i, (_, tag) in enumerate(tagged) if tag not in NOUN_TAGS and tag not in ADJ_TAGS]
            out[other] = rng.permutation(out[other])
        return " ".join(out.tolist())
    if kind in TRIGRAM_KINDS:
        if text is not None:
            tokens = nltk_tokenize(text)
        groups = trigrams(tokens)
        if kind == "shuffle_within_trigrams":
            return " ".join(" ".join(rng.permutation(np.array(g, dtype=object)).tolist()) for g in groups)
        return " ".join(" ".join(groups[i]) for i in rng.permutation(len(groups)))
    raise ValueError(f"unknown perturbation {kind!r} (known: {PERTURBATIONS})")


def perturbed_options(tagged: Sequence[Tagged], raw: Sequence[str], seed: int, max_words: int = MAX_WORDS
                      ) -> list[list[str]]:
    """For each caption: [original, 4 perturbations], all pre-processed; one Generator per seed, consumed in order."""
    rng = np.random.default_rng(seed)
    out = []
    for caption, tags in zip(raw, tagged, strict=True):
        out.append([pre_caption(caption, max_words)]
                   + [pre_caption(perturb(tags, kind, rng, caption), max_words) for kind in PERTURBATIONS])
    return out
