"""One scorer for every benchmark: items with K images and L captions, a similarity matrix per item.

Protocol (PROTOCOLS.md §1, the official SugarCrepe evaluation, RAIVNLab/sugar-crepe): fp32 without autocast, the
model's eval transform, L2-normalised image and text embeddings, cosine similarity. What we change is only the
schedule, never the arithmetic that decides an item:

- every unique image (path + crop box) is decoded by DataLoader workers and encoded once per run, in batches;
- every unique caption is tokenised and encoded once per run, in batches;
- every unique (image, caption) pair is scored once, so identical inputs give bit-identical scores and a tie between
  two identical captions is an exact tie under every tie policy (ARO-Order's identical perturbations rely on this).

Decisions are made by `decide` / `beats` under a tie policy:
  strict  a tie is wrong (official SugarCrepe `pos > neg`, ARO VG `argmax([false, true]) == 1`, Winoground `>`);
  first   a tie goes to the earliest option, i.e. the positive (ARO-Order's `argmax(...) == 0`, LAION CLIP_benchmark);
  random  a tie is broken uniformly at random from a seeded generator (reported seed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from clipneg.encoder import Encoder, EncoderConfig, EncoderStats

from .items import Item

logger = logging.getLogger(__name__)

TIE_POLICIES = ("strict", "first", "random")


# One config and cache for evaluation and generation (clipneg.encoder); the scorer adds item scoring.
ScorerConfig = EncoderConfig


@dataclass
class ItemScores:
    """The similarities of one item: image_text[k, l] = cos(image k, text l); text_text[i, j] when requested."""

    item: Item
    image_text: np.ndarray
    text_text: np.ndarray | None = None


@dataclass
class ScorerStats(EncoderStats):
    pairs_scored: int = 0
    seconds_total: float = 0.0
    items: int = 0


class Scorer(Encoder):
    """Encodes images and texts once per run (cached across calls, clipneg.encoder) and scores items."""

    def new_stats(self) -> ScorerStats:
        return ScorerStats()

    # ---- items ----------------------------------------------------------------------------------------------------
    def score(self, items: Iterable[Item]) -> list[ItemScores]:
        """Similarity matrices for items, in order. Encodes what is not cached yet, then scores unique pairs once."""
        t0 = time.perf_counter()
        items = list(items)
        self.encode_images(dict.fromkeys(r for it in items for r in it.images))
        self.encode_texts(dict.fromkeys(t for it in items for t in it.texts))
        img, txt = self.image_features(), self.text_features()

        # Every cell of every item as a (left, right) index pair; cells that share inputs share one score.
        it_cells, tt_cells = [], []
        for it in items:
            ii = [self._img_index[r] for r in it.images]
            tt = [self._txt_index[t] for t in it.texts]
            it_cells.append(np.array([(a, b) for a in ii for b in tt], dtype=np.int64).reshape(-1, 2))
            if it.text_text:
                tt_cells.append(np.array([(a, b) for a in tt for b in tt], dtype=np.int64).reshape(-1, 2))
        it_scores, n_it = _pair_scores(img, txt, it_cells)
        tt_scores, n_tt = _pair_scores(txt, txt, tt_cells)
        self.stats.pairs_scored += n_it + n_tt

        out, j = [], 0
        for it, s in zip(items, it_scores, strict=True):
            tt_matrix = None
            if it.text_text:
                tt_matrix = tt_scores[j].reshape(len(it.texts), len(it.texts))
                j += 1
            out.append(ItemScores(it, s.reshape(len(it.images), len(it.texts)), tt_matrix))
        self.stats.items += len(items)
        self.stats.seconds_total += time.perf_counter() - t0
        return out


def _pair_scores(left: torch.Tensor, right: torch.Tensor, cells: list[np.ndarray], chunk: int = 1 << 16
                 ) -> tuple[list[np.ndarray], int]:
    """Dot products for lists of index pairs, each unique pair computed once (float32, like the official loop).

    Returns the scores per list and the number of unique pairs computed."""
    if not cells:
        return [], 0
    sizes = [len(c) for c in cells]
    allc = np.concatenate(cells) if sum(sizes) else np.zeros((0, 2), dtype=np.int64)
    uniq, inverse = np.unique(allc, axis=0, return_inverse=True)
    vals = np.empty(len(uniq), dtype=np.float32)
    for i in range(0, len(uniq), chunk):
        u = torch.from_numpy(uniq[i:i + chunk])
        vals[i:i + chunk] = (left[u[:, 0]] * right[u[:, 1]]).sum(-1).numpy()
    flat = vals[inverse.reshape(-1)]
    return np.split(flat, np.cumsum(sizes)[:-1]), len(uniq)


# ---- decisions ---------------------------------------------------------------------------------------------------
def check_tie_policy(policy: str) -> str:
    if policy not in TIE_POLICIES:
        raise ValueError(f"tie policy must be one of {TIE_POLICIES} (got {policy!r})")
    return policy


def beats(a: float, b: float, policy: str, rng: np.random.Generator | None = None) -> bool:
    """Does score a (the correct side) beat b? Ties resolved by policy (strict: no; first: yes; random: coin)."""
    if a != b:
        return bool(a > b)
    if policy == "strict":
        return False
    if policy == "first":
        return True
    if rng is None:
        raise ValueError("tie policy 'random' needs a numpy Generator")
    return bool(rng.integers(2) == 0)


def decide(scores: Sequence[float] | np.ndarray, target: int = 0, policy: str = "strict",
           rng: np.random.Generator | None = None) -> bool:
    """Is option `target` chosen? scores[target] must be the maximum; a tie at the maximum is resolved by policy.

    strict: wrong on any tie (official `pos > neg`); first: the earliest tied option wins, like np.argmax; random: one
    of the tied options, uniformly (rng consumed only on ties, so runs are reproducible).
    """
    s = np.asarray(scores)
    top = s.max()
    if s[target] < top:
        return False
    tied = np.flatnonzero(s == top)
    if len(tied) == 1:
        return True
    if policy == "strict":
        return False
    if policy == "first":
        return bool(tied[0] == target)
    if rng is None:
        raise ValueError("tie policy 'random' needs a numpy Generator")
    return bool(tied[rng.integers(len(tied))] == target)


def is_tie(scores: Sequence[float] | np.ndarray, target: int = 0) -> bool:
    """Does the target share the maximum with another option?"""
    s = np.asarray(scores)
    return bool(s[target] == s.max() and (s == s[target]).sum() > 1)


def choose_text(scores: ItemScores, policy: str, rng: np.random.Generator | None = None, image: int = 0,
                target: int = 0) -> tuple[bool, bool]:
    """(correct, tie) for "image `image` must pick caption `target` among the item's captions"."""
    row = scores.image_text[image]
    return decide(row, target, policy, rng), is_tie(row, target)


def rank_of(scores: np.ndarray, positive: np.ndarray | Sequence[int] | int, policy: str,
            rng: np.random.Generator | None = None) -> int:
    """0-based rank of the best positive among the negatives (Recall@k counts rank < k). Ties with negatives:
    strict ranks the positive below them, first above them, random at a uniform place among them."""
    s = np.asarray(scores)
    pos_mask = np.zeros(len(s), dtype=bool)
    pos_mask[positive] = True
    best = s[pos_mask].max()
    neg = s[~pos_mask]
    above, tied = int((neg > best).sum()), int((neg == best).sum())
    if tied == 0 or policy == "first":
        return above
    if policy == "strict":
        return above + tied
    if rng is None:
        raise ValueError("tie policy 'random' needs a numpy Generator")
    return above + int(rng.integers(tied + 1))
