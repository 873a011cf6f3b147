"""Captions as structured descriptions: what they say (Description), how they say it (Style), and whether it is true.

A caption is generated from a structure, never parsed from free text, so its meaning is exact:

- ``Description``: mentions in sentence order (shape, optional colour, optional size) and facts between them,
  ``Fact(a, rel, b)`` meaning "mention a <rel> mention b". Facts have a fixed shape: none; one fact (0, r, 1); or a
  chain (0, r1, 1), (1, r2, 2). Mentions outside the facts are "extras" ("... and a small green star").
- ``Style``: the template (prefix, "is" or not, relation wording family, connector, capital, full stop). Negatives
  re-render their edited Description with the positive's Style, so templates, articles and punctuation never tell a
  positive from a negative.

``scene_satisfies`` is the truth function: a description holds in a scene if its mentions can be matched to
distinct objects with the stated attributes, and every fact holds between the matched objects. ``parse_caption``
inverts ``render_text`` (tests use it to prove the words say what the structure says).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from clipneg.world.scene import Obj, Scene, relation_holds
from clipneg.world.vocab import COLOURS, INVERSE, REL_WORDS, SHAPES, SIZES, article

PREFIXES: tuple[str, ...] = ("", "there is ", "a picture of ", "an image of ", "a drawing of ", "a scene with ")
CONNECTORS: tuple[str, ...] = (" and ", ", and ", " together with ", " as well as ")


class Mention(NamedTuple):
    shape: str
    colour: str | None = None
    size: str | None = None

    def matches(self, obj: Obj) -> bool:
        return (self.shape == obj.shape and (self.colour is None or self.colour == obj.colour)
                and (self.size is None or self.size == obj.size))

    def words(self) -> str:
        return " ".join(w for w in (self.size, self.colour, self.shape) if w)


class Fact(NamedTuple):
    a: int
    rel: str
    b: int


_FACT_SHAPES = ((), ((0, 1),), ((0, 1), (1, 2)))


@dataclass(frozen=True)
class Description:
    mentions: tuple[Mention, ...]
    facts: tuple[Fact, ...] = ()

    def __post_init__(self) -> None:
        if tuple((f.a, f.b) for f in self.facts) not in _FACT_SHAPES:
            raise ValueError(f"facts must be (), ((0,r,1),) or ((0,r,1),(1,r,2)); got {self.facts}")
        if len(self.mentions) < (1 if not self.facts else len(self.facts) + 1):
            raise ValueError(f"{len(self.facts)} facts need more than {len(self.mentions)} mentions")

    def with_mention(self, k: int, mention: Mention) -> Description:
        mentions = list(self.mentions)
        mentions[k] = mention
        return Description(tuple(mentions), self.facts)


@dataclass(frozen=True)
class Style:
    prefix: int = 0  # index into PREFIXES
    verb: bool = False  # "a red circle is left of ..." rather than "a red circle left of ..."
    rel_words: int = 0  # index into vocab.REL_WORDS
    connector: int = 0  # index into CONNECTORS (before the first extra mention)
    capital: bool = False
    period: bool = False


@dataclass(frozen=True)
class Caption:
    """A description rendered in a style; ``binding[k]`` is the scene object that mention k was made from."""

    desc: Description
    style: Style
    binding: tuple[int, ...] = field(default=())

    @property
    def text(self) -> str:
        return render_text(self.desc, self.style)


def _np(m: Mention, definite: bool = False) -> str:
    words = m.words()
    return f"{'the' if definite else article(words)} {words}"


def render_text(desc: Description, style: Style) -> str:
    rel = REL_WORDS[style.rel_words]
    ms = desc.mentions
    if desc.facts:
        f0 = desc.facts[0]
        text = f"{_np(ms[0])}{' is ' if style.verb else ' '}{rel[f0.rel]} {_np(ms[1])}"
        used = 2
        if len(desc.facts) == 2:
            # The chain's second clause names the middle object again with "the", which is how people write it.
            text += f", and {_np(ms[1], definite=True)} is {rel[desc.facts[1].rel]} {_np(ms[2])}"
            used = 3
    else:
        text, used = _np(ms[0]), 1
    for n, m in enumerate(ms[used:]):
        text += (CONNECTORS[style.connector] if n == 0 else " and ") + _np(m)
    text = PREFIXES[style.prefix] + text
    if style.capital:
        text = text[0].upper() + text[1:]
    return text + ("." if style.period else "")


# ---- parsing (the inverse of render_text) -------------------------------------------------------------------------

def _alt(words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_NP = rf"(a|an|the) (?:({_alt(list(SIZES))}) )?(?:({_alt(list(COLOURS))}) )?({_alt(list(SHAPES))})"
_REL_NAME = {phrase: name for family in REL_WORDS for name, phrase in family.items()}
_REL = rf"({_alt(list(_REL_NAME))})"
_NP_RE = re.compile(_NP)
_FACT_RE = re.compile(rf"(?: is)? {_REL} {_NP}")
_CHAIN_RE = re.compile(rf", and {_NP} is {_REL} {_NP}")
_CONN_RE = re.compile(rf"({_alt(list(CONNECTORS))}){_NP}")


class CaptionParseError(ValueError):
    """Text that the world's caption grammar cannot produce."""


def _mention(groups: tuple[str | None, ...]) -> Mention:
    art, size, colour, shape = groups
    m = Mention(shape, colour, size)
    if art != "the" and art != article(m.words()):
        raise CaptionParseError(f"wrong article {art!r} before {m.words()!r}")
    return m


