"""Where a caption can be edited (slots found on a spaCy parse and the lexicon) and the edits of each kind.

Every kind turns a parsed caption into a list of *choices* (a builder and its arguments); building one gives a list
of character-span edits that, applied to the caption, give one negative. The generator shuffles the choices with a
seed of (caption, kind, seed) and keeps the first k that pass its checks, so no text is built that is not needed.

| kind                 | option                                                                               |
|----------------------|--------------------------------------------------------------------------------------|
| replace_obj          | one object noun (phrase) -> a co-hyponym, number kept ("two dogs" -> "two cats")       |
| replace_att          | one attribute (phrase) -> a co-hyponym ("light blue" -> "red", "two" -> "three")       |
| replace_rel          | one preposition (phrase) or action verb -> a contrast, verb form kept                  |
| swap_obj             | two object nouns of the same number (both animate or both not) exchange places       |
| swap_att             | two attributes of different nouns exchange places                                    |
| add_obj              | "and a X" after an object noun ("with a X" after a singular subject or a place), X   |
|                      | a co-hyponym, or from the groups the lexicon's ``add_with`` names for places, people |
| add_att              | an attribute inserted before an object noun, in English adjective order              |
| swap_chunks          | two noun chunks exchange places (NegCLIP)                                            |
| swap_phrases         | two verbs (with their particles) of the same form exchange places (NegCLIP)          |
| swap_tags            | two tokens of the same tag NN, NNS, JJ or RB exchange places (NegCLIP)               |

A noun phrase named again with "the" ("a red dog ..., and the red dog is ...") is one thing: edits are chosen in
its first mention and made at both, so a negative changes the thing rather than naming a third one.

After every edit the article before it is re-agreed ("a dog" -> "an elephant"), and casing follows the replaced
text (a sentence-initial word stays capitalised, a moved one is lower-cased unless it is a proper noun).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

from ..base import seeded_order, stable_seed
from .grammar import apply_edits, article_for, first_word, inflect_noun, inflect_verb, lemma, match_case
from .lexicon import Lexicon

NOUN_TAGS = ("NN", "NNS")
ARTICLES = ("a", "an")
# Heads of partitive and framing chunks ("a group of people", "a picture of a dog"): never swapped as objects.
FRAME_NOUNS = frozenset("""group couple pair bunch lot lots picture photo photograph image view close closeup top side
front back middle piece slice number variety assortment kind type set row line pile stack herd flock other one area
day time way shot scene display couple edge corner half part bit sort end distance background foreground""".split())
# English adjective order for inserting an attribute among the existing modifiers of a noun
ORDER = {"number": 0, "size": 1, "height": 1, "length": 1, "width": 1, "colour": 3, "animal_colour": 3,
         "hair_colour": 3, "pattern": 4, "material": 5, "building_material": 5}
UNKNOWN_MODIFIER = 6  # compounds and unlisted modifiers stay next to the noun ("park bench")
# attribute groups that describe what a thing looks like on its surface: they swap with one another
SURFACE = {g: "surface" for g in
           ("colour", "animal_colour", "hair_colour", "material", "building_material", "pattern")}
NO_ADD_GROUPS = frozenset({"number", "side", "position"})
DET_BEFORE_SIDE = frozenset({"the", "his", "her", "their", "its", "my", "your", "our"})
NEXT_NOUN_WINDOW = 4


@dataclass(slots=True)
class Slot:
    """Tokens [start, end) of the doc matched to a lexicon ``entry`` of some ``groups``; ``head`` is the noun an
    attribute describes (or the noun itself for an object, None when unknown). Never changed once made; not frozen
    because a caption makes dozens and a frozen dataclass's constructor cost more than finding them."""

    start: int
    end: int
    entry: str
    groups: frozenset[str]
    head: int | None = None
    plural: bool = False
    pos: str = ""


