"""Client-side validation of LLM replies: every reply is checked, whatever the server promised about schemas.

A reply is accepted or rejected with one stable reason (the stage counts ``(kind, "llm", reason)``):

| reason          | what came back                                                                    | re-ask? |
|-----------------|-----------------------------------------------------------------------------------|---------|
| ``truncated``   | ``finish_reason == "length"``: cut by max_tokens                                   | yes     |
| ``empty``       | no text, or no new caption in the JSON                                            | yes     |
| ``not json``    | no JSON object in the text (code fences and prose around the object are tolerated) | yes     |
| ``abstain``     | the model said the caption allows no such edit                                    | no      |
| ``wrong kind``  | the reply names another kind                                                      | yes     |
| ``bad edit``    | the edit object lacks a field the kind needs                                      | yes     |
| ``echo``        | the new caption is the input caption (ignoring case, spacing, punctuation)        | yes     |
| ``edit mismatch`` | the named edit is not what the captions show (``from`` not in the input ...)     | yes     |
| ``too long``    | over CLIP's 77-token context                                                      | yes     |
| ``duplicate``   | equal to a negative or paraphrase the sample already has                          | yes     |
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import cache
from typing import Any

from .prompts import PARAPHRASE, Template

CLIP_CONTEXT = 77  # open_clip's context length, start and end tokens included
NO_REASK = frozenset({"abstain"})

_WORD = re.compile(r"[^\w']+")
# CLIP's BPE pre-tokenizer splits like this (open_clip.tokenizer.SimpleTokenizer.pat, without the regex module).
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.IGNORECASE)


def norm(text: str) -> str:
    return _WORD.sub(" ", text.lower()).strip()


def contains(text: str, phrase: str) -> bool:
    p = norm(phrase)
    return bool(p) and f" {p} " in f" {norm(text)} "


def approx_clip_tokens(text: str) -> int:
    """An upper-bound-leaning estimate of CLIP BPE tokens (without start/end): one per piece, plus one per 4
    letters beyond the first 6 for the long rare words that BPE splits."""
    return sum(1 + max(0, len(p) - 6) // 4 for p in _CLIP_PIECES.findall(text.lower()))


@cache
def _open_clip_tokenizer() -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def open_clip_tokens(text: str) -> int:
    """Exact CLIP BPE token count (without start/end) by open_clip's tokenizer."""
    return len(_open_clip_tokenizer().encode(text))


TOKEN_COUNTERS: dict[str, Callable[[str], int]] = {"open_clip": open_clip_tokens, "approx": approx_clip_tokens}


@dataclass(frozen=True)
class Verdict:
    text: str | None  # the accepted caption, or None
    reason: str | None = None  # why it was rejected
    edit: dict[str, str] | None = None

    @property
    def reask(self) -> bool:
        return self.reason is not None and self.reason not in NO_REASK


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text``: tolerates code fences and prose around it, as models without
    constrained decoding write them."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        return obj if isinstance(obj, dict) else None
    return None


def _clean(caption: str) -> str:
    return " ".join(caption.split()).strip().strip('"').strip()


def _edit_matches(kind: str, edit: dict[str, str], before: str, after: str) -> bool:
    if kind.startswith("replace_"):
        return contains(before, edit["from"]) and contains(after, edit["to"]) and norm(edit["from"]) != norm(
            edit["to"])
    if kind.startswith("swap_"):
        a, b = edit["first"], edit["second"]
        return norm(a) != norm(b) and all(contains(t, p) for t in (before, after) for p in (a, b))
    if kind.startswith("add_"):
        return contains(after, edit["added"]) and not contains(before, edit["added"])
    return True


def check_reply(template: Template, caption: str, text: str | None, finish_reason: str | None, *,
                taken: Collection[str] = (), count_tokens: Callable[[str], int] = approx_clip_tokens,
                context: int = CLIP_CONTEXT) -> Verdict:
    """Accept or reject one reply for ``caption``; ``taken`` holds normalised captions the sample already has."""
    if finish_reason == "length":
        return Verdict(None, "truncated")
    if not text or not text.strip():
        return Verdict(None, "empty")
    obj = parse_json_object(text)
    if obj is None:
        return Verdict(None, "not json")
    if obj.get("abstain") is True:
        return Verdict(None, "abstain")
    if obj.get("kind") != template.kind:
        return Verdict(None, "wrong kind")
    new = obj.get("caption")
    if not isinstance(new, str) or not _clean(new):
        return Verdict(None, "empty")
    new = _clean(new)
    edit = obj.get("edit") if template.kind != PARAPHRASE else {}
    if not isinstance(edit, dict) or any(not isinstance(edit.get(f), str) or not edit[f].strip()
                                         for f in template.edit_fields):
        return Verdict(None, "bad edit")
    if norm(new) == norm(caption):
        return Verdict(None, "echo")
    if not _edit_matches(template.kind, edit, caption, new):
        return Verdict(None, "edit mismatch")
    if len(new) > 8 * context or count_tokens(new) + 2 > context:
        return Verdict(None, "too long")
    if norm(new) in taken:
        return Verdict(None, "duplicate")
    return Verdict(new, None, {f: edit[f] for f in template.edit_fields})
