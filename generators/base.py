"""The generator protocol: a chunk of samples in, the same samples out with negatives added, or quarantined.

A stage of ``clipneg generate`` (ARCHITECTURE.md, "Generator stage") is a small object with a ``name``, a
``version``, a frozen config (written into the manifest by :meth:`Stage.manifest`) and one call. It takes a whole
chunk because the work batches: spaCy's ``nlp.pipe``, LLM requests in flight, a diffusion batch. For every input it
returns either the sample (negatives appended, each ``NegText`` / ``NegImage`` carrying kind, generator, seed and
score) or a :class:`~clipneg.shards.Quarantined` with the reason; never fewer or more items than it was given, so the
shard writer's reconciliation (inputs = written + quarantined) holds through any chain of stages.

A filter has the same shape and removes negatives; each removal is counted by (kind, filter, reason) in the stage's
:class:`StageStats`, which the command sums into the run summary and the manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from clipneg.schema import Sample
from clipneg.shards import Quarantined


@dataclass
class StageStats:
    """What a stage did, per negative kind: produced, rejected (by filter and reason) and kept."""

    produced: Counter = field(default_factory=Counter)  # kind -> candidates made
    rejected: Counter = field(default_factory=Counter)  # (kind, filter, reason) -> count
    kept: Counter = field(default_factory=Counter)  # kind -> negatives attached to samples
    samples_without: int = 0  # inputs that came out with no negative from this stage
    extra: Counter = field(default_factory=Counter)  # backend counters (requests, cache hits, retries, tokens ...)

    def reject(self, kind: str, filter_name: str, reason: str, n: int = 1) -> None:
        self.rejected[(kind, filter_name, reason)] += n

    def merge(self, other: StageStats) -> None:
        self.produced.update(other.produced)
        self.rejected.update(other.rejected)
        self.kept.update(other.kept)
        self.samples_without += other.samples_without
        self.extra.update(other.extra)

    def to_json(self) -> dict[str, Any]:
        rejected: dict[str, dict[str, int]] = {}
        for (kind, filt, reason), n in sorted(self.rejected.items()):
            rejected.setdefault(kind, {})[f"{filt}: {reason}"] = n
        return {"produced": dict(sorted(self.produced.items())), "rejected": rejected,
                "kept": dict(sorted(self.kept.items())), "samples_without": self.samples_without,
                "extra": dict(sorted(self.extra.items()))}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StageStats:
        stats = cls(Counter(d.get("produced", {})), Counter(), Counter(d.get("kept", {})),
                    int(d.get("samples_without", 0)), Counter(d.get("extra", {})))
        for kind, reasons in d.get("rejected", {}).items():
            for key, n in reasons.items():
                filt, _, reason = key.partition(": ")
                stats.rejected[(kind, filt, reason)] += n
        return stats


@runtime_checkable
class Stage(Protocol):
    """A generator or filter of ``clipneg generate``."""

    name: str
    version: str
    stats: StageStats

    def manifest(self) -> dict[str, Any]:
        """Everything that determines the output (config, model ids, lexicon hashes); never secrets."""
        ...

    def __call__(self, chunk: Sequence[Sample]) -> list[Sample | Quarantined]:
        """One result per input, in order."""
        ...


def config_hash(obj: Any) -> str:
    """A short stable hash of JSON-able data (prompt templates, lexicons, configs) for the manifest."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from (caption, kind, base seed, ...): the same negative for the same inputs on any machine or
    rank, unlike Python's salted ``hash``."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


_MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15


def mix64(x: int) -> int:
    """SplitMix64's finaliser (Steele, Lea and Flood, OOPSLA 2014): a 64-bit word from another, well mixed."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def seeded_order(seed: int, n: int, limit: int | None = None) -> Iterator[int]:
    """The indices of range(n) in a random order fixed by ``seed``, made one at a time: a lazy Fisher-Yates shuffle
    over a SplitMix64 stream. A generator that keeps the first few choices that pass its checks pays for those only,
    where reseeding a Mersenne Twister and sampling cost more than the edits themselves. ``limit``: stop after
    that many (the first ``limit`` of the same order)."""
    moved: dict[int, int] = {}  # position -> index that the partial shuffle has put there
    state = seed & _MASK64
    for i in range(n if limit is None else min(n, limit)):
        state = (state + _GOLDEN64) & _MASK64
        x = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64  # mix64(state), inlined: this is a hot loop
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        j = i + (((x ^ (x >> 31)) * (n - i)) >> 64)  # uniform in [i, n) (multiply-shift, bias < n / 2**64)
        yield moved.get(j, j)
        moved[j] = moved.get(i, i)