@dataclass(slots=True, eq=False)
class Parsed:
    """A parsed caption with its slots."""

    text: str
    doc: object
    lex: Lexicon
    toks: list = field(default_factory=list)  # the doc's tokens, once (slicing a Doc builds Spans)
    lows: list[str] = field(default_factory=list)  # their lower-case texts, tags and POS, read from spaCy once
    tags: list[str] = field(default_factory=list)
    poss: list[str] = field(default_factory=list)
    nltk_tokens: list[str] | None = None  # NLTK tokens for ARO's trigram perturbations, made when first needed
    wordnet: object | None = None  # clipneg.generators.rules.wordnet.WordNet when installed and enabled
    wn_objects: list[Slot] = field(default_factory=list)  # nouns outside the lexicon, replaced through WordNet
    words: list[bytes] | None = None  # the caption's word and bag keys, for the generator's checks
    bag: object | None = None
    objects: list[Slot] = field(default_factory=list)
    attributes: list[Slot] = field(default_factory=list)
    relations: list[Slot] = field(default_factory=list)
    object_at: dict[int, Slot] = field(default_factory=dict)  # head token -> object slot
    present: set[str] = field(default_factory=set)  # words and lemmas of the caption
    blocked: set[str] | None = None  # attributes add_att must not add (made when first needed)
    # (antecedent, repeat) character spans of a noun phrase named again with "the": "a white arrow ..., and the
    # white arrow is ..."; an edit inside the antecedent is made in the repeat too (see _corefs)
    corefs: list[tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    repeats: set[int] = field(default_factory=set)  # the repeats' tokens: never edited on their own
    lead_upper: int = -1  # where the caption's first character is, when it is upper case (else -1)

    def span_chars(self, start: int, end: int) -> tuple[int, int]:
        toks = self.toks
        return toks[start].idx, toks[end - 1].idx + len(toks[end - 1].text)

    def span_text(self, start: int, end: int) -> str:
        a, b = self.span_chars(start, end)
        return self.text[a:b]


# --------------------------------------------------------------------------------------------------------------------
# slot finding


def _noun_key(lows: list[str]) -> tuple[str, str]:
    lower = " ".join(lows)
    lem = lemma(lows[-1], "NOUN")
    return lower, (" ".join([*lows[:-1], lem]) if len(lows) > 1 else lem)


def _sizes(section, lows: list[str], i: int) -> range:
    """Phrase lengths worth trying at token i: longer ones only where a listed phrase starts."""
    top = min(section.max_words, len(lows) - i) if lows[i] in section.first_words else 1
    return range(top, 0, -1)


def _relation_spans(doc, lows: list[str], poss: list[str], lex: Lexicon) -> list[Slot]:
    rel = lex.relations
    out = []
    n = len(doc)
    i = 0
    while i < n:
        low = lows[i]
        if low not in rel.first_words:
            found = _single_relation(doc, doc[i], lex) if poss[i] == "VERB" or low in rel.entries else None
            i = found.end if found else i + 1  # most tokens: no phrase starts here
            if found:
                out.append(found)
            continue
        found = None
        for size in _sizes(rel, lows, i):
            toks = doc[i:i + size]
            phrase = " ".join(lows[i:i + size])
            if size == 1:
                found = _single_relation(doc, toks[0], lex)
            elif phrase in rel.entries and toks[0].pos_ in ("ADP", "ADV", "ADJ", "VERB", "AUX"):
                groups = {g for g in rel.groups_of(phrase) if rel.groups[g].get("pos", "ADP") in ("ADP", "VERB")}
                groups = _pobj_ok(doc, toks[-1], groups, lex)
                if groups:
                    # the group says what the phrase is: spaCy tags "left" of "left of" as a verb, and inflecting
                    # "right of" like it gave "righted of"
                    verbal = toks[0].pos_ == "VERB" and any(rel.groups[g].get("pos") == "VERB" for g in groups)
                    found = Slot(i, i + size, phrase, frozenset(groups), pos="VERB" if verbal else "ADP")
            if found:
                break
        if found:
            out.append(found)
            i = found.end
        else:
            i += 1
    return out


def _pobj_ok(doc, tok, groups: set[str], lex: Lexicon) -> set[str]:
    """Drop groups whose "pobj" restriction the object of the preposition does not meet."""
    keep = set()
    for g in groups:
        need = lex.relations.groups[g].get("pobj")
        if not need:
            keep.add(g)
            continue
        pobj = [c for c in tok.children if c.dep_ == "pobj"]
        if pobj:
            lower, lem = _noun_key([pobj[0].lower_])
            obj_groups = lex.objects.groups_of(lem) | lex.objects.groups_of(lower)
            if obj_groups & set(need):
                keep.add(g)
    return keep


def _groups_by_pos(lex: Lexicon, word: str) -> dict[str, frozenset[str]]:
    """The relation groups of a word by the part of speech they are listed for (ADP when unsaid)."""
    def make() -> dict[str, frozenset[str]]:
        rel = lex.relations
        by_pos: dict[str, set[str]] = {}
        for g in rel.groups_of(word):
            by_pos.setdefault(rel.groups[g].get("pos", "ADP"), set()).add(g)
        return {k: frozenset(v) for k, v in by_pos.items()}

    return lex.memo(("groups_by_pos", word), make)


def _single_relation(doc, tok, lex: Lexicon) -> Slot | None:
    rel = lex.relations
    i = tok.i
    low = tok.lower_
    pos = tok.pos_
    if pos != "VERB" and low not in rel.entries:
        return None
    if pos == "VERB" and tok.tag_.startswith("VB"):
        lem = lemma(low, "VERB")
        groups = _groups_by_pos(lex, lem).get("VERB")
        if groups:
            return Slot(i, i + 1, lem, groups, pos="VERB")
        return None
    if low not in rel.entries:
        return None
    pos_groups = _groups_by_pos(lex, low)
    if "ADP" in pos_groups and (tok.tag_ == "IN" or (tok.tag_ == "RP" and low in ("up", "down"))):
        groups = _pobj_ok(doc, tok, pos_groups["ADP"], lex)
        if groups:
            return Slot(i, i + 1, low, frozenset(groups), pos="ADP")
    if "ANY" in pos_groups and tok.dep_ not in ("amod", "compound") and i > 0 and doc[i - 1].lower_ in DET_BEFORE_SIDE:
        return Slot(i, i + 1, low, frozenset(pos_groups["ANY"]), pos="ANY")
    if "ADV" in pos_groups and tok.pos_ == "ADV" and tok.dep_ == "advmod":
        return Slot(i, i + 1, low, frozenset(pos_groups["ADV"]), pos="ADV")
    return None


def _objects(doc, lows: list[str], tags: list[str], lex: Lexicon, taken: set[int]) -> list[Slot]:
    obj = lex.objects
    out = []
    n = len(doc)
    i = 0
    while i < n:
        if tags[i] not in ("NN", "NNS", "NNP", "NNPS") and lows[i] not in obj.first_words:
            i += 1  # a one-word object is a noun; longer ones start where a listed phrase does
            continue
        found = None
        for size in _sizes(obj, lows, i):
            tag = tags[i + size - 1]
            if tag not in ("NN", "NNS", "NNP", "NNPS"):
                continue
            toks = doc[i:i + size]
            last = toks[-1]
            if last.dep_ == "compound" or any(t.i in taken for t in toks):
                continue
            if tag in ("NNP", "NNPS") and (i == 0 or last.text.islower() or last.text.isupper()):
                tag = "NN" if tag == "NNP" and lemma(last.lower_, "NOUN") == last.lower_ else "NNS"  # "Dogs run."
            if tag not in NOUN_TAGS:
                continue
            if size > 1 and any(t.pos_ not in ("NOUN", "ADJ", "PROPN", "PUNCT", "VERB") for t in toks[:-1]):
                continue
            lower, lem = _noun_key(lows[i:i + size])
            if lex.is_plural_only(lower) and lower in obj.entries:
                entry = lower
            elif lem in obj.entries:
                entry = lem
            elif lower in obj.entries:
                entry = lower
            else:
                continue
            plural = tag == "NNS" or lex.is_plural_only(entry)
            found = Slot(i, i + size, entry, frozenset(obj.groups_of(entry)), head=last.i, plural=plural, pos="NOUN")
            break
        if found:
            out.append(found)
            i = found.end
        else:
            i += 1
    return out


def _attr_head(tok) -> int | None:
    seen = 0
    while tok.dep_ == "conj" and seen < 5:
        tok = tok.head
        seen += 1
    if tok.dep_ in ("amod", "compound", "nummod", "nmod", "quantmod") and tok.head.pos_ in ("NOUN", "PROPN"):
        return tok.head.i
    if tok.dep_ in ("acomp", "attr", "oprd"):
        subj = [c for c in tok.head.children if c.dep_ in ("nsubj", "nsubjpass")]
        if subj and subj[0].pos_ in ("NOUN", "PROPN"):
            return subj[0].i
    return None


def _next_noun(doc, end: int):
    for t in doc[end:end + NEXT_NOUN_WINDOW]:
        if t.pos_ in ("NOUN", "PROPN"):
            return t
    return None


def _attributes(doc, lows: list[str], lex: Lexicon, taken: set[int], object_at: dict[int, Slot]) -> list[Slot]:
    att = lex.attributes
    out = []
    n = len(doc)
    i = 0
    while i < n:
        if lows[i] not in att.entries and lows[i] not in att.first_words:
            i += 1
            continue
        found = None
        for size in _sizes(att, lows, i):
            phrase = " ".join(lows[i:i + size])
            if phrase not in att.entries:
                continue
            toks = doc[i:i + size]
            if any(t.i in taken for t in toks):
                continue
            groups = set(att.groups_of(phrase))
            last = toks[-1]
            if "number" in groups:
                groups_num = {g for g in groups if att.groups[g].get("number")}
                noun = _next_noun(doc, i + size)
                numeric = last.pos_ == "NUM" or size > 1 or last.lower_ in ("several", "many", "few", "numerous",
                                                                             "multiple")
                if numeric and noun is not None and (noun.tag_ == "NNS" or lex.is_plural_only(noun.lower_)):
                    found = Slot(i, i + size, phrase, frozenset(groups_num), head=noun.i, pos="NUM")
                    break
                groups -= groups_num
                if not groups:
                    continue
            if last.pos_ == "VERB":
                ok = last.dep_ in ("amod", "acomp")
            elif last.pos_ == "ADJ":
                ok = True
            elif last.pos_ in ("NOUN", "PROPN"):
                ok = last.dep_ in ("compound", "amod", "conj", "attr", "acomp", "nmod") and last.head.i != last.i
            else:
                ok = False
            if not ok:
                continue
            head = _attr_head(last)
            groups = frozenset(groups)
            if head is not None and head in object_at:  # keep only groups that apply to the described object
                groups = _applying(lex, groups, object_at[head].groups)
            found = Slot(i, i + size, phrase, groups, head=head, pos=last.pos_)
            break
        if found:
            out.append(found)
            i = found.end
        else:
            i += 1
    return out


def _applying(lex: Lexicon, groups: frozenset[str], obj_groups: frozenset[str]) -> frozenset[str]:
    """The attribute groups that apply to an object of ``obj_groups`` (all of them when none does)."""
    def make() -> frozenset[str]:
        att = lex.attributes
        fit = frozenset(g for g in groups if "*" in att.groups[g].get("applies_to", ["*"])
                        or obj_groups & set(att.groups[g].get("applies_to", [])))
        return fit or groups

    return lex.memo(("applying", groups, obj_groups), make)


def _body(toks, slot: Slot) -> tuple[str, int]:
    """(determiner, first token) of an object's noun phrase: the modifiers between its determiner and the noun."""
    head = toks[slot.head]
    j = slot.start - 1
    while j >= head.left_edge.i and toks[j].dep_ not in ("det", "poss", "predet", "nummod"):
        j -= 1
    det = toks[j].lower_ if j >= head.left_edge.i and toks[j].dep_ == "det" else ""
    return det, j + 1


def _corefs(p: Parsed) -> set[int]:
    """Link each noun phrase named again with "the" to its latest indefinite antecedent with the same words, and
    return the repeats' tokens. Editing only one of the two would make the caption name a third thing ("a white
    arrow ..., and the white heart is ...") instead of changing the one it names twice; the world's own negatives,
    and SugarCrepe's human-checked ones, change the entity, so edits are chosen in the antecedent and mirrored."""
    toks, lows = p.toks, p.lows
    seen: dict[tuple[str, ...], tuple[int, int]] = {}  # body words -> latest indefinite body, as tokens
    repeats: set[int] = set()
    for s in p.objects:
        det, start = _body(toks, s)
        key = tuple(lows[start:s.end])
        if det in ARTICLES:
            seen[key] = (start, s.end)
        elif det == "the" and key in seen:
            a, c = p.span_chars(*seen[key]), p.span_chars(start, s.end)
            if p.text[a[0]:a[1]].lower() == p.text[c[0]:c[1]].lower():  # same characters: offsets carry over
                p.corefs.append((a, c))
                repeats.update(range(start, s.end))
    return repeats


def _mirror(p: Parsed, option: Option) -> Option:
    """The option with each edit inside an antecedent made in its repeat too (insertions after the noun, which
    add an object, stay where they are)."""
    out = list(option)
    for (a0, a1), (c0, _) in p.corefs:
        for a, b, t, _prev in option:
            if a0 <= a <= b <= a1 and not a == b == a1:
                if t[:1] and p.text[a:a + 1].isupper() != p.text[a - a0 + c0:a - a0 + c0 + 1].isupper():
                    t = t[:1].swapcase() + t[1:]
                out.append((a - a0 + c0, b - a0 + c0, t, None))
    return out


def parse(text: str, doc, lex: Lexicon, wordnet=None) -> Parsed:
    toks = list(doc)
    lows = [t.lower_ for t in toks]
    tags = [t.tag_ for t in toks]
    poss = [t.pos_ for t in toks]
    p = Parsed(text, doc, lex, toks, lows, tags, poss, wordnet=wordnet)
    lead = len(text) - len(text.lstrip())
    p.lead_upper = lead if text[lead:lead + 1].isupper() else -1
    p.relations = _relation_spans(toks, lows, poss, lex)
    rel_taken = {i for s in p.relations if s.pos != "VERB" for i in range(s.start, s.end)}
    p.objects = _objects(toks, lows, tags, lex, rel_taken)
    p.object_at = {s.head: s for s in p.objects}
    taken = rel_taken | {i for s in p.objects for i in range(s.start, s.end)}
    p.attributes = _attributes(toks, lows, lex, taken, p.object_at)
    p.present = set(lows) | {lemma(w, "NOUN") for w, tag in zip(lows, tags, strict=True) if tag in NOUN_TAGS}
    p.present |= {s.entry for s in p.objects} | {s.entry for s in p.attributes}
    repeats = _corefs(p)
    if repeats:  # edits start in the antecedent only; the repeat follows it (_mirror)
        p.objects = [s for s in p.objects if s.head not in repeats]
        p.attributes = [s for s in p.attributes if s.start not in repeats]
        taken |= repeats
    p.repeats = repeats
    if wordnet is not None:
        taken |= {i for s in p.attributes for i in range(s.start, s.end)}
        p.wn_objects = [Slot(t.i, t.i + 1, lemma(t.lower_, "NOUN"), frozenset({"wordnet"}), head=t.i,
                             plural=t.tag_ == "NNS", pos="NOUN") for t in toks
                        if t.tag_ in NOUN_TAGS and t.dep_ != "compound" and t.i not in taken and t.is_alpha
                        and lemma(t.lower_, "NOUN") not in FRAME_NOUNS]
    return p


# --------------------------------------------------------------------------------------------------------------------
# building texts

Option = list[tuple[int, int, str, int | None]]  # (char start, char end, new text, token before the edit or None)
# What the kinds return: (builder, *args); builder(p, *args) -> Option, called only for the options tried
Choice = tuple


class Choices(Sequence):
    """A kind's choices as runs of (builder, args before, candidates, args after), one Choice per candidate, made
    only when drawn: a caption can have hundreds of replacements and the generator tries a handful. Indexing and
    iteration give the same Choices, in the same order, as the flat list would (so seeded draws are unchanged)."""

    __slots__ = ("_runs", "_ends")

    def __init__(self) -> None:
        self._runs: list[tuple] = []
        self._ends: list[int] = []  # cumulative candidate counts

    def add(self, builder, before: tuple, items: Sequence, after: tuple = ()) -> None:
        if items:
            self._runs.append((builder, before, items, after))
            self._ends.append((self._ends[-1] if self._ends else 0) + len(items))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, j: int) -> Choice:  # type: ignore[override]
        n = len(self)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(j)
        r = bisect_right(self._ends, j)
        builder, before, items, after = self._runs[r]
        return (builder, *before, items[j - self._ends[r] + len(items)], *after)

    def __iter__(self) -> Iterator[Choice]:
        for builder, before, items, after in self._runs:
            for it in items:
                yield (builder, *before, it, *after)


