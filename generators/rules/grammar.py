"""Small English grammar for caption edits: articles, inflection (lemminflect), casing, span edits, bags of words."""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

# "an" before a vowel sound: a letter heuristic plus the usual exceptions (a unicorn, a one-way street, an hour)
_AN_EXCEPT = ("uni", "use", "usu", "uti", "ute", "eu", "one", "once", "ukul", "ura", "uri", "uro", "ewe")
_AN_SILENT_H = ("hour", "honest", "honor", "honour", "heir", "herb")
_WORD = re.compile(r"[\w'-]+", re.UNICODE)


def article_for(word: str) -> str:
    """``a`` or ``an`` for the word that follows the article."""
    w = word.lower()
    if not w:
        return "a"
    if w.startswith(_AN_SILENT_H):
        return "an"
    if w[0] in "aeiou" and not w.startswith(_AN_EXCEPT):
        return "an"
    if w[0] in "8":  # "an 8-year-old"
        return "an"
    return "a"


def match_case(src: str, new: str) -> str:
    """``new`` cased like ``src``: ALL CAPS, Capitalised or as given (lexicon entries are lowercase)."""
    if len(src) > 1 and src.isupper():
        return new.upper()
    if src[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def first_word(text: str) -> str:
    m = _WORD.search(text)
    return m.group(0) if m else ""


@lru_cache(maxsize=65536)
def lemma(word: str, upos: str) -> str:
    """Lemma of a lowercase word for a universal POS (NOUN, VERB, ADJ); lemminflect, which unlike spaCy's rule
    lemmatizer gets "riding" -> "ride"."""
    from lemminflect import getLemma

    if upos == "PROPN":
        upos = "NOUN"
    if upos not in ("NOUN", "VERB", "ADJ", "ADV", "AUX"):
        return word
    out = getLemma(word, upos=upos)
    return out[0].lower() if out else word


@lru_cache(maxsize=65536)
def _inflect(word: str, tag: str) -> str:
    from lemminflect import getInflection

    out = getInflection(word, tag=tag)
    if out:
        return out[0]
    out = getInflection(word, tag=tag, inflect_oov=True)
    return out[0] if out else word


def inflect_noun(entry: str, plural: bool, plurals: dict[str, str] | None = None) -> str:
    """A (possibly multi-word) noun entry in the singular or plural: the last word carries the number."""
    if not plural:
        return entry
    if plurals and entry in plurals:
        return plurals[entry]
    *head, last = entry.split(" ")
    if plurals and last in plurals:
        return " ".join([*head, plurals[last]])
    return " ".join([*head, _inflect(last, "NNS")])


def inflect_verb(entry: str, tag: str) -> str:
    """A verb entry ("ride", "take off") in the form of Penn tag ``tag`` (VBG riding, VBZ rides, VBD rode ...)."""
    first, *rest = entry.split(" ")
    if tag in ("VBG", "VBZ", "VBD", "VBN", "VBP"):
        first = _inflect(first, tag)
    return " ".join([first, *rest])


def apply_edits(text: str, edits: list[tuple[int, int, str]]) -> str:
    """Apply non-overlapping edits (start, end, new text; an insertion when start == end) by character span,
    right to left so earlier offsets stay valid."""
    if len(edits) == 1:  # most edits: one replacement or insertion
        start, end, new = edits[0]
        return text[:start] + new + text[end:]
    out = text
    last = len(text) + 1
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        if end > last:
            raise ValueError(f"overlapping edits in {text!r}: {edits}")
        out = out[:start] + new + out[end:]
        last = start
    return out


def bag_of_words(text: str) -> Counter:
    """Lowercase words; ``a`` and ``an`` count as one word (a swap re-agrees them)."""
    words = [w.lower() for w in _WORD.findall(text)]
    return Counter("a" if w == "an" else w for w in words)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


# bytes.translate table: every ASCII byte that is not a word character of grammar.words ([\w'-]) -> a space
_ASCII_SPLIT = bytes(c if chr(c).isalnum() or chr(c) in "_'-" else 32 for c in range(128)) + b" " * 128


def word_key(text: str) -> list[bytes]:
    """The lowercase words of a text (grammar.words), for the "equals positive" check: a negative with the
    positive's words in the positive's order says the same. ASCII text (nearly every caption) is split as bytes by
    ``bytes.translate``, the regex's words at a quarter of its cost; other text goes through the regex."""
    if text.isascii():
        return text.encode().lower().translate(_ASCII_SPLIT).split()
    return [w.encode() for w in _WORD.findall(text.lower())]  # bytes too: keys of both paths compare


def bag_key(text: str) -> list[bytes]:
    """grammar.bag_of_words as a sorted list (equal lists, equal bags; cheaper than a Counter): a and an as one."""
    return sorted([b"a" if w == b"an" else w for w in word_key(text)])
