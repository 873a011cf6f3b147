"""The rule generator's lexicon: versioned JSON data files of co-hyponym groups, synonyms and hypernyms.

File format (``lexicon/en_core.json`` is the built-in one; a user domain file has the same shape and any subset of
it, and is merged over the built-in one)::

    {"name": "...", "version": "1.0.0",
     "objects":    {"groups": {"animals": {"add": true, "members": ["dog", "cat", ...]}, ...},
                    "synonyms": [["man", "guy", "gentleman"], ...],
                    "hypernyms": {"animal": ["dog", "cat", ...], ...},
                    "plural_only": ["pants", ...], "mass": ["broccoli", ...], "plurals": {"person": "people"}},
     "attributes": {"groups": {"colour": {"applies_to": ["vehicles", ...], "members": ["red", "light blue"]}}, ...},
     "relations":  {"groups": {"posture": {"pos": "VERB", "members": ["sit", "stand", "lie"]}}, ...},
     "remove": ["word", ...]}

Any member of a group may replace any other member of that group, except a synonym of it, a hypernym of it or a
hyponym of it (transitively, through synonym sets): dog -> cat, never dog -> puppy or dog -> animal. Words of a
synonym set share the groups of its members, so "guy" is replaced like "man". Entries are lowercase lemmas;
multi-word entries ("light blue", "in front of", "hot dog") are matched as phrases.

Merging a user file: groups of the same name get the new members (and its keys override), lists are extended,
``plurals`` updated, and words listed in ``remove`` disappear from every group.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BUILTIN = Path(__file__).with_name("lexicon") / "en_core.json"
SECTIONS = ("objects", "attributes", "relations")


class LexiconError(ValueError):
    """A lexicon file that does not follow the format; the message names the file and the entry."""


@dataclass
class Section:
    """One part of the lexicon (objects, attributes or relations), indexed for matching and replacement."""

    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    synonyms: list[list[str]] = field(default_factory=list)
    hypernyms: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self) -> None:
        # canonical id per word: words of one synonym set (joined transitively) share it
        parent: dict[str, str] = {}

        def find(w: str) -> str:
            parent.setdefault(w, w)
            while parent[w] != w:
                parent[w] = parent[parent[w]]
                w = parent[w]
            return w

        for syn in self.synonyms:
            for w in syn[1:]:
                a, b = find(syn[0]), find(w)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        self._canon = {w: find(w) for w in list(parent)}
        self._members: dict[str, set[str]] = {}
        for w in parent:
            self._members.setdefault(self._canon[w], set()).add(w)
        # hypernym closure over canonical ids
        children: dict[str, set[str]] = {}
        for hyper, hypos in self.hypernyms.items():
            children.setdefault(self.canon(hyper), set()).update(self.canon(h) for h in hypos)
        self._anc: dict[str, set[str]] = {}
        for parent_id, kids in children.items():
            for kid in kids:
                self._anc.setdefault(kid, set()).add(parent_id)
        changed = True
        while changed:  # transitive closure; lexicons are small
            changed = False
            for kid, ancs in self._anc.items():
                more = set().union(*(self._anc.get(a, set()) for a in ancs)) - ancs - {kid}
                if more:
                    ancs |= more
                    changed = True
        self._word_groups: dict[str, set[str]] = {}
        for name, g in self.groups.items():
            for w in g["members"]:
                self._word_groups.setdefault(w, set()).add(name)
        for w in list(self._word_groups) + list(self._canon):  # synonyms inherit the groups of their set
            ids = set()
            for syn in self._members.get(self.canon(w), {w}):
                ids |= self._word_groups.get(syn, set())
            if ids:
                self._word_groups[w] = self._word_groups.get(w, set()) | ids
        # every listed word and phrase, as a set view: ``w in entries`` and ``entries & other`` run at C speed,
        # where ``w in section`` is a Python call (the slot finders ask once or twice per token)
        self.entries = self._word_groups.keys()
        self.max_words = max((len(w.split()) for w in self._word_groups), default=1)
        self.first_words = frozenset(w.split(" ")[0] for w in self._word_groups if " " in w)  # of phrases
        self._cand_cache: dict[tuple[str, frozenset[str]], tuple[str, ...]] = {}
        self._rel_cache: dict[str, frozenset[str]] = {}

    def canon(self, word: str) -> str:
        return self._canon.get(word, word)

    def groups_of(self, word: str) -> set[str]:
        return self._word_groups.get(word, set())

    def __contains__(self, word: str) -> bool:
        return word in self._word_groups

    def related(self, a: str, b: str) -> bool:
        """Same word, synonyms, or one a hypernym of the other (transitively)."""
        ca, cb = self.canon(a), self.canon(b)
        return ca == cb or ca in self._anc.get(cb, ()) or cb in self._anc.get(ca, ())

    def synonyms_of(self, word: str) -> set[str]:
        return self._members.get(self.canon(word), {word})

    def candidates(self, word: str, groups: Iterable[str] | None = None) -> list[str]:
        """Replacements of ``word`` from its groups (or the given subset of them), sorted, none related to it."""
        names = self.groups_of(word) if groups is None else frozenset(groups) & self.groups_of(word)
        key = (word, frozenset(names))
        hit = self._cand_cache.get(key)
        if hit is None:
            out = set()
            for name in names:
                out.update(m for m in self.groups[name]["members"] if not self.related(word, m))
            hit = self._cand_cache[key] = tuple(sorted(out))
        return list(hit)

    def related_members(self, word: str) -> frozenset[str]:
        """Every group member related to ``word`` (itself, synonyms, hypernyms, hyponyms)."""
        hit = self._rel_cache.get(word)
        if hit is None:
            hit = self._rel_cache[word] = frozenset(m for g in self.groups.values() for m in g["members"]
                                                    if self.related(word, m))
        return hit

    def to_json(self) -> dict[str, Any]:
        return {"groups": self.groups, "synonyms": self.synonyms, "hypernyms": self.hypernyms, **self.extra}


@dataclass
class Lexicon:
    objects: Section
    attributes: Section
    relations: Section
    sources: list[dict[str, str]]  # [{"path", "name", "version", "sha256"}] in merge order

    @property
    def version(self) -> str:
        return "+".join(f"{s['name']}@{s['version']}" for s in self.sources)

    @property
    def hash(self) -> str:
        """sha256 (16 hex) over the bytes of every file in merge order: changes whenever any data changes."""
        h = hashlib.sha256()
        for s in self.sources:
            h.update(s["sha256"].encode())
        return h.hexdigest()[:16]

    def manifest(self) -> dict[str, Any]:
        return {"version": self.version, "hash": self.hash, "files": self.sources}

    def plurals(self) -> dict[str, str]:
        return self.objects.extra.get("plurals", {})

    def is_mass(self, word: str) -> bool:
        return word in self._mass

    def is_plural_only(self, word: str) -> bool:
        return word in self._plural_only

    def memo(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per key for this lexicon: what the rule engine derives from the lexicon alone
        (candidate lists per entry, groups per word), the same for every caption. Kept on the lexicon, so a new or
        merged lexicon never sees another's values."""
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = make()
        return hit

    def finish(self) -> Lexicon:
        self._memo: dict[tuple, Any] = {}
        for s in (self.objects, self.attributes, self.relations):
            s.build()
        self._mass = set(self.objects.extra.get("mass", []))
        self._plural_only = set(self.objects.extra.get("plural_only", []))
        return self


