"""Optional WordNet (through NLTK) for words the built-in lexicon does not list: co-hyponyms of a noun's first sense
(its hypernym's other hyponyms) and antonyms of an adjective. Used only when NLTK's WordNet data is already installed;
never downloads. Whether it was used, and which version, goes into the manifest, because it changes the output.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

MAX_CANDIDATES = 12


class WordNet:
    """A thin view of ``nltk.corpus.wordnet`` with the two look-ups the rules need."""

    def __init__(self, wn: Any) -> None:
        self.wn = wn
        self.version = str(wn.get_version()) if hasattr(wn, "get_version") else "?"

    @classmethod
    def load(cls) -> WordNet | None:
        """WordNet if its data is present, else None (no download, no network)."""
        try:
            import nltk

            nltk.data.find("corpora/wordnet")
            from nltk.corpus import wordnet as wn

            wn.ensure_loaded()
        except (ImportError, LookupError, OSError):
            return None
        return cls(wn)

    @lru_cache(maxsize=65536)  # noqa: B019 (one WordNet per generator; the cache lives as long as it does)
    def cohyponyms(self, noun: str) -> tuple[str, ...]:
        """Sisters of the most frequent noun sense: dog -> (cat?, wolf, fox ...) without its own synonyms."""
        synsets = self.wn.synsets(noun.replace(" ", "_"), pos="n")
        if not synsets:
            return ()
        sense = synsets[0]
        own = {n.lower() for n in sense.lemma_names()}
        out = []
        for hyper in sense.hypernyms():
            for sister in hyper.hyponyms():
                if sister == sense:
                    continue
                name = sister.lemma_names()[0].replace("_", " ").lower()
                if name not in own and name.count(" ") < 2 and name.isascii():
                    out.append(name)
        return tuple(sorted(set(out))[:MAX_CANDIDATES])

    @lru_cache(maxsize=65536)  # noqa: B019
    def antonyms(self, adjective: str) -> tuple[str, ...]:
        out = set()
        for s in self.wn.synsets(adjective, pos="a"):
            for lem in s.lemmas():
                if lem.name().lower() == adjective:
                    out.update(a.name().replace("_", " ").lower() for a in lem.antonyms())
        return tuple(sorted(out))