def parse_caption(text: str) -> Description:
    """The Description that ``text`` states (for world captions); raises CaptionParseError otherwise."""
    s = text.strip()
    s = s[:-1] if s.endswith(".") else s
    s = s[0].lower() + s[1:] if s else s
    prefix = max((p for p in PREFIXES if s.startswith(p)), key=len)
    s = s[len(prefix):]
    m = _NP_RE.match(s)
    if not m or m.group(1) == "the":
        raise CaptionParseError(f"caption must start with 'a/an <object>': {text!r}")
    mentions, facts, pos = [_mention(m.groups())], [], m.end()
    if m := _FACT_RE.match(s, pos):
        facts.append(Fact(0, _REL_NAME[m.group(1)], 1))
        mentions.append(_mention(m.groups()[1:]))
        pos = m.end()
        if m := _CHAIN_RE.match(s, pos):
            again = _mention(m.groups()[:4])
            if m.group(1) != "the" or again != mentions[1]:
                raise CaptionParseError(f"the chain must name the middle object again with 'the': {text!r}")
            facts.append(Fact(1, _REL_NAME[m.group(5)], 2))
            mentions.append(_mention(m.groups()[5:]))
            pos = m.end()
    while m := _CONN_RE.match(s, pos):
        if m.group(2) == "the":
            raise CaptionParseError(f"extra objects take 'a/an': {text!r}")
        mentions.append(_mention(m.groups()[1:]))
        pos = m.end()
    if pos != len(s):
        raise CaptionParseError(f"cannot parse {s[pos:]!r} in {text!r}")
    return Description(tuple(mentions), tuple(facts))


# ---- truth ------------------------------------------------------------------------------------------------------

def scene_satisfies(scene: Scene, desc: Description, *, strict: bool = True) -> bool:
    """True if some assignment of mentions to distinct objects matches every attribute and every fact.

    strict=True is the bar a positive caption must clear; strict=False is the loose reading a negative caption must
    fail (see clipneg.world.scene).
    """
    objs = scene.objects
    if len(desc.mentions) > len(objs):
        return False
    candidates = [[i for i, o in enumerate(objs) if m.matches(o)] for m in desc.mentions]
    if any(not c for c in candidates):
        return False
    for assign in itertools.product(*candidates):
        if len(set(assign)) != len(assign):
            continue
        if all(relation_holds(objs[assign[f.a]], objs[assign[f.b]], f.rel, strict=strict) for f in desc.facts):
            return True
    return False


def converse(fact: Fact) -> Fact:
    """The same fact stated from the other object ("b right of a" for "a left of b")."""
    return Fact(fact.b, INVERSE[fact.rel], fact.a)


def restate(desc: Description) -> Description | None:
    """The same description stated from the other end: "a R b" -> "b R' a", and a chain "a R1 b, and the b is R2 c"
    -> "c R2' b, and the b is R1' a" (R' the converse); extra mentions keep their place. None without facts.

    It is true of exactly the scenes the original is true of, and it holds the same words as the converse negative
    "a R' b", so only word order tells the two apart (the paraphrase of the shard schema).
    """
    if not desc.facts:
        return None
    n = len(desc.facts) + 1
    mentions = desc.mentions[:n][::-1] + desc.mentions[n:]
    facts = tuple(Fact(k, INVERSE[f.rel], k + 1) for k, f in enumerate(reversed(desc.facts)))
    return Description(mentions, facts)


def order_negatives(desc: Description) -> tuple[Description, ...]:
    """``desc`` and ``restate(desc)`` with every relation turned in place ("a R' b" and "b R a" for "a R b"): the
    words of the paraphrase and of the caption, in an order that says otherwise. Where mentions repeat ("a circle
    left of a circle") one may still be true of the scene; the caller checks. () without facts."""
    if not desc.facts:
        return ()
    return tuple(Description(d.mentions, tuple(Fact(f.a, INVERSE[f.rel], f.b) for f in d.facts))
                 for d in (desc, restate(desc)))


# ---- canonical meaning ---------------------------------------------------------------------------------------

FIELDS: tuple[str, ...] = ("size", "colour", "shape", "relation")


def mention_key(m: Mention, fields: tuple[str, ...] = FIELDS) -> tuple[str, str, str]:
    """(shape, colour, size) of a mention, "" for what it leaves unsaid or what ``fields`` leaves out."""
    if fields is FIELDS:
        return m.shape, m.colour or "", m.size or ""
    return tuple((getattr(m, f) or "") if f in fields else "" for f in ("shape", "colour", "size"))  # type: ignore


def meaning_key(desc: Description, fields: tuple[str, ...] = FIELDS) -> tuple:
    """A canonical form: equal for descriptions that say the same thing in a different order or direction.

    The smallest (mentions, facts) over all orderings of the mentions. Only orderings that sort the mentions can be
    smallest, so only mentions with equal words are permuted among themselves (usually none).
    With a subset of ``fields``, meaning is restricted to those word classes (e.g. colour and shape only: which
    colour goes with which shape).
    """
    keys = [mention_key(m, fields) for m in desc.mentions]
    facts_in = desc.facts if "relation" in fields else ()
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i in sorted(range(len(keys)), key=keys.__getitem__):
        groups.setdefault(keys[i], []).append(i)
    mentions = tuple(sorted(keys))
    best: tuple | None = None
    for parts in itertools.product(*(itertools.permutations(g) for g in groups.values())):
        where = {old: new for new, old in enumerate(i for part in parts for i in part)}
        facts = []
        for f in facts_in:
            a, rel, b = where[f.a], f.rel, where[f.b]
            if rel in ("right", "below"):  # state every fact as left/above
                a, rel, b = b, INVERSE[rel], a
            facts.append((a, rel, b))
        key = tuple(sorted(facts))
        if best is None or key < best:
            best = key
    return mentions, best