def _absent(cands: tuple[str, ...], words: frozenset[str], present: set[str]) -> Sequence[str]:
    """``cands`` without those in ``present``; ``words`` is the set of ``cands`` (most captions name none)."""
    if words.isdisjoint(present):
        return cands
    return [c for c in cands if c not in present]


def _starts_sentence(p: Parsed, char: int) -> bool:
    return p.text[:char].strip() == ""


def _decap(tok, text: str) -> str:
    """Lower-case the first letter of moved text unless it is a proper noun, an acronym or "I"."""
    if tok.tag_ in ("NNP", "NNPS") or tok.text == "I" or (len(tok.text) > 1 and tok.text.isupper()):
        return text
    return text[:1].lower() + text[1:]


def build(p: Parsed, choice: Choice, mirror: bool = True) -> str | None:
    """The negative text of one choice of a kind (None: the choice turned out empty); ``mirror=False`` leaves the
    repeats of edited noun phrases as they were (the generator checks a swap's bag of words on that text)."""
    option = choice[0](p, *choice[1:])
    if option is None:
        return None
    return render(p, _mirror(p, option) if mirror and p.corefs else option)


def render(p: Parsed, option: Option) -> str:
    """Apply an option's edits, re-agree the article before each edit, keep the caption's first letter's case."""
    text = p.text
    if len(option) == 1:  # most edits: one span, with no article before it to re-agree
        a, b, t, prev = option[0]
        if prev is None or prev < 0 or p.lows[prev] not in ARTICLES:
            return _keep_lead_case(p, text[:a] + t + text[b:])
        art = p.toks[prev]  # before the edit, so outside it
        want = _agreed(p, art, first_word(t) if t.strip() else first_word(text[b:]))
        if want is None:
            return _keep_lead_case(p, text[:a] + t + text[b:])
        s = art.idx
        return _keep_lead_case(p, text[:s] + want + text[s + len(art.text):a] + t + text[b:])
    edits = [(a, b, t) for a, b, t, _ in option]
    covered = [(a, b) for a, b, _, _ in option]
    for _, b, t, prev in option:
        if prev is None or prev < 0 or p.lows[prev] not in ARTICLES:
            continue
        art = p.toks[prev]
        s = art.idx
        if any(x <= s < y for x, y in covered):
            continue
        want = _agreed(p, art, first_word(t) if t.strip() else first_word(p.text[b:]))
        if want is not None:
            edits.append((s, s + len(art.text), want))
            covered.append((s, s + len(art.text)))
    return _keep_lead_case(p, apply_edits(p.text, edits))


