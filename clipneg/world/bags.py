"""How often plain contrastive training meets a minimal pair by chance (the "free hard negative" rate).

A feasibility run found that a small world (6 shapes x 6 colours, 2 objects, batch 128) does not reproduce CLIP's
bag-of-words failure: about half of its batches held two captions with the same words in a different arrangement
("a red circle left of a blue square" / "a blue circle left of a red square"), so the plain contrastive loss
already had to bind colour to shape. :func:`same_bag_rate` measures that rate for any set of examples.

Two captions form a minimal pair when their bags of content words are equal (colours, sizes, shapes and relation
names, with relation wording normalised, so "left of" and "to the left of" are the same word) while their meanings
differ (canonical descriptions differ, so "a left of b" and "b right of a" are the same meaning). Template words
("there is", "a picture of") are ignored on purpose: a text encoder quickly learns to ignore them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from clipneg.world.captions import FIELDS, Caption, Description, meaning_key, mention_key


class _HasCaption(Protocol):
    caption: Caption


def _check_fields(fields: tuple[str, ...]) -> None:
    if not fields or any(f not in FIELDS for f in fields):
        raise ValueError(f"fields must be a non-empty subset of {FIELDS} (got {fields})")


def content_bag(desc: Description, fields: tuple[str, ...] = FIELDS) -> tuple[str, ...]:
    """The sorted multiset of content words of a description (only the word classes in ``fields``)."""
    words = [w for m in desc.mentions for w in mention_key(m, fields) if w]
    if "relation" in fields:
        words += [f.rel for f in desc.facts]
    return tuple(sorted(words))


def same_bag_rate(examples: Sequence[_HasCaption], batch_size: int = 128, *, n_batches: int = 500, seed: int = 0,
                  fields: tuple[str, ...] = FIELDS) -> float:
    """Fraction of random batches (drawn without replacement) holding at least one minimal pair (see module doc).

    ``fields`` picks the word classes that make up the bag; ``("colour", "shape")`` measures binding pairs alone.
    """
    _check_fields(fields)
    if len(examples) < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} examples (got {len(examples)})")
    bag_ids: dict[tuple, int] = {}
    meaning_ids: dict[tuple, int] = {}
    bags = np.empty(len(examples), np.int64)
    meanings = np.empty(len(examples), np.int64)
    for i, ex in enumerate(examples):
        bags[i] = bag_ids.setdefault(content_bag(ex.caption.desc, fields), len(bag_ids))
        meanings[i] = meaning_ids.setdefault(meaning_key(ex.caption.desc, fields), len(meaning_ids))
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_batches):
        idx = rng.choice(len(examples), size=batch_size, replace=False)
        # A batch has a minimal pair iff some bag occurs with two or more distinct meanings.
        pairs = np.unique(np.stack([bags[idx], meanings[idx]], axis=1), axis=0)
        hits += int(len(np.unique(pairs[:, 0])) < len(pairs))
    return hits / n_batches
