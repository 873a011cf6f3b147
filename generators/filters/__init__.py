"""Caption filters of ``clipneg generate``: structural checks (:mod:`.text`) and false-negative rejection by
sentence embedding (:mod:`.paraphrase`). Both are Stages (generators.base): they remove negatives, never samples,
and count each removal by (kind, filter, reason)."""

from __future__ import annotations

from .keep import IMAGES_DROPPED, drop_negatives, keep_and_count
from .paraphrase import (
    BUNDLED_MINILM,
    Calibration,
    ParaphraseFilter,
    ParaphraseFilterConfig,
    SentenceTransformerEmbedder,
    calibrate,
    calibrate_pairs,
    load_embedder,
    pair_similarity,
)
from .text import (
    CaptionFilter,
    CaptionFilterConfig,
    check_negative,
    is_single_insertion,
    is_single_replacement,
    normalize,
    same_bag,
    words,
)

__all__ = ["BUNDLED_MINILM", "IMAGES_DROPPED", "Calibration", "CaptionFilter", "CaptionFilterConfig",
           "ParaphraseFilter", "ParaphraseFilterConfig", "SentenceTransformerEmbedder", "calibrate",
           "calibrate_pairs", "check_negative", "drop_negatives", "is_single_insertion", "is_single_replacement",
           "keep_and_count", "load_embedder", "normalize", "pair_similarity", "same_bag", "words"]