def _agreed(p: Parsed, art, nxt: str) -> str | None:
    """The article token ``art`` re-agreed with the word now after it, or None when it already agrees."""
    want = article_for(nxt).upper() if p.text.isupper() else match_case(art.text, article_for(nxt))
    return want if want.lower() != art.lower_ else None


def _keep_lead_case(p: Parsed, out: str) -> str:
    """``out`` with its first letter upper-cased where the caption's is (an edit at the start lower-cased it)."""
    lead = p.lead_upper
    if lead >= 0 and out[lead:lead + 1].islower():
        out = out[:lead] + out[lead].upper() + out[lead + 1:]
    return out


def _replace(p: Parsed, slot: Slot, new: str) -> Option:
    a, b = p.span_chars(slot.start, slot.end)
    return [(a, b, match_case(p.text[a:b], new), slot.start - 1)]


def _replace_obj(p: Parsed, slot: Slot, cand: str) -> Option:
    lex = p.lex
    new = cand if lex.is_plural_only(cand) else inflect_noun(cand, slot.plural, lex.plurals())
    return _replace(p, slot, new)


def _replace_rel(p: Parsed, slot: Slot, cand: str) -> Option:
    new = inflect_verb(cand, p.toks[slot.start].tag_) if slot.pos == "VERB" else cand
    return _replace(p, slot, new)