def _check(data: Any, path: Path) -> None:
    if not isinstance(data, dict):
        raise LexiconError(f"{path}: a lexicon file is a JSON object with name, version and sections {SECTIONS}")
    for key in ("name", "version"):
        if not isinstance(data.get(key), str):
            raise LexiconError(f"{path}: missing string field {key!r} (every lexicon file is versioned)")
    for sec in SECTIONS:
        part = data.get(sec, {})
        if not isinstance(part, dict):
            raise LexiconError(f"{path}: {sec!r} must be an object with groups/synonyms/hypernyms")
        for name, g in part.get("groups", {}).items():
            if not isinstance(g, dict) or not isinstance(g.get("members"), list) or not all(
                    isinstance(m, str) and m == m.strip().lower() and m for m in g["members"]):
                raise LexiconError(f"{path}: {sec}.groups.{name} must be {{\"members\": [lowercase strings], ...}}")
        for syn in part.get("synonyms", []):
            if not isinstance(syn, list) or not all(isinstance(w, str) for w in syn):
                raise LexiconError(f"{path}: {sec}.synonyms must be a list of lists of strings (got {syn!r})")
        for hyper, hypos in part.get("hypernyms", {}).items():
            if not isinstance(hypos, list) or hyper in hypos:
                raise LexiconError(f"{path}: {sec}.hypernyms.{hyper} must be a list of other words")


def _merge(sections: dict[str, Section], data: dict[str, Any]) -> None:
    for sec in SECTIONS:
        part = data.get(sec, {})
        target = sections[sec]
        for name, g in part.get("groups", {}).items():
            old = target.groups.get(name)
            if old is None:
                target.groups[name] = {**g, "members": list(dict.fromkeys(g["members"]))}
            else:
                members = list(dict.fromkeys(old["members"] + g["members"]))
                target.groups[name] = {**old, **g, "members": members}
        target.synonyms.extend(list(s) for s in part.get("synonyms", []))
        for hyper, hypos in part.get("hypernyms", {}).items():
            target.hypernyms[hyper] = list(dict.fromkeys(target.hypernyms.get(hyper, []) + hypos))
        for key, value in part.items():
            if key in ("groups", "synonyms", "hypernyms"):
                continue
            if isinstance(value, dict):
                target.extra[key] = {**target.extra.get(key, {}), **value}
            elif isinstance(value, list):
                target.extra[key] = list(dict.fromkeys(target.extra.get(key, []) + value))
            else:
                target.extra[key] = value
    removed = set(data.get("remove", []))
    if removed:
        for target in sections.values():
            for g in target.groups.values():
                g["members"] = [m for m in g["members"] if m not in removed]


def load_lexicon(paths: Sequence[str | Path] = (), builtin: bool = True) -> Lexicon:
    """The built-in lexicon with the user files ``paths`` merged over it, in order."""
    files = ([BUILTIN] if builtin else []) + [Path(p) for p in paths]
    if not files:
        raise LexiconError("no lexicon: keep the built-in one or pass at least one lexicon file")
    sections = {s: Section() for s in SECTIONS}
    sources = []
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise LexiconError(f"cannot read lexicon file {path}: {e}") from e
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LexiconError(f"{path} is not valid UTF-8 JSON: {e}") from e
        _check(data, path)
        _merge(sections, data)
        sources.append({"path": path.name if path == BUILTIN else str(path), "name": data["name"],
                        "version": data["version"], "sha256": hashlib.sha256(raw).hexdigest()})
    return Lexicon(sections["objects"], sections["attributes"], sections["relations"], sources).finish()
