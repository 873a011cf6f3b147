"""Converse paraphrases: "X <rel> Y" -> "Y <converse> X", with the word-order negatives of the paraphrase term.

The lexicon's ``relations.converse`` maps a relation phrase to its converse ({"left of": "right of", "above":
"below"}; either direction is enough). For a caption whose one relation has a converse, between two object noun
phrases X and Y (each a lexicon object with its determiner, numbers and adjectives)::

    caption      a cup on the left of a plate
    paraphrase   a plate on the right of a cup          Y <converse> X: the same meaning
    negatives    a cup on the right of a plate          X <converse> Y: the paraphrase's words, false
                 a plate on the left of a cup           Y <rel> X: the caption's words, false

so the paraphrase and the first negative have one bag of words, the caption and the second another: only word order
tells them apart (clipneg.schema.Paraphrase; the trainer's paraphrase term). A chain "X R1 Y, and the Y is R2 Z"
(the built-in world's two-fact captions) is restated from its other end, "Z R2' Y, and the Y is R1' X", with
negatives "X R1' Y, and the Y is R2' Z" and "Z R2 Y, and the Y is R1 X": what ``clipneg.world.captions.restate`` and
``order_negatives`` write for the world's own captions. Text before X (a prefix) and after the last noun phrase (a
full stop, "and a small star") keeps its place.

Anything else gets no paraphrase, with the reason (counted by the generator as ``paraphrase: <reason>``): no
relation, no converse for it, several relations that are not such a chain, a noun phrase the rules cannot delimit,
a verb whose number would change ("two cups are left of a plate"), or a noun phrase inside a larger one ("a bowl
of fruit", "a plate of food", "a woman holding an umbrella"), whose restatement would move the wrong words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .edits import Parsed, Slot
from .grammar import lemma, match_case, words

COPULAS = frozenset({"is", "are"})
DETERMINERS = frozenset({"a", "an", "the", "this", "that", "these", "those", "its", "his", "her", "their", "some"})


@dataclass(frozen=True)
class Restated:
    """A paraphrase and its word-order negatives (in the order of clipneg.world.captions.order_negatives)."""

    text: str
    negatives: tuple[str, ...]


def converse_map(section_extra: Mapping) -> dict[str, str]:
    """The lexicon's relations.converse made symmetric ("left of" -> "right of" and back)."""
    conv = {str(a): str(b) for a, b in dict(section_extra.get("converse", {})).items()}
    for a, b in list(conv.items()):
        conv.setdefault(b, a)
    return conv


@dataclass(frozen=True)
class _NP:
    start: int  # char span of the noun phrase
    end: int
    slot: Slot


def _modifier(p: Parsed, i: int) -> bool:
    tok = p.toks[i]
    if tok.lower_ in p.lex.objects:
        return False
    return (tok.pos_ in ("ADJ", "NUM") or tok.tag_ == "CD" or tok.lower_ in p.lex.attributes
            or any(a.start <= i < a.end for a in p.attributes))


def _objects(p: Parsed) -> list[Slot]:
    """The parse's objects, plus single words that are lexicon objects the tagger took for something else ("cross"
    as an adjective, "cross" as a compound before a relation word)."""
    taken = {i for s in p.objects for i in range(s.start, s.end)}
    out = list(p.objects)
    for t in p.toks:
        if t.i in taken or not t.is_alpha:
            continue
        entry = lemma(t.lower_, "NOUN")
        if entry in p.lex.objects or t.lower_ in p.lex.objects:
            nxt = p.toks[t.i + 1].lower_ if t.i + 1 < len(p.toks) else ""
            if nxt in p.lex.objects or lemma(nxt, "NOUN") in p.lex.objects:
                continue  # a real compound ("cross stitch")
            out.append(Slot(t.i, t.i + 1, entry if entry in p.lex.objects else t.lower_,
                            frozenset(p.lex.objects.groups_of(entry)), head=t.i,
                            plural=t.tag_ in ("NNS", "NNPS") or entry != t.lower_, pos="NOUN"))
    return sorted(out, key=lambda s: s.start)


def _np_ending_at(p: Parsed, end_tok: int) -> _NP | None:
    """The object noun phrase whose last token is ``end_tok - 1``, widened left over its modifiers and determiner."""
    slot = next((s for s in _objects(p) if s.end == end_tok), None)
    if slot is None:
        return None
    k = slot.start
    while k > 0 and _modifier(p, k - 1):
        k -= 1
    if k > 0 and p.toks[k - 1].lower_ in DETERMINERS:
        k -= 1
    a, _ = p.span_chars(k, k + 1)
    _, b = p.span_chars(slot.start, slot.end)
    return _NP(a, b, slot)


def _np_starting_at(p: Parsed, start_tok: int) -> _NP | None:
    """The object noun phrase that starts at token ``start_tok`` (determiner and modifiers, then the object)."""
    k = start_tok
    if k < len(p.toks) and p.toks[k].lower_ in DETERMINERS:
        k += 1
    slot = next((s for s in _objects(p) if s.start >= k), None)
    if slot is None or any(not _modifier(p, i) for i in range(k, slot.start)):
        return None
    a, _ = p.span_chars(start_tok, start_tok + 1)
    _, b = p.span_chars(slot.start, slot.end)
    return _NP(a, b, slot)


def _subject(p: Parsed, rel: Slot) -> tuple[_NP | None, bool]:
    """The noun phrase before a relation (across one copula), and whether there is a copula."""
    j = rel.start
    copula = j > 0 and p.toks[j - 1].lower_ in COPULAS
    if copula:
        j -= 1
    return _np_ending_at(p, j), copula