def _insert_after(p: Parsed, slot: Slot, text: str) -> Option:
    _, b = p.span_chars(slot.start, slot.end)
    return [(b, b, _caps(p, text), None)]


def _insert_before(p: Parsed, pos: int, word: str) -> Option:
    tok = p.toks[pos]
    text = _caps(p, f"{word} ")
    if pos == 0 and p.text[:1].isupper():  # "Dogs run" -> "Brown dogs run"
        return [(tok.idx, tok.idx + len(tok.text), text[:1].upper() + text[1:] + _decap(tok, tok.text), None)]
    return [(tok.idx, tok.idx, text, pos - 1)]


def _swap(p: Parsed, s1: tuple[int, int], s2: tuple[int, int]) -> Option:
    """Exchange token spans s1 < s2 (non-overlapping)."""
    (a1, b1), (a2, b2) = p.span_chars(*s1), p.span_chars(*s2)
    t1, t2 = p.text[a1:b1], p.text[a2:b2]
    tok1 = p.toks[s1[0]]
    if _starts_sentence(p, a1) and t1[:1].isupper():
        t1 = _decap(tok1, t1)
        t2 = t2[:1].upper() + t2[1:]
    return [(a1, b1, t2, s1[0] - 1), (a2, b2, t1, s2[0] - 1)]


# --------------------------------------------------------------------------------------------------------------------
# the kinds


def _caps(p: Parsed, text: str) -> str:
    """Inserted text in capitals when the caption is written in capitals."""
    return text.upper() if p.text.isupper() else text


ANIMATE = frozenset({"people", "roles", "occupations", "animals"})
NO_SWAP_GROUPS = frozenset({"body_parts", "streets", "venues", "nature", "urban", "rooms", "terrain", "games"})


def _contains(phrase: str, part: str) -> bool:
    return f" {part} " in f" {phrase} "


def replace_obj(p: Parsed) -> Choices:
    out = Choices()
    for s in p.objects:
        cands, words = _object_replacements(p.lex, s.entry, s.plural)
        out.add(_replace_obj, (s,), _absent(cands, words, p.present))
    for s in p.wn_objects:
        out.add(_replace_obj, (s,), [c for c in p.wordnet.cohyponyms(s.entry) if c not in p.present])
    return out


