"""The blind-bias report and :class:`BiasRefiner`, the refinement as a two-pass filter over training data.

    from clipneg.generators.bias import BiasConfig, blind_report, format_table
    rep = blind_report(pairs, kinds, BiasConfig())         # pairs: [(positive, negative)], kinds: one per pair
    print(format_table(rep))

Per kind: blind accuracy of every scorer on held-out folds before refinement; the refinement
(:func:`~.refine.balance_by_kind` on the ``balance_on`` scorers' gaps, and for every kind that is not longer than
its positive by construction on the ``balance_on_with_length`` ones too); blind accuracy after it of every scorer
(the balanced ones are ~50% by construction and marked), and of the ``refit`` scorers fitted again by
cross-validation on the kept pairs only (a new blind model trained on the refined data: the honest judge); the share
kept; the length gap (mean words of negative minus positive) and the share of negatives with the positive's bag of
words, before and after.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from clipneg.schema import Sample
from clipneg.shards import Quarantined

from ..base import StageStats, config_hash
from ..filters.keep import keep_and_count
from ..filters.text import normalize, same_bag, words
from .refine import RefineConfig, balance_by_kind
from .scorers import CUES, SCORERS, blind_accuracy, cross_val_gaps

VERSION = "1.1.0"
REFINER = "bias_refiner"
R_BIAS = "blind-scorer bias"


@dataclass(frozen=True)
class BiasConfig:
    """scorers: the blind scorers reported; balance_on: those the refinement balances every kind on (no length
    cue: an add negative is longer by construction, so balancing on length would drop nearly every add pair);
    balance_on_with_length: those it also balances every other kind on; refit: scorers fitted again on the kept
    pairs to judge the refinement; folds/seed: the cross-validation."""

    scorers: tuple[str, ...] = ("lm_word", "lm_char", "length", "pairwise", "pairwise_nolen")
    balance_on: tuple[str, ...] = ("lm_word", "pairwise_nolen")
    refit: tuple[str, ...] = ("pairwise", "pairwise_nolen")
    folds: int = 5
    seed: int = 0
    refine: RefineConfig = field(default_factory=RefineConfig)
    # every kind but ``longer_by_construction`` is balanced on these too: a replacement phrase of another length
    # ("light blue" for "red", "in front of" for "on") is a cue that n-gram scores plus length find even when each
    # is balanced on its own, while an add negative is longer by construction, and balancing it on length would drop
    # nearly every pair
    balance_on_with_length: tuple[str, ...] = ("pairwise",)
    longer_by_construction: tuple[str, ...] = ("add_obj", "add_att")

    def balanced_on(self, kind: str) -> tuple[str, ...]:
        """The scorers the refinement balances pairs of this kind on."""
        if kind in self.longer_by_construction:
            return self.balance_on
        return tuple(dict.fromkeys([*self.balance_on, *self.balance_on_with_length]))

    def __post_init__(self) -> None:
        for name in (*self.scorers, *self.balance_on, *self.balance_on_with_length, *self.refit):
            if name not in SCORERS:
                raise ValueError(f"unknown blind scorer {name!r}; choose from {', '.join(SCORERS)}")
        missing = [b for b in self.balance_on if b not in self.scorers]
        if missing or not self.balance_on:
            raise ValueError(f"balance_on must be a non-empty subset of scorers (missing: {missing})")


def score_gaps(pairs: Sequence[tuple[str, str]], kinds: Sequence[str], names: Sequence[str], *, folds: int = 5,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Held-out gaps score(positive) - score(negative) of each named scorer (fitted per fold and kind)."""
    return {n: cross_val_gaps(SCORERS[n], pairs, kinds=kinds, folds=folds, seed=seed) for n in names}


def _length_gap(pairs: Sequence[tuple[str, str]]) -> float:
    return float(np.mean([len(words(n)) - len(words(p)) for p, n in pairs])) if pairs else float("nan")


