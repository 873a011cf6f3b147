"""Text utilities of the core: spaCy/NLTK loading and tokenising (nlp), ARO's order perturbations (order).

Shared by the benchmarks (clipneg.eval) and the caption generators (clipneg.generators); depends on neither.
"""

from __future__ import annotations

from .nlp import (
    MAX_WORDS,
    NLTK_TOKENIZER,
    PARSER_PIPES,
    SPACY_MODELS,
    TAGGER_PIPES,
    Tagged,
    Tagger,
    load_spacy,
    nltk_tokenize,
    pre_caption,
    spacy_model_id,
    spacy_tagger,
)
from .order import ADJ_TAGS, NOUN_TAGS, PERTURBATIONS, perturb, perturbed_options, tokenizers, trigrams

__all__ = ["ADJ_TAGS", "MAX_WORDS", "NLTK_TOKENIZER", "NOUN_TAGS", "PARSER_PIPES", "PERTURBATIONS", "SPACY_MODELS",
           "TAGGER_PIPES", "Tagged", "Tagger", "load_spacy", "nltk_tokenize", "perturb", "perturbed_options",
           "pre_caption", "spacy_model_id", "spacy_tagger", "tokenizers", "trigrams"]