def _object_replacements(lex: Lexicon, entry: str, plural: bool) -> tuple[tuple[str, ...], frozenset[str]]:
    """The lexicon's replacements of an object noun in this number (the same for every caption naming it)."""
    def make() -> tuple[tuple[str, ...], frozenset[str]]:
        mass = lex.is_mass(entry)
        cands = tuple(c for c in lex.objects.candidates(entry)
                      if plural or (not lex.is_plural_only(c)  # "a shirt" cannot become "a pants"
                                    and lex.is_mass(c) == mass))  # "a dog" -> "a broccoli"
        return cands, frozenset(cands)

    return lex.memo(("object_replacements", entry, plural), make)


def replace_att(p: Parsed) -> Choices:
    out = Choices()
    for s in p.attributes:
        after_det = s.start > 0 and p.toks[s.start - 1].dep_ in ("det", "poss")
        cands, names = _attribute_replacements(p.lex, s.entry, s.groups, after_det)
        if names.isdisjoint(p.present):
            out.add(_replace, (s,), [c for c, _ in cands])
        else:  # "black and brown" -> "light brown and brown" names the other colour twice
            out.add(_replace, (s,), [c for c, w in cands if w.isdisjoint(p.present)])
    if p.wordnet is not None:
        for s in _plain_adjectives(p):
            out.add(_replace, (s,), [c for c in p.wordnet.antonyms(s.entry) if c not in p.present])
    return out


def _attribute_replacements(lex: Lexicon, entry: str, groups: frozenset[str], after_det: bool
                            ) -> tuple[list[tuple[str, frozenset[str]]], frozenset[str]]:
    """The lexicon's replacements of an attribute, each with the words whose presence in the caption rules it out
    (itself, and the listed attributes inside a phrase), and the union of those words."""
    def make() -> tuple[list[tuple[str, frozenset[str]]], frozenset[str]]:
        att = lex.attributes
        cands = []
        for cand in att.candidates(entry, groups):
            if _contains(cand, entry) or _contains(entry, cand):
                continue  # "black" -> "black and white" adds a colour rather than replacing one
            parts = cand.split()
            if after_det and parts[0] in ARTICLES:
                continue  # "the seven sheep" -> "the a couple of sheep"
            blocking = {cand} | ({w for w in parts if w in att} if len(parts) > 1 else set())
            cands.append((cand, frozenset(blocking)))
        return cands, frozenset().union(*(w for _, w in cands))

    return lex.memo(("attribute_replacements", entry, groups, after_det), make)


def replace_rel(p: Parsed) -> Choices:
    out = Choices()
    for s in p.relations:
        out.add(_replace_rel, (s,), [c for c in p.lex.relations.candidates(s.entry, s.groups) if c not in p.present])
    return out


def swap_obj(p: Parsed) -> list[Choice]:
    out = []
    objs = [s for s in p.objects if not s.groups <= NO_SWAP_GROUPS]
    for i, s1 in enumerate(objs):
        for s2 in objs[i + 1:]:
            if s1.plural != s2.plural or s1.entry == s2.entry or p.lex.objects.related(s1.entry, s2.entry):
                continue
            if p.lex.is_mass(s1.entry) != p.lex.is_mass(s2.entry):
                continue
            if bool(s1.groups & ANIMATE) != bool(s2.groups & ANIMATE):
                continue  # people and animals swap with one another, things with things
            if _coordinated(p, s1, s2) and not (_modified(p, s1) and _modified(p, s2)):
                continue  # "a man and a woman" -> "a woman and a man" says the same; "a black dog and a white cat"
                # -> "a black cat and a white dog" does not
            out.append((_swap, (s1.start, s1.end), (s2.start, s2.end)))
    return out


def _coordinated(p: Parsed, s1: Slot, s2: Slot) -> bool:
    """Are the two objects conjuncts of one coordination ("a man and a woman", "sandwiches, chili, and fries")?"""
    def first_conjunct(tok):
        for _ in range(8):  # spaCy chains a list's conjuncts ("fries" -> "chili" -> "sandwiches")
            if tok.dep_ != "conj":
                break
            tok = tok.head
        return tok.i

    return first_conjunct(p.toks[s1.head]) == first_conjunct(p.toks[s2.head])


def _modified(p: Parsed, s: Slot) -> bool:
    """Does the object have a modifier of its own before it ("a black dog")?"""
    return any(c.i < s.start and c.dep_ in ("amod", "compound", "nummod", "nmod") for c in p.toks[s.head].children)


def _plain_adjectives(p: Parsed) -> list[Slot]:
    """Adjectives outside the lexicon that modify a noun ("a grassy field"): swappable, never replaced."""
    adjectives = [t for t, tag in zip(p.toks, p.tags, strict=True) if tag == "JJ" and t.dep_ == "amod"]
    if not adjectives:
        return []
    taken = {i for s in (*p.attributes, *p.objects, *p.relations) for i in range(s.start, s.end)} | p.repeats
    return [Slot(t.i, t.i + 1, t.lower_, frozenset(), head=t.head.i, pos="ADJ") for t in adjectives
            if t.head.pos_ == "NOUN" and t.i not in taken and t.is_alpha]


def swap_att(p: Parsed) -> list[Choice]:
    out = []
    atts = [s for s in p.attributes if s.head is not None and s.pos != "NUM"] + _plain_adjectives(p)
    if len(atts) < 2:
        return out
    atts.sort(key=lambda s: s.start)
    for i, s1 in enumerate(atts):
        for s2 in atts[i + 1:]:
            if s1.head == s2.head or s1.entry == s2.entry:
                continue
            g1, g2 = ({SURFACE.get(g, g) for g in p.lex.attributes.groups_of(s.entry)} for s in (s1, s2))
            if bool(g1) != bool(g2) or (g1 and not g1 & g2):
                continue  # a colour swaps with a colour or a material, not with an age ("a grassy boy on a young
                # hill"); adjectives outside the lexicon swap only with one another
            out.append((_swap, (s1.start, s1.end), (s2.start, s2.end)))
    return out


