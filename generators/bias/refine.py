"""Adversarial refinement (SugarCrepe, Hsieh et al. 2023): keep a subset on which the blind scorers are at chance.

SugarCrepe's ``adversarial_refine`` bins every pair by two text-only models' score gaps (positive minus negative: Vera
and a grammar model) and, for each cell of the grid, keeps as many pairs from it as from its mirror cell (both gaps'
signs flipped, same magnitudes), sampling the larger side. In the kept set each model then prefers the positive as
often as the negative, whatever the magnitude: ~50% blind accuracy. It kept 17-53% of its pools.

:func:`balance` does the same for any number of scorers: per scorer, the sign of the gap (+, -, or 0 for a tie) and
a magnitude bin (quantiles of that scorer's non-zero |gap|, so scorers on any scale share one grid); a cell is the
tuple of (sign, bin) over scorers, its mirror flips every sign (a 0 stays 0), and equal counts are kept from the two,
chosen with a seeded generator. A cell that is its own mirror (every gap a tie) is kept whole.

Balancing makes the balanced scorers 50% by construction (a tie counted wrong: at most 50%), so the refinement must
be judged by a scorer it did not balance on: another scorer, or the same model refitted on the kept set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RefineConfig:
    """bins: magnitude bins per scorer; seed: the sampling seed."""

    bins: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise ValueError(f"bins must be >= 1 (got {self.bins})")


def magnitude_bins(gap: np.ndarray, bins: int) -> np.ndarray:
    """Quantile bin (0..bins-1) of |gap| among the non-zero gaps; 0 for ties."""
    mag = np.abs(np.asarray(gap, dtype=np.float64))
    out = np.zeros(len(mag), dtype=np.int64)
    nz = mag > 0
    if nz.any() and bins > 1:
        edges = np.quantile(mag[nz], np.linspace(0, 1, bins + 1)[1:-1])
        out[nz] = np.searchsorted(edges, mag[nz], side="right")
    return out


def cells(gaps: np.ndarray, bins: int) -> list[tuple[tuple[int, int], ...]]:
    """The grid cell of each pair: ((sign, bin) per scorer)."""
    gaps = np.asarray(gaps, dtype=np.float64)
    if gaps.ndim == 1:
        gaps = gaps[:, None]
    if np.isnan(gaps).any():
        raise ValueError("score gaps contain NaN: every pair needs a gap from every scorer")
    signs = np.sign(gaps).astype(np.int64)
    mags = np.stack([magnitude_bins(gaps[:, j], bins) for j in range(gaps.shape[1])], axis=1)
    return [tuple(zip(s.tolist(), b.tolist(), strict=True)) for s, b in zip(signs, mags, strict=True)]


def balance(gaps: np.ndarray, config: RefineConfig | None = None) -> np.ndarray:
    """Sorted indices of the kept pairs; ``gaps``: (n,) or (n, scorers) score(positive) - score(negative)."""
    cfg = config or RefineConfig()
    rng = np.random.default_rng(cfg.seed)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, c in enumerate(cells(gaps, cfg.bins)):
        groups[c].append(i)
    keep: list[int] = []
    done: set[tuple] = set()
    for c in sorted(groups):  # sorted: the same draws for the same gaps, whatever the dict order
        if c in done:
            continue
        mirror = tuple((-s, b) for s, b in c)
        done.update((c, mirror))
        a, b = groups[c], groups.get(mirror, [])
        if mirror == c:
            keep.extend(a)
            continue
        n = min(len(a), len(b))
        if n == 0:
            continue
        for side in (a, b):
            keep.extend(side if len(side) == n else rng.choice(side, n, replace=False).tolist())
    return np.asarray(sorted(keep), dtype=np.int64)


def balance_by_kind(gaps: np.ndarray, kinds: Sequence[str], config: RefineConfig | None = None,
                    columns: Mapping[str, Sequence[int]] | None = None) -> np.ndarray:
    """:func:`balance` within each kind (as SugarCrepe refined each subset on its own); sorted kept indices.
    ``columns``: per kind, the columns of ``gaps`` (scorers) to balance it on (default: all)."""
    gaps = np.asarray(gaps, dtype=np.float64)
    if gaps.ndim == 1:
        gaps = gaps[:, None]
    kinds = np.asarray(list(kinds))
    keep = []
    for kind in sorted(set(kinds.tolist())):
        idx = np.flatnonzero(kinds == kind)
        cols = list(columns[kind]) if columns is not None and kind in columns else list(range(gaps.shape[1]))
        keep.append(idx[balance(gaps[np.ix_(idx, cols)], config)])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
