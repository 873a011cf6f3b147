"""Batch stages in the shard writer (a chunk in, one Sample or Quarantined per input out), their counters through a
resume, and the writer split over local processes."""

from __future__ import annotations

import hashlib
import io
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from clipneg.schema import NegText, Sample
from clipneg.shards import Quarantined, merge_counts, write_shards, write_shards_in_processes


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (i * 7 % 256, 10, 20)).save(buf, format="PNG")
    return buf.getvalue()


def _samples(n: int) -> list[Sample]:
    return [Sample(f"k{i:04d}", _png(i), "png", f"a red cube number {i}") for i in range(n)]


class Negate:
    """A batch stage: adds one negative to even samples, quarantines every fifth, counts its calls and sizes."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.pending = {"chunks": 0, "produced": {"negate": 0}}

    def __call__(self, chunk: list[Sample]) -> list[Sample | Quarantined]:
        self.calls.append(len(chunk))
        self.pending["chunks"] += 1
        out: list[Sample | Quarantined] = []
        for s in chunk:
            n = int(s.key[1:])
            if n % 5 == 4:
                out.append(Quarantined(s.key, "no negative possible: test rule", "stage"))
                continue
            if n % 2 == 0:
                s.neg_texts.append(NegText(s.caption.replace("red", "blue"), "replace_att", "test", 0))
                self.pending["produced"]["negate"] += 1
            out.append(s)
        return out

    def take_stats(self) -> dict:
        stats, self.pending = self.pending, {"chunks": 0, "produced": {"negate": 0}}
        return stats


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_batch_stage_gets_whole_chunks_and_reconciles(tmp_path: Path) -> None:
    # Given 23 samples in chunks of 10 and a stage that quarantines every fifth
    stage = Negate()
    manifest = write_shards(_samples(23), tmp_path, process_batch=stage, shard_size=10, progress=False)
    # Then the stage saw each chunk at once, and every input is written or quarantined with the stage's reason
    assert stage.calls == [10, 10, 3]
    assert manifest["counts"] == {"inputs": 23, "written": 19, "quarantined": 4}
    assert manifest["quarantine_reasons"] == {"no negative possible": 4}
    assert manifest["neg_text_kinds"] == {"replace_att": 10}
    assert manifest["stage_stats"] == {"chunks": 3, "produced": {"negate": 10}}
    lines = (tmp_path / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"source": "stage"' in lines[0] and '"key": "k0004"' in lines[0]


def test_stage_counters_survive_a_resume(tmp_path: Path) -> None:
    # Given a run that committed its first chunk and was then killed, and a rerun with a fresh stage
    first = Negate()
    write_shards(_samples(10), tmp_path / "a", process_batch=first, shard_size=10, progress=False)
    (tmp_path / "a" / "manifest.json").unlink()
    rerun = Negate()
    manifest = write_shards(_samples(23), tmp_path / "a", process_batch=rerun, shard_size=10, progress=False)
    # Then the rerun skipped the committed chunk, and the totals equal an uninterrupted run's
    assert rerun.calls == [10, 3]
    whole = write_shards(_samples(23), tmp_path / "b", process_batch=Negate(), shard_size=10, progress=False)
    assert manifest["stage_stats"] == whole["stage_stats"] and manifest["counts"] == whole["counts"]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_a_stage_that_loses_an_input_is_a_bug(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="returned 1 results for 2 inputs"):
        write_shards(_samples(2), tmp_path, process_batch=lambda chunk: chunk[:1], progress=False)
    with pytest.raises(ValueError, match="not both"):
        write_shards(_samples(2), tmp_path, process=lambda s: s, process_batch=lambda c: c, progress=False)


def test_merge_counts_adds_nested_numbers() -> None:
    total = {"a": 1, "b": {"c": 2}}
    assert merge_counts(total, {"a": 2, "b": {"c": 1, "d": 4}, "e": 1.5}) == {"a": 3, "b": {"c": 3, "d": 4}, "e": 1.5}


def _job(n: int) -> tuple[list[Sample], dict]:
    return _samples(n), {"process_batch": Negate(), "shard_size": 4, "progress": False, "info": {"n": n}}


def test_local_processes_write_the_same_shards_as_one(tmp_path: Path) -> None:
    # Given the same job written by one process and by two
    one = write_shards_in_processes(partial(_job, 18), tmp_path / "one", workers=1)
    two = write_shards_in_processes(partial(_job, 18), tmp_path / "two", workers=2)
    # Then the shards are byte-identical and the manifests agree on every count
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two") and len(_digest(tmp_path / "one")) == 5
    for key in ("counts", "quarantine_reasons", "neg_text_kinds", "stage_stats", "info", "shards"):
        assert one[key] == two[key], key