def _singular_agreement(tok) -> bool:
    """Is this a subject whose verb agrees with it in the singular ("a dog is", "a dog sits", "a dog was")? Adding
    "and a cat" to it would need the verb changed too; a plural subject ("two dogs are") stays plural."""
    head = tok.head
    if tok.dep_ not in ("nsubj", "nsubjpass") or tok.tag_ in ("NNS", "NNPS"):
        return False
    forms = [head] + [c for c in head.children if c.dep_ in ("aux", "auxpass")]
    return any(f.tag_ == "VBZ" or f.lower_ == "was" for f in forms)


def add_obj(p: Parsed) -> Choices:
    out = Choices()
    lex = p.lex
    add_with = lex.objects.extra.get("add_with", {})
    slots = list(p.objects)
    if add_with:  # "people", "person": listed only as hypernyms
        slots += [Slot(i, i + 1, lemma(p.lows[i], "NOUN"), frozenset(), head=i, plural=tag == "NNS", pos="NOUN")
                  for i, tag in enumerate(p.tags) if tag in NOUN_TAGS and i not in p.object_at
                  and lemma(p.lows[i], "NOUN") in add_with and p.toks[i].dep_ != "compound"]
    if lex.objects.extra.get("add_position") == "end" and slots:
        # a domain whose captions name extra objects last ("... and a green star": the built-in world's grammar)
        last = max(s.end for s in slots)
        if all(t.is_punct for t in p.toks[last:]):
            slots = [s for s in slots if s.end == last]
        else:
            slots = []
    n = len(p.toks)
    for s in slots:
        if s.end < n and p.lows[s.end] in ("and", "or", ",", "of", "that", "which", "who"):
            continue  # after the last conjunct, never inside "a plate of food" or before "that says ..."
        joiner = None
        for cands, words, join in _add_plan(lex, s.entry, s.groups):
            if join is None:
                if joiner is None:  # "a cat and a dog is" would break the agreement: a singular subject takes
                    # "with" ("a cat with a dog is")
                    joiner = "with" if not s.plural and _singular_agreement(p.toks[s.head]) else "and"
                join = joiner
            out.add(_add_object, (s,), _absent(cands, words, p.present), (join,))
    return out


def _add_plan(lex: Lexicon, entry: str, groups: frozenset[str]
              ) -> tuple[tuple[tuple[str, ...], frozenset[str], str | None], ...]:
    """What add_obj may add after an object (entry, groups): (candidates, their set, joiner) per source, the
    joiner None where the caption's grammar decides it. The object's own groups when they allow additions, else
    the ``add_with`` rules of its entry and groups (places take "with a dog"; people "and a dog")."""
    def make() -> tuple[tuple[tuple[str, ...], frozenset[str], str | None], ...]:
        add_with = lex.objects.extra.get("add_with", {})
        own = [g for g in groups if lex.objects.groups[g].get("add")]
        plan = [(own, None)] if own else []
        for key in (entry, *sorted(groups)):
            rule = add_with.get(key)
            if rule and not own:
                plan.append((rule["groups"], "with" if rule.get("joiner") == "with" else None))
        return tuple((*_addable_objects(lex, entry, tuple(g)), join) for g, join in plan)

    return lex.memo(("add_plan", entry, groups), make)


def _addable_objects(lex: Lexicon, entry: str, groups: tuple[str, ...]) -> tuple[tuple[str, ...], frozenset[str]]:
    """Sorted members of ``groups`` unrelated to ``entry`` (and their set): the same for every caption naming
    ``entry``, so computed once (the relatedness checks were most of add_obj's time)."""
    def make() -> tuple[tuple[str, ...], frozenset[str]]:
        members = {m for g in groups for m in lex.objects.groups.get(g, {}).get("members", ())}
        cands = tuple(sorted(m for m in members if not lex.objects.related(m, entry)))
        return cands, frozenset(cands)

    return lex.memo(("addable_objects", entry, groups), make)


def _add_object(p: Parsed, slot: Slot, cand: str, joiner: str = "and") -> Option:
    lex = p.lex
    phrase = cand if lex.is_mass(cand) or lex.is_plural_only(cand) else f"{article_for(cand)} {cand}"
    return _insert_after(p, slot, f" {joiner} {phrase}")


def _modifier_order(p: Parsed, tok) -> int:
    for s in p.attributes:
        if s.start <= tok.i < s.end:
            return min((ORDER.get(g, 2) for g in s.groups), default=2)
    return UNKNOWN_MODIFIER


def add_att(p: Parsed) -> Choices:
    out = Choices()
    att = p.lex.attributes
    for s in p.objects:
        # the attributes between the determiner and the noun, whatever spaCy made their head ("a small pink cross"
        # can parse "small" as a modifier of "pink")
        have: set[str] = set()
        if p.attributes:
            floor = _floor(p, s)
            for a in p.attributes:
                if floor <= a.start < s.start:
                    have |= att.groups_of(a.entry)
        have_rank = {ORDER[g] for g in have if g in ORDER}  # one colour (size, material ...) per noun
        # one run per noun: (group, draw) pairs, placed when built; a few draws per group, each a distinct member
        # picked when built (listing every member of every group for every noun would cost more than the rest)
        out.add(_add_attribute, (s,), _addable_draws(p.lex, s.groups, frozenset(have), frozenset(have_rank)))
    return out


