"""``CaptionFilter``: structural checks on negative captions, each removal counted by its reason.

    from clipneg.generators.filters import CaptionFilter, CaptionFilterConfig
    filt = CaptionFilter(CaptionFilterConfig(min_words=3))
    samples = filt(samples)          # failing neg_texts are removed, with the neg_images that depict them

Checks, in order (the first failing one is the reason counted as ``(kind, "caption_filter", reason)``):

| reason                        | rejects a negative when                                                        |
|-------------------------------|--------------------------------------------------------------------------------|
| ``equals positive``           | it is the positive after :func:`normalize` (lowercase, no punctuation/spaces)  |
| ``equals a paraphrase``       | it is one of the sample's paraphrases after :func:`normalize` (a false negative)|
| ``too short``                 | fewer than ``min_words`` words                                                 |
| ``too long``                  | more than ``max_words`` words                                                  |
| ``too many tokens``           | more than ``max_tokens`` CLIP tokens, start and end included                   |
| ``bag changed``               | a swap / shuffle kind whose bag of words differs from the positive's           |
| ``not a single replacement``  | a replace kind that does not change exactly one contiguous slot of words       |
| ``not a single insertion``    | an add kind that does not insert exactly one contiguous span (or deletes)      |
| ``duplicate``                 | it equals (after :func:`normalize`) a negative kept earlier in the same sample |

Kinds without a structural rule (``negate``, ``count``, ``spatial``, ``llm_free``, ``mined``, ``other``) get every
check but the kind check. ``coreference`` (default on) accepts the edits a caption that mentions a thing twice needs,
as the built-in world writes them: the same replacement or the same insertion at every mention ("the red star ... the
red star" -> "the white star ... the white star"), a swap that moves a repeated mention with its word (the bag of
word types is kept, counts may move), and "a"/"an" following the next word. ``coreference=False`` is the strict
reading: one slot, one span, the exact multiset of words.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from difflib import SequenceMatcher
from typing import Any

from clipneg.schema import Sample
from clipneg.shards import Quarantined

from ..base import StageStats, config_hash
from ..llm.checks import TOKEN_COUNTERS
from .keep import keep_and_count

VERSION = "1.0.0"
FILTER = "caption_filter"
R_EQUAL, R_PARAPHRASE, R_DUPLICATE = "equals positive", "equals a paraphrase", "duplicate"
R_SHORT, R_LONG, R_TOKENS = "too short", "too long", "too many tokens"
R_BAG, R_REPLACE, R_ADD = "bag changed", "not a single replacement", "not a single insertion"

BAG_KINDS = frozenset({"swap_obj", "swap_att", "swap_chunks", "swap_phrases", "swap_tags", "shuffle_nouns_and_adj",
                       "shuffle_allbut_nouns_and_adj", "shuffle_within_trigrams", "shuffle_trigrams"})
REPLACE_KINDS = frozenset({"replace_obj", "replace_att", "replace_rel"})
ADD_KINDS = frozenset({"add_obj", "add_att"})

_NOT_ALNUM = re.compile(r"[\W_]+")
_WORDS = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def normalize(text: str) -> str:
    """The identity key of a caption: lowercase, punctuation and spaces removed ("A red-cube." == "a red cube")."""
    return _NOT_ALNUM.sub("", text.lower())


def words(text: str) -> list[str]:
    """Lowercase words, punctuation dropped (apostrophes inside a word kept: "dog's")."""
    return _WORDS.findall(text.lower())


def same_bag(a: Sequence[str], b: Sequence[str]) -> bool:
    return Counter(a) == Counter(b)


def _article(ws: Sequence[str]) -> list[str]:
    return ["a" if w == "an" else w for w in ws]


def is_single_insertion(pos: Sequence[str], neg: Sequence[str], *, allow_repeated: bool = False) -> bool:
    """``neg`` = ``pos`` with one contiguous non-empty span inserted, nothing deleted or changed; with
    ``allow_repeated``, the same span inserted at several places also counts."""
    if len(neg) <= len(pos):
        return False
    if allow_repeated:
        ops = [op for op in SequenceMatcher(None, list(pos), list(neg), autojunk=False).get_opcodes()
               if op[0] != "equal"]
        if ops and all(tag == "insert" for tag, *_ in ops) and len({tuple(neg[j1:j2]) for *_, j1, j2 in ops}) == 1:
            return True
    prefix = 0
    while prefix < len(pos) and pos[prefix] == neg[prefix]:
        prefix += 1
    suffix = 0
    while suffix < len(pos) and pos[len(pos) - 1 - suffix] == neg[len(neg) - 1 - suffix]:
        suffix += 1
    # a split point i with pos[:i] a prefix of neg and pos[i:] a suffix of neg exists iff the two cover pos
    return prefix + suffix >= len(pos)


def is_single_replacement(pos: Sequence[str], neg: Sequence[str], *, allow_repeated: bool = False) -> bool:
    """``neg`` = ``pos`` with one contiguous slot of words replaced by other (non-empty) words; with
    ``allow_repeated``, the same substitution applied at several places also counts."""
    ops = [op for op in SequenceMatcher(None, list(pos), list(neg), autojunk=False).get_opcodes() if op[0] != "equal"]
    if not ops or any(tag != "replace" for tag, *_ in ops):
        return False
    if len(ops) == 1:
        return True
    subs = {(tuple(pos[i1:i2]), tuple(neg[j1:j2])) for _, i1, i2, j1, j2 in ops}
    return allow_repeated and len(subs) == 1


@dataclass(frozen=True)
class CaptionFilterConfig:
    """Thresholds of the checks in the module docstring. ``tokenizer``: "approx" (a regex estimate that leans
    high; no dependency) or "open_clip" (exact BPE count). ``check_kinds``: apply the per-kind structural rules."""

    min_words: int = 2
    max_words: int = 60
    max_tokens: int = 77
    tokenizer: str = "approx"
    check_kinds: bool = True
    coreference: bool = True

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKEN_COUNTERS:
            raise ValueError(f"tokenizer must be one of {sorted(TOKEN_COUNTERS)} (got {self.tokenizer!r})")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= min_words <= max_words (got {self.min_words}, {self.max_words})")
        if self.max_tokens < 3:
            raise ValueError(f"max_tokens counts start and end tokens: it must be >= 3 (got {self.max_tokens})")


def check_negative(positive: str, negative: str, kind: str, config: CaptionFilterConfig) -> str | None:
    """The reason ``negative`` fails as a negative of ``positive`` (sample-level checks aside), or None."""
    if normalize(negative) == normalize(positive):
        return R_EQUAL
    neg_words = words(negative)
    if len(neg_words) < config.min_words:
        return R_SHORT
    if len(neg_words) > config.max_words:
        return R_LONG
    if TOKEN_COUNTERS[config.tokenizer](negative) + 2 > config.max_tokens:
        return R_TOKENS
    if config.check_kinds:
        pos_words, co = words(positive), config.coreference
        if co:
            pos_words, neg_words = _article(pos_words), _article(neg_words)
        if kind in BAG_KINDS and not (set(pos_words) == set(neg_words) if co else same_bag(pos_words, neg_words)):
            return R_BAG
        if kind in REPLACE_KINDS and not is_single_replacement(pos_words, neg_words, allow_repeated=co):
            return R_REPLACE
        if kind in ADD_KINDS and not is_single_insertion(pos_words, neg_words, allow_repeated=co):
            return R_ADD
    return None


class CaptionFilter:
    """Removes negative captions that fail the checks of the module docstring (and the images depicting them)."""

    name = FILTER
    version = VERSION

    def __init__(self, config: CaptionFilterConfig | None = None) -> None:
        self.config = config or CaptionFilterConfig()
        self.stats = StageStats()

    def manifest(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        return {"name": self.name, "version": self.version, "config": cfg, "config_hash": config_hash(cfg),
                "kind_rules": {"bag": sorted(BAG_KINDS), "single_replacement": sorted(REPLACE_KINDS),
                               "single_insertion": sorted(ADD_KINDS)}}

    def __call__(self, chunk: Sequence[Sample]) -> list[Sample | Quarantined]:
        out: list[Sample | Quarantined] = []
        for s in chunk:
            paraphrases = {normalize(p.text) for p in s.paraphrases}
            seen: set[str] = set()
            keep = []
            for t in s.neg_texts:
                self.stats.produced[t.kind] += 1
                key = normalize(t.text)
                reason = check_negative(s.caption, t.text, t.kind, self.config)
                if reason is None and key in paraphrases:
                    reason = R_PARAPHRASE
                if reason is None and key in seen:
                    reason = R_DUPLICATE
                if reason is None:
                    seen.add(key)
                    self.stats.kept[t.kind] += 1
                else:
                    self.stats.reject(t.kind, self.name, reason)
                keep.append(reason is None)
            keep_and_count(s, keep, self.stats)
            out.append(s)
        return out
