"""Counting helpers shared by the benchmarks: tallies of correct decisions, percentages, macro means, seed spreads."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass
class Tally:
    """Correct decisions out of a total, and how many items were decided on a tie."""

    correct: int = 0
    total: int = 0
    ties: int = 0

    def add(self, correct: bool, tie: bool = False) -> None:
        self.correct += int(correct)
        self.total += 1
        self.ties += int(tie)

    def merge(self, other: Tally) -> Tally:
        return Tally(self.correct + other.correct, self.total + other.total, self.ties + other.ties)

    @property
    def pct(self) -> float:
        return pct(self.correct, self.total)

    def to_dict(self) -> dict[str, int]:
        return {"correct": self.correct, "total": self.total, "ties": self.ties}


def pct(correct: int | float, total: int) -> float:
    """Percentage, NaN for an empty set (JSON writes it as null)."""
    return 100.0 * correct / total if total else math.nan


def macro(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def spread(values: list[float]) -> dict[str, float]:
    """Mean and spread over seeds: population std (ddof=0), sample std (ddof=1), min, max."""
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=0)),
        "std_sample": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": len(arr),
    }