def _attached(p: Parsed, np: _NP, last: bool) -> bool:
    """Is the noun phrase (the caption's first or, last=True, its last) part of a larger one ("a bowl of fruit", "a
    plate of food", "a woman holding an umbrella"), whose restatement would move the wrong words?"""
    nxt = np.slot.end
    if last and nxt < len(p.toks):
        t = p.toks[nxt]
        if t.lower_ in ("of", "that", "which", "who", "with") or t.pos_ in ("VERB", "ADP", "AUX", "PRON"):
            return True
    first = next(i for i, tok in enumerate(p.toks) if tok.idx == np.start)
    return first > 0 and p.toks[first - 1].lower_ == "of" and p.toks[first].lower_ not in DETERMINERS


def _cased(p: Parsed, text: str, np: _NP, first: bool) -> str:
    """Casing of a noun phrase that moves to (first=True) or away from the start of the caption."""
    if first:
        return text[:1].upper() + text[1:]
    tok = p.toks[np.slot.start]
    if tok.tag_ in ("NNP", "NNPS") and np.start == p.span_chars(np.slot.start, np.slot.start + 1)[0]:
        return text
    return text[:1].lower() + text[1:]


def _relations(p: Parsed, converse: Mapping[str, str]) -> list[Slot]:
    """The caption's relations: converse phrases found by their words (longest first; the tagger calls "right" in
    "right of" a noun or "left" a verb, and the wording is what matters here), then the parse's other relations."""
    lows = [t.lower_ for t in p.toks]
    by_len = sorted({tuple(k.split()) for k in converse}, key=len, reverse=True)
    found: list[Slot] = []
    i = 0
    while i < len(lows):
        hit = next((ws for ws in by_len if tuple(lows[i:i + len(ws)]) == ws), None)
        if hit is None:
            i += 1
            continue
        found.append(Slot(i, i + len(hit), " ".join(hit), frozenset(), pos="ADP"))
        i += len(hit)
    taken = {i for s in found for i in range(s.start, s.end)}
    found += [s for s in p.relations if not taken & set(range(s.start, s.end))]
    return sorted(found, key=lambda s: s.start)


def restate(p: Parsed, converse: Mapping[str, str]) -> tuple[Restated | None, str]:
    """The converse paraphrase of a parsed caption, or None and why not."""
    rels = _relations(p, converse)
    if not rels:
        return None, "no relation"
    if any(s.entry not in converse for s in rels):
        return None, "no converse" if len(rels) == 1 else "several relations"
    if len(rels) > 2:
        return None, "several relations"
    t = p.text
    x, copula = _subject(p, rels[0])
    y = _np_starting_at(p, rels[0].end)
    if x is None or y is None:
        return None, "noun phrase not found"
    if copula and x.slot.plural != y.slot.plural:
        return None, "agreement"
    capital = t[:x.start].strip() == "" and t[x.start:x.start + 1].isupper()
    spans = [(x, rels[0], y)]
    if len(rels) == 2:  # "X R1 Y, and the Y is R2 Z"
        y2, copula2 = _subject(p, rels[1])
        z = _np_starting_at(p, rels[1].end)
        if y2 is None or z is None or y2.start < y.end:
            return None, "several relations"
        if words(t[y2.start:y2.end])[1:] != words(t[y.start:y.end])[1:] or y2.slot.entry != y.slot.entry:
            return None, "several relations"  # the second clause is about another object
        if copula and x.slot.plural != z.slot.plural:
            return None, "agreement"
        spans.append((y2, rels[1], z))
    if _attached(p, spans[-1][2], True) or _attached(p, x, False):
        return None, "noun phrase inside a larger one"

    def rel_text(rel: Slot, turn: bool) -> str:
        a, b = p.span_chars(rel.start, rel.end)
        return match_case(t[a:b], converse[rel.entry]) if turn else t[a:b]

    def np_text(np: _NP, first: bool) -> str:
        out = t[np.start:np.end]
        return _cased(p, out, np, first) if capital else out

    def in_place(turn: bool) -> str:
        out, pos = [], 0
        for rel in rels:
            a, b = p.span_chars(rel.start, rel.end)
            out += [t[pos:a], rel_text(rel, turn)]
            pos = b
        return "".join(out) + t[pos:]

    def reversed_(turn: bool) -> str:
        # The outer noun phrases trade places and the relations trade clauses; the glue between them stays:
        # pre X g1 R1 g2 Y [m Y2 g3 R2 g4 Z] post -> pre Z g1 R2' g2 Y [m Y2 g3 R1' g4 X] post
        first, last_np = spans[0][0], spans[-1][2]
        a1, b1 = p.span_chars(rels[0].start, rels[0].end)
        out = t[:first.start] + np_text(last_np, True) + t[first.end:a1] + rel_text(rels[-1], turn)
        if len(rels) == 1:
            return out + t[b1:y.start] + np_text(first, False) + t[y.end:]
        a2, b2 = p.span_chars(rels[1].start, rels[1].end)
        return (out + t[b1:a2] + rel_text(rels[0], turn) + t[b2:last_np.start] + np_text(first, False)
                + t[last_np.end:])

    text = reversed_(True)
    negatives = []
    for neg in (in_place(True), reversed_(False)):
        if words(neg) not in (words(t), words(text)) and neg not in negatives:
            negatives.append(neg)
    return Restated(text, tuple(negatives)), "ok"