def _floor(p: Parsed, s: Slot) -> int:
    """The first token an attribute may go before: never before the noun's determiner, possessive or number ("the
    little toilet", not "little the toilet")."""
    toks = p.toks
    before = toks[toks[s.head].left_edge.i:s.start]
    return max([t.i + 1 for t in before if t.dep_ in ("det", "poss", "nummod", "predet")], default=0)


ADD_ATT_DRAWS = 3


def _addable_draws(lex: Lexicon, obj_groups: frozenset[str], have: frozenset[str], have_rank: frozenset[int]
                   ) -> tuple[tuple[str, int], ...]:
    """(group, draw) for each attribute group add_att may add to an object of ``obj_groups`` that already has the
    ``have`` groups, in group order, ``ADD_ATT_DRAWS`` draws each (fewer for smaller groups)."""
    def make() -> tuple[tuple[str, int], ...]:
        groups = sorted(
            g for g, meta in lex.attributes.groups.items() if meta.get("add") and g not in NO_ADD_GROUPS
            and g not in have and ORDER.get(g) not in have_rank
            and ("*" in meta.get("applies_to", []) or obj_groups & set(meta.get("applies_to", []))))
        sizes = {g: len(lex.attributes.groups[g]["members"]) for g in groups}
        return tuple((g, j) for g in groups for j in range(min(ADD_ATT_DRAWS, sizes[g])))

    return lex.memo(("addable_draws", obj_groups, have, have_rank), make)


def _add_attribute(p: Parsed, s: Slot, draw: tuple[str, int]) -> Option | None:
    """Insert a member of the draw's group before the object ``s``: after its determiner (_floor) and before the
    first of its modifiers that comes later in English adjective order."""
    group, j = draw
    rank = ORDER.get(group, 2)
    # the modifiers before the noun in order, each with its adjective-order rank and where its phrase starts
    mods = sorted((c.i, _modifier_order(p, c), c.left_edge.i) for c in p.toks[s.head].children
                  if c.i < s.start and c.dep_ in ("amod", "compound", "nmod"))
    pos = next((edge for _, order, edge in mods if order > rank), s.start)
    return _insert_attribute(p, max(min(pos, s.start), _floor(p, s)), group, j)


def _blocked_attributes(p: Parsed) -> set[str]:
    """Attributes the caption already has, or their synonyms and hyper/hyponyms: never added (made once, when the
    first addition is built)."""
    if p.blocked is None:
        att = p.lex.attributes
        p.blocked = set(p.present)
        for w in att.entries & p.present:
            p.blocked |= att.related_members(w)
    return p.blocked


def _insert_attribute(p: Parsed, pos: int, group: str, j: int) -> Option | None:
    """The j-th member of a seeded order of the group's members the caption does not already imply."""
    blocked = _blocked_attributes(p)
    members = [m for m in p.lex.attributes.groups[group]["members"] if m not in blocked]
    if j >= len(members):
        return None
    order = seeded_order(stable_seed(p.text, group, pos), len(members))
    return _insert_before(p, pos, members[next(islice(order, j, None))])


def swap_chunks(p: Parsed) -> list[Choice]:
    chunks = [c for c in p.doc.noun_chunks if c.root.pos_ != "PRON" and not c[0].is_punct and not c[-1].is_punct]
    out = []
    for i, c1 in enumerate(chunks):
        for c2 in chunks[i + 1:]:
            if c1.end > c2.start or c1.text.lower() == c2.text.lower():
                continue
            out.append((_swap, (c1.start, c1.end), (c2.start, c2.end)))
    return out


def _verb_phrase(tok) -> tuple[int, int]:
    end = tok.i + 1
    for c in tok.children:
        if c.dep_ == "prt" and c.i == end:
            end += 1
    return tok.i, end


def swap_phrases(p: Parsed) -> list[Choice]:
    verbs = [t for t in p.doc if t.pos_ == "VERB" and t.tag_.startswith("VB")]
    out = []
    for i, v1 in enumerate(verbs):
        for v2 in verbs[i + 1:]:
            if v1.tag_ != v2.tag_ or v1.lower_ == v2.lower_:
                continue
            s1, s2 = _verb_phrase(v1), _verb_phrase(v2)
            if s1[1] > s2[0]:
                continue
            out.append((_swap, s1, s2))
    return out


SWAP_TAGS = ("NN", "NNS", "JJ", "RB")


def swap_tags(p: Parsed) -> list[Choice]:
    out = []
    toks = [t for t in p.doc if t.tag_ in SWAP_TAGS and t.is_alpha]
    for i, t1 in enumerate(toks):
        for t2 in toks[i + 1:]:
            if t1.tag_ == t2.tag_ and t1.lower_ != t2.lower_:
                out.append((_swap, (t1.i, t1.i + 1), (t2.i, t2.i + 1)))
    return out


EDIT_KINDS = {"replace_obj": replace_obj, "replace_att": replace_att, "replace_rel": replace_rel,
              "swap_obj": swap_obj, "swap_att": swap_att, "add_obj": add_obj, "add_att": add_att,
              "swap_chunks": swap_chunks, "swap_phrases": swap_phrases, "swap_tags": swap_tags}
SWAP_KINDS = frozenset({"swap_obj", "swap_att", "swap_chunks", "swap_phrases", "swap_tags"})
