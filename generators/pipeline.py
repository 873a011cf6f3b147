"""Stages chained into the shard writer's batch ``process``: source items -> samples -> stage 1 -> stage 2 -> ...

One :class:`StagePipeline` call handles one chunk of the shard writer. Source records become samples (the image is
decoded and checked, the caption checked; a bad one becomes a quarantine entry with its reason), every stage sees the
live samples of the chunk at once, and a quarantine entry made anywhere is carried through to the writer. Counters of
each stage are handed to the writer per chunk (:meth:`take_stats`), so the manifest's totals are right after a resume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from clipneg.schema import Sample
from clipneg.shards import Quarantined, QuarantineError, merge_counts
from clipneg.sources import SourceRecord, record_to_sample

from .base import Stage, StageStats


def to_sample(item: Any) -> Sample:
    """A source record read and checked, or a sample read back from clipneg shards (negatives intact)."""
    if isinstance(item, Sample):
        return item
    if isinstance(item, SourceRecord):
        return record_to_sample(item)
    raise TypeError(f"a generator stage takes SourceRecord or Sample inputs, got {type(item).__name__}")


class StagePipeline:
    """``pipeline(chunk) -> [Sample | Quarantined, ...]``, one result per input, for ``write_shards(process_batch=)``.

    ``require_negatives``: a sample that comes out with no negative caption is quarantined ("no negatives: ...")
    instead of being written with its positive only; either way it is counted.
    """

    def __init__(self, stages: Sequence[Stage], *, require_negatives: bool = False,
                 read: Callable[[Any], Sample] = to_sample) -> None:
        self.stages = list(stages)
        self.require_negatives = require_negatives
        self.read = read
        self.totals: dict[str, Any] = {}
        self.samples_without_negatives = 0

    def __call__(self, items: list[Any]) -> list[Sample | Quarantined]:
        out: list[Sample | Quarantined] = []
        for item in items:
            try:
                out.append(self.read(item))
            except QuarantineError as e:
                out.append(Quarantined(getattr(item, "key", None), str(e), str(getattr(item, "source", ""))))
        for stage in self.stages:
            live = [i for i, s in enumerate(out) if isinstance(s, Sample)]
            if not live:
                break
            results = stage([out[i] for i in live])
            if len(results) != len(live):
                raise RuntimeError(f"generator {stage.name!r} returned {len(results)} results for {len(live)} inputs")
            for i, r in zip(live, results, strict=True):
                out[i] = r
        for i, s in enumerate(out):
            if isinstance(s, Sample) and not s.neg_texts:
                self.samples_without_negatives += 1
                if self.require_negatives:
                    out[i] = Quarantined(s.key, "no negatives: every generator abstained or every candidate was "
                                                "rejected (see the manifest's stage_stats)", "generate")
        return out

    def take_stats(self) -> dict[str, Any]:
        """This chunk's counters per stage (the stages' counters restart), for the shard writer's chunk record."""
        chunk: dict[str, Any] = {"samples_without_negatives": self.samples_without_negatives}
        self.samples_without_negatives = 0
        for stage in self.stages:
            chunk[stage.name] = stage.stats.to_json()
            stage.stats = StageStats()
        merge_counts(self.totals, chunk)
        return chunk

    def postfix(self) -> dict[str, Any]:
        """What the progress bar shows: negatives kept and rejected so far."""
        kept = rejected = 0
        for stage in self.stages:
            kept += sum(self.totals.get(stage.name, {}).get("kept", {}).values())
            rejected += sum(n for reasons in self.totals.get(stage.name, {}).get("rejected", {}).values()
                            for n in reasons.values())
        return {"negatives": kept, "rejected": rejected}

    def manifest(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "version": s.version, **s.manifest()} for s in self.stages]