def _same_bag(pairs: Sequence[tuple[str, str]]) -> float:
    return float(np.mean([same_bag(words(p), words(n)) for p, n in pairs])) if pairs else float("nan")


def blind_report(pairs: Sequence[tuple[str, str]], kinds: Sequence[str], config: BiasConfig | None = None,
                 gaps: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The report of the module docstring as JSON-able data (``keep``: kept pair indices)."""
    cfg = config or BiasConfig()
    pairs, kinds = list(pairs), list(kinds)
    if len(pairs) != len(kinds):
        raise ValueError(f"{len(pairs)} pairs but {len(kinds)} kinds")
    balanced = {k: cfg.balanced_on(k) for k in set(kinds)}
    names = list(dict.fromkeys([*cfg.scorers, *(n for ns in balanced.values() for n in ns)]))
    gaps = gaps or score_gaps(pairs, kinds, names, folds=cfg.folds, seed=cfg.seed)
    cols = list(dict.fromkeys(n for ns in balanced.values() for n in ns))
    keep = balance_by_kind(np.stack([gaps[n] for n in cols], axis=1), kinds, cfg.refine,
                           columns={k: [cols.index(n) for n in ns] for k, ns in balanced.items()})
    kept_pairs = [pairs[i] for i in keep]
    kept_kinds = [kinds[i] for i in keep]
    # a new blind model trained on the refined pairs, other folds: does a cue survive the refinement?
    refit = score_gaps(kept_pairs, kept_kinds, cfg.refit, folds=cfg.folds, seed=cfg.seed + 1) if kept_pairs else {}
    kinds_arr, kept_kinds_arr = np.asarray(kinds), np.asarray(kept_kinds)
    per_kind: dict[str, Any] = {}
    for kind in sorted(set(kinds)):
        idx = np.flatnonzero(kinds_arr == kind)
        kidx = keep[kinds_arr[keep] == kind] if len(keep) else keep
        ridx = np.flatnonzero(kept_kinds_arr == kind)
        row: dict[str, Any] = {
            "n": len(idx), "kept": len(kidx), "keep_share": len(kidx) / len(idx),
            "before": {n: blind_accuracy(gaps[n][idx]) for n in cfg.scorers},
            "after": {n: blind_accuracy(gaps[n][kidx]) for n in cfg.scorers},
            "after_refit": {n: blind_accuracy(refit[n][ridx]) for n in cfg.refit} if len(ridx) else {},
            "length_gap": {"before": _length_gap([pairs[i] for i in idx]),
                           "after": _length_gap([pairs[i] for i in kidx])},
            "same_bag": {"before": _same_bag([pairs[i] for i in idx]), "after": _same_bag([pairs[i] for i in kidx])},
        }
        judges = {f"{n} (refit)": v for n, v in row["after_refit"].items()}
        row["balanced_on"] = list(balanced[kind])
        judges.update({n: v for n, v in row["after"].items() if n not in balanced[kind]})
        row["judges_after"] = judges
        row["hardest_judge_after"] = max(judges.items(), key=lambda kv: kv[1]) if judges else None
        per_kind[kind] = row
    return {"config": {**asdict(cfg), "cues": {n: CUES[n] for n in cfg.scorers}}, "n": len(pairs),
            "kept": len(keep), "kinds": per_kind, "keep": keep.tolist()}


def _pct(x: float) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def format_table(report: dict[str, Any], title: str = "") -> str:
    """Markdown: one row per kind; before -> after per scorer (* = balanced on, so ~50 by construction)."""
    cfg = report["config"]
    names, refit = cfg["scorers"], cfg["refit"]
    head = ["kind", "n", "kept %"] + [f"{n}{'*' if n in cfg['balance_on'] else ''}" for n in names]
    for n in cfg["balance_on_with_length"]:
        if n in names and n not in cfg["balance_on"]:
            head[3 + names.index(n)] += f"* (not {', '.join(cfg['longer_by_construction'])})"
    head += [f"{n} refit" for n in refit] + ["len gap", "same bag %"]
    lines = ([f"### {title}"] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, r in report["kinds"].items():
        cols = [kind, str(r["n"]), _pct(r["keep_share"])]
        cols += [f"{_pct(r['before'][n])} -> {_pct(r['after'][n])}" for n in names]
        cols += [_pct(r["after_refit"].get(n)) for n in refit]
        cols += [f"{r['length_gap']['before']:+.2f} -> {r['length_gap']['after']:+.2f}",
                 f"{_pct(r['same_bag']['before'])} -> {_pct(r['same_bag']['after'])}"]
        lines.append("| " + " | ".join(cols) + " |")
    lines.append("")
    lines.append("cells: blind accuracy % before -> after refinement (held-out folds; positive scored strictly "
                 "higher); * balanced on; refit: refitted by cross-validation on the kept pairs; cues: "
                 + "; ".join(f"{n} = {c}" for n, c in cfg["cues"].items()))
    return "\n".join(lines)


class BiasRefiner:
    """Adversarial refinement as a filter over training data, in two passes:

        refiner = BiasRefiner(BiasConfig())
        report = refiner.fit(samples)        # pass 1: all (caption, negative) pairs, held-out gaps, balanced subset
        samples = refiner(samples)           # pass 2 (a Stage): negatives outside the subset are removed

    A negative is identified by (sample key, negative text, kind). Negatives the refiner was not fitted on are kept
    and counted in ``stats.extra["unseen negatives kept"]``. ``report["kept"] / report["n"]`` is the keep rate it
    costs (SugarCrepe kept 17-53% of its pools).
    """

    name = REFINER
    version = VERSION

    def __init__(self, config: BiasConfig | None = None) -> None:
        self.config = config or BiasConfig()
        self.stats = StageStats()
        self.fitted: set[tuple[str, str, str]] | None = None
        self.keep: set[tuple[str, str, str]] = set()
        self.report: dict[str, Any] | None = None

    def fit(self, samples: Iterable[Sample]) -> dict[str, Any]:
        ids, pairs, kinds = [], [], []
        for s in samples:
            for t in s.neg_texts:
                ids.append((s.key, normalize(t.text), t.kind))
                pairs.append((s.caption, t.text))
                kinds.append(t.kind)
        if not pairs:
            raise ValueError("BiasRefiner.fit got no negative captions: run it on samples that carry negatives")
        self.report = blind_report(pairs, kinds, self.config)
        self.fitted = set(ids)
        self.keep = {ids[i] for i in self.report["keep"]}
        return self.report

    def manifest(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        out: dict[str, Any] = {"name": self.name, "version": self.version, "config": cfg,
                               "config_hash": config_hash(cfg)}
        if self.report is not None:
            out["fit"] = {"n": self.report["n"], "kept": self.report["kept"],
                          "keep_share": {k: round(r["keep_share"], 4) for k, r in self.report["kinds"].items()}}
        return out

    def __call__(self, chunk: Sequence[Sample]) -> list[Sample | Quarantined]:
        if self.fitted is None:
            raise RuntimeError("BiasRefiner: call fit(samples) on the whole set before filtering it")
        out: list[Sample | Quarantined] = []
        unseen: Counter = Counter()
        for s in chunk:
            keep = []
            for t in s.neg_texts:
                self.stats.produced[t.kind] += 1
                ident = (s.key, normalize(t.text), t.kind)
                ok = ident in self.keep or ident not in self.fitted
                if ident not in self.fitted:
                    unseen[t.kind] += 1
                if ok:
                    self.stats.kept[t.kind] += 1
                else:
                    self.stats.reject(t.kind, self.name, R_BIAS)
                keep.append(ok)
            keep_and_count(s, keep, self.stats)
            out.append(s)
        if unseen:
            self.stats.extra["unseen negatives kept"] += sum(unseen.values())
        return out
