"""Blind-bias measurement and adversarial refinement of negative captions (SugarCrepe's lesson, PROTOCOLS.md 1, 6).

Text-only scorers (:mod:`.scorers`) say how often a model that never sees the image can tell the positive from the
negative; :mod:`.refine` keeps a subset on which they are at chance; :mod:`.report` makes the per-kind table and
offers the refinement as a two-pass filter over training data (:class:`BiasRefiner`).
"""

from __future__ import annotations

from .refine import RefineConfig, balance, balance_by_kind, cells, magnitude_bins
from .report import BiasConfig, BiasRefiner, blind_report, format_table, score_gaps
from .scorers import (
    CUES,
    SCORERS,
    LengthScorer,
    NgramLM,
    NgramScorer,
    PairwiseScorer,
    Scorer,
    assign_folds,
    blind_accuracy,
    build_scorer,
    cross_val_gaps,
    fit_logistic,
)

__all__ = ["CUES", "SCORERS", "BiasConfig", "BiasRefiner", "LengthScorer", "NgramLM", "NgramScorer",
           "PairwiseScorer", "RefineConfig", "Scorer", "assign_folds", "balance", "balance_by_kind",
           "blind_accuracy", "blind_report", "build_scorer", "cells", "cross_val_gaps", "fit_logistic",
           "format_table", "magnitude_bins", "score_gaps"]
