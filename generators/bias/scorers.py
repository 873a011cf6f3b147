"""Text-only ("blind") scorers: can a model that never sees the image tell the positive from the negative?

SugarCrepe (Hsieh et al. 2023) found that older benchmarks' rule negatives are less plausible or less grammatical than
their positives, so Vera (a plausibility model) and a CoLA grammar classifier beat CLIP without looking at images.
Neither model can be had offline here, so these are stand-ins that look for the same kind of cue:

| scorer           | cue                                                  | fit on                                   |
|------------------|------------------------------------------------------|------------------------------------------|
| ``lm_word``      | word n-gram typicality (mean log-prob per word)      | positive captions of the training folds  |
| ``lm_char``      | character n-gram typicality (mean log-prob per char) | positive captions of the training folds  |
| ``length``       | shorter is more plausible                            | nothing                                  |
| ``pairwise``     | logistic regression over feature differences         | (positive, negative) pairs of the        |
|                  | (n-gram typicality, least typical token, lengths)    | training folds                           |
| ``pairwise_nolen`` | the same without the lengths                       | the same                                 |

Every scorer has ``fit(pairs, corpus=())`` (``pairs``: training (positive, negative) pairs; ``corpus``: more positive
captions of the training folds) and ``score(texts) -> np.ndarray`` (higher = more plausible). The pairwise model is
linear in feature differences with no intercept, so P(a is the positive of {a, b}) = sigmoid(score(a) - score(b)) and
it fits the same interface. :func:`cross_val_gaps` scores every pair with a scorer fitted on the other folds only.
Blind accuracy = share of pairs with score(positive) > score(negative), strictly (a tie is wrong, as in SugarCrepe).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..filters.text import normalize, words

Pair = tuple[str, str]  # (positive, negative)


class Scorer(Protocol):
    name: str

    def fit(self, pairs: Sequence[Pair], corpus: Sequence[str] = ()) -> Scorer: ...

    def score(self, texts: Sequence[str]) -> np.ndarray: ...


def _chars(text: str) -> list[str]:
    return list(" ".join(words(text)))


class NgramLM:
    """An interpolated (Jelinek-Mercer) n-gram model with add-k unigrams, over words or characters.

    ``logprobs(text, loo=True)`` scores a text that is in the training corpus as if it were not (its own counts are
    subtracted once: leave-one-out, exact but for the add-k vocabulary size), so features of training captions are not
    inflated.
    """

    BOS, EOS, UNK = "<s>", "</s>", "<unk>"

    def __init__(self, n: int = 3, level: str = "word", lam: float = 0.7, k: float = 0.1) -> None:
        if level not in ("word", "char"):
            raise ValueError(f"level must be 'word' or 'char' (got {level!r})")
        if n < 1 or not 0.0 <= lam < 1.0 or k <= 0:
            raise ValueError("need n >= 1, 0 <= lam < 1 and k > 0")
        self.n, self.level, self.lam, self.k = n, level, lam, k
        self.counts: Counter = Counter()  # n-gram tuple (any order 1..n) -> count
        self.context: Counter = Counter()  # context tuple -> count of n-grams with that context
        self.total = 0
        self.vocab: set[str] = set()
        self.texts: Counter = Counter()
        self.memo: dict[tuple[str, bool], tuple[float, float]] = {}

    def tokens(self, text: str) -> list[str]:
        toks = words(text) if self.level == "word" else _chars(text)
        return [self.BOS] * (self.n - 1) + toks + [self.EOS]

    def _grams(self, toks: list[str]) -> tuple[Counter, Counter]:
        grams, ctx = Counter(), Counter()
        for i in range(self.n - 1, len(toks)):
            for order in range(1, self.n + 1):
                g = tuple(toks[i - order + 1:i + 1])
                grams[g] += 1
                ctx[g[:-1]] += 1
        return grams, ctx

    def fit(self, texts: Sequence[str]) -> NgramLM:
        self.counts, self.context, self.texts = Counter(self.counts), Counter(self.context), Counter(self.texts)
        self.memo = {}
        for t in texts:
            toks = self.tokens(t)
            grams, ctx = self._grams(toks)
            self.counts.update(grams)
            self.context.update(ctx)
            self.vocab.update(toks[self.n - 1:])
            self.texts[normalize(t)] += 1
        self.total = self.context[()]
        # plain dicts: Counter's __missing__ is a Python call per unseen n-gram, the common case when scoring
        self.counts, self.context, self.texts = dict(self.counts), dict(self.context), dict(self.texts)
        return self

    def logprobs(self, text: str, loo: bool = True) -> np.ndarray:
        """Natural-log probability of each token after the start padding (the end token included)."""
        toks = self.tokens(text)
        own_g, own_c = (self._grams(toks) if loo and self.texts.get(normalize(text), 0) > 0 else ({}, {}))
        cget, xget, og, oc = self.counts.get, self.context.get, own_g.get, own_c.get
        total = max(self.total - oc((), 0), 0)
        kv = self.k * (len(self.vocab) + 1)  # + <unk>
        lam, n = self.lam, self.n
        out = []
        for i in range(n - 1, len(toks)):
            w = toks[i]
            g = (w,)
            p = (max(cget(g, 0) - og(g, 0), 0) + self.k) / (total + kv)
            for order in range(2, n + 1):
                h = tuple(toks[i - order + 1:i])
                ch = xget(h, 0) - oc(h, 0)
                if ch > 0:
                    g = h + (w,)
                    p = lam * (cget(g, 0) - og(g, 0)) / ch + (1 - lam) * p
            out.append(math.log(p))
        return np.asarray(out)


def _positives(pairs: Sequence[Pair], corpus: Sequence[str]) -> list[str]:
    """Each distinct positive once (the corpus usually holds the pairs' positives already), so leave-one-out
    removes a caption's whole contribution."""
    return sorted(set(corpus) | {p for p, _ in pairs})


_LM_CACHE: OrderedDict[tuple, NgramLM] = OrderedDict()
_LM_CACHE_SIZE = 32


def fitted_lm(n: int, level: str, texts: Sequence[str]) -> NgramLM:
    """An :class:`NgramLM` fitted on ``texts``, shared by every scorer that asks for the same model of the same
    corpus (cross-validation fits several scorers per fold on one corpus); a small LRU cache."""
    digest = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()
    key = (n, level, digest)
    if key in _LM_CACHE:
        _LM_CACHE.move_to_end(key)
        return _LM_CACHE[key]
    lm = NgramLM(n, level).fit(texts)
    _LM_CACHE[key] = lm
    while len(_LM_CACHE) > _LM_CACHE_SIZE:
        _LM_CACHE.popitem(last=False)
    return lm


def _lm_features(lm: NgramLM, texts: Sequence[str], loo: bool) -> np.ndarray:
    """(mean, min) log-prob per text, memoised on the model."""
    rows = []
    for t in texts:
        key = (t, loo)
        row = lm.memo.get(key)
        if row is None:
            lp = lm.logprobs(t, loo=loo)
            row = lm.memo[key] = (float(lp.mean()), float(lp.min()))
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(len(texts), 2)


@dataclass
class NgramScorer:
    """Mean log-probability per token under an n-gram model of the training folds' positives: a negative that is
    less typical than its positive scores lower."""

    n: int = 3
    level: str = "word"
    name: str = ""
    lm: NgramLM | None = None

    def __post_init__(self) -> None:
        self.name = self.name or f"lm_{self.level}"

    def fit(self, pairs: Sequence[Pair], corpus: Sequence[str] = ()) -> NgramScorer:
        self.lm = fitted_lm(self.n, self.level, _positives(pairs, corpus))
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if self.lm is None:
            raise RuntimeError(f"{self.name}: call fit() before score()")
        # loo=False: held-out texts are scored by the plain model (a test caption that also occurs in the training
        # corpus would have been seen by the model anyway)
        return _lm_features(self.lm, texts, loo=False)[:, 0]


@dataclass
class LengthScorer:
    """Shorter is more plausible: the cue an add negative carries by construction."""

    name: str = "length"

    def fit(self, pairs: Sequence[Pair], corpus: Sequence[str] = ()) -> LengthScorer:
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return -np.asarray([len(words(t)) for t in texts], dtype=np.float64)


def fit_logistic(x: np.ndarray, l2: float = 1.0, iters: int = 50) -> np.ndarray:
    """Weights of P(y=1 | d) = sigmoid(d . w) for difference rows ``d`` (label 1) and their mirrors ``-d``
    (label 0), no intercept, by Newton's method with an L2 penalty."""
    n, dim = x.shape
    w = np.zeros(dim)
    for _ in range(iters):
        z = x @ w
        p = 1.0 / (1.0 + np.exp(-z))
        # the mirrored rows give the same gradient and Hessian, so n rows stand for 2n
        grad = x.T @ (1.0 - p) - l2 * w
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + l2 * np.eye(dim)
        step = np.linalg.solve(hess, grad)
        w += step
        if np.abs(step).max() < 1e-8:
            break
    return w


@dataclass
class PairwiseScorer:
    """A pairwise classifier "which of the two is the positive?" over differences of per-text features: word and
    character n-gram typicality (mean and least-typical-token log-prob, from models of the training positives,
    leave-one-out on training captions) and, with ``use_length``, the numbers of words and characters."""

    use_length: bool = True
    l2: float = 1.0
    name: str = ""
    w: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.name = self.name or ("pairwise" if self.use_length else "pairwise_nolen")
        self._lms: tuple[NgramLM, NgramLM] | None = None
        self._scale: np.ndarray | None = None

    @property
    def feature_names(self) -> list[str]:
        names = ["word_mean", "word_min", "char_mean", "char_min"]
        return names + (["n_words", "n_chars"] if self.use_length else [])

    def features(self, texts: Sequence[str], loo: bool = False) -> np.ndarray:
        assert self._lms is not None
        cols = [_lm_features(self._lms[0], texts, loo), _lm_features(self._lms[1], texts, loo)]
        if self.use_length:
            cols.append(np.asarray([(len(words(t)), len(t)) for t in texts], dtype=np.float64).reshape(-1, 2))
        return np.concatenate(cols, axis=1)

    def fit(self, pairs: Sequence[Pair], corpus: Sequence[str] = ()) -> PairwiseScorer:
        positives = _positives(pairs, corpus)
        self._lms = (fitted_lm(3, "word", positives), fitted_lm(5, "char", positives))
        if not pairs:
            raise ValueError(f"{self.name}: fit needs at least one (positive, negative) pair")
        d = self.features([p for p, _ in pairs], loo=True) - self.features([n for _, n in pairs], loo=True)
        self._scale = np.maximum(np.sqrt((d ** 2).mean(0)), 1e-6)
        self.w = fit_logistic(d / self._scale, self.l2) / self._scale
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if self.w is None:
            raise RuntimeError(f"{self.name}: call fit() before score()")
        return self.features(texts) @ self.w


SCORERS: dict[str, Callable[[], Scorer]] = {
    "lm_word": lambda: NgramScorer(3, "word"),
    "lm_char": lambda: NgramScorer(5, "char"),
    "length": LengthScorer,
    "pairwise": lambda: PairwiseScorer(use_length=True),
    "pairwise_nolen": lambda: PairwiseScorer(use_length=False),
}
# what each scorer can pick up, for the report
CUES = {"lm_word": "word n-gram typicality", "lm_char": "char n-gram typicality", "length": "length",
        "pairwise": "n-gram typicality + length", "pairwise_nolen": "n-gram typicality (no length)"}


def build_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown blind scorer {name!r}; choose from {', '.join(SCORERS)}")
    return SCORERS[name]()


def fold_of(group: str, folds: int, seed: int) -> int:
    """A fold for a group (normalised positive caption): stable across machines, independent of input order."""
    digest = hashlib.sha256(f"{seed}\x1f{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % folds


def assign_folds(pairs: Sequence[Pair], folds: int = 5, seed: int = 0,
                 groups: Sequence[str] | None = None) -> np.ndarray:
    """Fold id per pair; every pair of one group (by default: one positive caption) lands in the same fold, so a
    positive is never scored by a model that was fitted on it."""
    if folds < 2:
        raise ValueError(f"cross-validation needs folds >= 2 (got {folds})")
    groups = groups if groups is not None else [normalize(p) for p, _ in pairs]
    return np.asarray([fold_of(g, folds, seed) for g in groups], dtype=np.int64)


def cross_val_gaps(factory: Callable[[], Scorer], pairs: Sequence[Pair], *, kinds: Sequence[str] | None = None,
                   folds: int = 5, seed: int = 0, groups: Sequence[str] | None = None,
                   fold_ids: np.ndarray | None = None) -> np.ndarray:
    """score(positive) - score(negative) for every pair, each from a scorer fitted on the other folds.

    With ``kinds``, a scorer is fitted per (fold, kind) on that kind's training pairs (a length cue means the
    opposite for add and for swap); its corpus is every training-fold positive of any kind.
    """
    pairs = list(pairs)
    fold_ids = assign_folds(pairs, folds, seed, groups) if fold_ids is None else np.asarray(fold_ids)
    kinds = list(kinds) if kinds is not None else [""] * len(pairs)
    gaps = np.full(len(pairs), np.nan)
    for f in np.unique(fold_ids):
        train = np.flatnonzero(fold_ids != f)
        corpus = sorted({pairs[i][0] for i in train})
        for kind in sorted(set(kinds)):
            test = [i for i in np.flatnonzero(fold_ids == f) if kinds[i] == kind]
            if not test:
                continue
            train_k = [pairs[i] for i in train if kinds[i] == kind]
            if not train_k:  # nothing of this kind to learn from: no opinion (a tie, counted wrong)
                gaps[test] = 0.0
                continue
            scorer = factory().fit(train_k, corpus=corpus)
            s = scorer.score([pairs[i][0] for i in test] + [pairs[i][1] for i in test])
            gaps[test] = s[:len(test)] - s[len(test):]
    return gaps


def blind_accuracy(gaps: np.ndarray) -> float:
    """Share of pairs the scorer gets right: score(positive) > score(negative), strictly."""
    gaps = np.asarray(gaps)
    return float((gaps > 0).mean()) if len(gaps) else float("nan")
