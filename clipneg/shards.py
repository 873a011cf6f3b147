"""Resumable, validated shard writing with a quarantine for bad input.

Inputs are cut into consecutive chunks of ``shard_size``; chunk ``i`` becomes ``{prefix}-{i:06d}.tar``. A chunk is
committed by two atomic renames (the tar, then its record under ``_parts/``), so after a kill a rerun skips every
committed chunk without calling ``process`` on it and redoes the one that was in flight. Because chunk membership
depends only on input order, an interrupted-then-resumed job writes byte-identical shards to an uninterrupted one
(tar headers carry no timestamps or owners). The run's ``info`` (source, generator configs and versions, seeds) is
recorded when it starts (``_parts/{prefix}.run``); resuming with another is refused with an error naming what differs,
as its new chunks would not match the committed ones.

Work is done per item (``process``: one input -> one Sample) or per chunk (``process_batch``: the chunk's inputs ->
one Sample or :class:`Quarantined` per input, in order), for stages that batch internally: spaCy's ``nlp.pipe``, LLM
requests in flight, a diffusion batch. A batch stage may also report counters (``take_stats()``: nested dicts of
numbers); they are kept in the chunk's record, so a resumed run's totals in the manifest equal an uninterrupted run's.

Nothing is dropped silently: an input that is a :class:`Quarantined`, or whose ``process`` raises
:class:`QuarantineError` / :class:`~clipneg.schema.SchemaError`, is written to ``quarantine.jsonl`` with its reason,
and ``manifest.json`` reconciles ``inputs == written + quarantined``.

Several processes write one set of shards by rank (``rank``/``world_size``, e.g. from ``accelerate launch``), or
:func:`write_shards_in_processes` starts them on this machine; rank r writes chunks r, r + N, ... and the same shards,
byte for byte, come out whatever the process count.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from clipneg.schema import SCHEMA_VERSION, Sample, SchemaError, sample_to_members

log = logging.getLogger(__name__)

PARTS_DIR = "_parts"


class Quarantined(NamedTuple):
    """A rejected input: its key when known, why it was rejected, and where it came from."""

    key: str | None
    reason: str
    source: str


class QuarantineError(Exception):
    """Raised by a ``process`` function for input that is bad (not for bugs): the input goes to quarantine."""


def reason_category(reason: str) -> str:
    """The stable head of a quarantine reason ("corrupt image: cannot identify..." -> "corrupt image")."""
    return re.split(r"[:'(\"]", reason, maxsplit=1)[0].strip()


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tar_bytes(samples: list[dict[str, Any]]) -> bytes:
    """A tar of webdataset members with fixed headers, so equal content gives equal bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for members in samples:
            key = members["__key__"]
            for ext, value in members.items():
                if ext == "__key__":
                    continue
                data = value.encode("utf-8") if isinstance(value, str) else value
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _item_key(item: Any) -> str | None:
    return getattr(item, "key", None)


def _package_versions() -> dict[str, str]:
    out = {}
    for pkg in ("clipneg", "torch", "open_clip_torch", "webdataset", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


BatchProcess = Callable[[list[Any]], list["Sample | Quarantined"]]


def per_item(process: Callable[[Any], Sample]) -> BatchProcess:
    """A batch stage from a one-item ``process``; its QuarantineError / SchemaError quarantines that item only."""

    def batch(items: list[Any]) -> list[Sample | Quarantined]:
        out: list[Sample | Quarantined] = []
        for item in items:
            try:
                out.append(process(item))
            except (QuarantineError, SchemaError) as e:
                out.append(Quarantined(_item_key(item), str(e), ""))
        return out

    return batch


def merge_counts(total: dict[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    """Add nested dicts of numbers (stage counters) into ``total``, in place; returns it."""
    for k, v in more.items():
        if isinstance(v, Mapping):
            merge_counts(total.setdefault(k, {}), v)
        else:
            total[k] = total.get(k, 0) + v
    return total


def _process_chunk(chunk: list[Any], process_batch: BatchProcess, seen: set[str], source_of: Callable[[Any], str],
                   index0: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Counter, Counter]:
    written: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    text_kinds: Counter = Counter()
    image_kinds: Counter = Counter()

    def reject(item: Any, key: str | None, reason: str, index: int, source: str = "") -> None:
        src = item.source if isinstance(item, Quarantined) else (source or source_of(item))
        quarantine.append({"index": index, "key": key, "reason": reason, "source": src})

    todo = [i for i, item in enumerate(chunk) if not isinstance(item, Quarantined)]
    results = process_batch([chunk[i] for i in todo]) if todo else []
    if len(results) != len(todo):  # a stage bug, never bad input: every input needs exactly one result
        raise RuntimeError(f"the batch stage returned {len(results)} results for {len(todo)} inputs")
    result_of = dict(zip(todo, results, strict=True))
    for offset, item in enumerate(chunk):
        index = index0 + offset
        key = _item_key(item)
        if isinstance(item, Quarantined):
            reject(item, key, item.reason, index)
            continue
        sample = result_of[offset]
        if isinstance(sample, Quarantined):
            reject(item, sample.key or key, sample.reason, index, sample.source)
            continue
        if not isinstance(sample, Sample):
            raise TypeError(f"process() must return a clipneg.schema.Sample, got {type(sample).__name__}")
        try:
            if sample.key in seen:
                raise QuarantineError(f"duplicate key {sample.key!r} (an earlier input has the same key)")
            members = sample_to_members(sample)
        except (QuarantineError, SchemaError) as e:
            reject(item, key, str(e), index)
            continue
        seen.add(sample.key)
        written.append(members)
        text_kinds.update(t.kind for t in sample.neg_texts)
        image_kinds.update(im.kind for im in sample.neg_images)
    return written, quarantine, text_kinds, image_kinds


def write_shards(
    items: Iterable[Any],
    out_dir: str | os.PathLike,
    *,
    process: Callable[[Any], Sample] | None = None,
    process_batch: BatchProcess | None = None,
    shard_size: int = 1000,
    prefix: str = "train",
    info: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    source_of: Callable[[Any], str] = lambda item: str(getattr(item, "source", "")),
    total: int | None = None,
) -> dict[str, Any] | None:
    """Write ``items`` (after ``process`` or ``process_batch``) as webdataset shards in ``out_dir``; see the module
    docstring.

    With ``world_size > 1`` (e.g. under ``accelerate launch``), rank r writes chunks r, r + N, ...; whichever process
    finds every chunk committed writes the manifest. Returns the manifest, or None if other ranks are still running.
    Duplicate keys are judged on input order (the first occurrence wins), so the result does not depend on ranks.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 (got {shard_size})")
    if process is not None and process_batch is not None:
        raise ValueError("pass process (one item at a time) or process_batch (a chunk at a time), not both")
    if process_batch is None:
        process_batch = per_item(process or (lambda s: s))
    take_stats = getattr(process_batch, "take_stats", None)
    out = Path(out_dir)
    parts = out / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    if world_size == 1:  # leftovers of a killed run (with several ranks, another rank's file may be in flight)
        for stale in [*out.glob(".*.tmp*"), *parts.glob(".*.tmp*")]:
            stale.unlink()
    _check_resume(parts / f"{prefix}.run", info or {})
    n_skipped = n_quarantined = 0
    n_chunks = 0
    seen: set[str] = set()
    # total (the input count, when the source knows it cheaply) gives the bar its ETA
    bar = tqdm(desc=f"shards -> {out}", unit="sample", total=total, disable=not progress, dynamic_ncols=True)
    for index, chunk in enumerate(_chunks(items, shard_size)):
        n_chunks += 1
        part_path = parts / f"{prefix}-{index:06d}.json"
        mine = index % world_size == rank
        if part_path.exists() or not mine:
            # Committed (or another rank's): only its keys matter, for the duplicate rule. Reading the keys from
            # the input, not from the part file, keeps the rule identical whichever rank committed the chunk.
            for item in chunk:
                key = _item_key(item)
                if key is not None and not isinstance(item, Quarantined):
                    seen.add(key)
            n_skipped += len(chunk) if mine else 0
            bar.update(len(chunk))
            continue
        written, quarantine, text_kinds, image_kinds = _process_chunk(chunk, process_batch, seen, source_of,
                                                                      index * shard_size)
        name = shard_name(prefix, index)
        if written:
            _atomic_write(out / name, _tar_bytes(written))
        record = {
            "shard": name if written else None,
            "inputs": len(chunk),
            "written": len(written),
            "quarantine": quarantine,
            "text_kinds": dict(sorted(text_kinds.items())),
            "image_kinds": dict(sorted(image_kinds.items())),
            "stats": take_stats() if take_stats else {},
            "rank": rank,  # which process wrote the chunk (for the record; the shards do not depend on it)
        }
        # The part record is the commit point: written after the tar, so a kill in between redoes the chunk.
        _atomic_write(part_path, json.dumps(record, sort_keys=True).encode())
        n_quarantined += len(quarantine)
        bar.update(len(chunk))
        bar.set_postfix(quarantined=n_quarantined)
        if progress and hasattr(process_batch, "postfix"):
            bar.set_postfix(quarantined=n_quarantined, **process_batch.postfix())
    bar.close()
    if n_skipped:
        log.info("resumed: skipped %d inputs in committed shards", n_skipped)
    return finalize(out, prefix=prefix, n_chunks=n_chunks, info=info, shard_size=shard_size)


def _check_resume(path: Path, info: dict[str, Any]) -> None:
    """Record the run's ``info`` (source, generator configs and versions, seeds) when it starts, and refuse to resume
    into a folder started with another: committed chunks and new ones would disagree, and nothing else would tell."""
    data = json.dumps(info, sort_keys=True, default=str)
    if path.is_file():
        before, now = json.loads(path.read_text()), json.loads(data)  # compared as JSON, as they are stored
        if before != now:
            keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise ValueError(f"{path.parent.parent} holds part of a run with another configuration (differs in: "
                             f"{', '.join(keys)}); rerun the same command to resume it, or write to a new --out "
                             f"(or delete the folder) to start over")
        return
    _atomic_write(path, data.encode())


def finalize(out: Path, *, prefix: str, n_chunks: int, info: dict[str, Any] | None, shard_size: int
             ) -> dict[str, Any] | None:
    """Merge the per-chunk records into sizes.json, quarantine.jsonl and manifest.json (idempotent)."""
    records = []
    for index in range(n_chunks):
        path = out / PARTS_DIR / f"{prefix}-{index:06d}.json"
        if not path.exists():
            return None  # another rank is still writing
        records.append(json.loads(path.read_text()))
    sizes = {r["shard"]: r["written"] for r in records if r["shard"]}
    quarantine = [q for r in records for q in r["quarantine"]]
    text_kinds: Counter = Counter()
    image_kinds: Counter = Counter()
    stats: dict[str, Any] = {}
    for r in records:
        text_kinds.update(r["text_kinds"])
        image_kinds.update(r["image_kinds"])
        merge_counts(stats, r.get("stats", {}))
    n_in = sum(r["inputs"] for r in records)
    n_out = sum(sizes.values())
    if n_in != n_out + len(quarantine):  # a bug, never bad input: every input is either written or quarantined
        raise RuntimeError(f"reconciliation failed in {out}: {n_in} inputs != {n_out} written + {len(quarantine)}")
    reasons = Counter(reason_category(q["reason"]) for q in quarantine)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "prefix": prefix,
        "shard_size": shard_size,
        "shards": sorted(sizes),
        "counts": {"inputs": n_in, "written": n_out, "quarantined": len(quarantine)},
        "quarantine_reasons": dict(sorted(reasons.items())),
        "neg_text_kinds": dict(sorted(text_kinds.items())),
        "neg_image_kinds": dict(sorted(image_kinds.items())),
        "stage_stats": stats,
        "info": info or {},
        "versions": _package_versions(),
    }
    _atomic_write(out / "sizes.json", json.dumps(sizes, indent=1, sort_keys=True).encode())
    _atomic_write(out / "quarantine.jsonl", "".join(json.dumps(q, sort_keys=True) + "\n" for q in quarantine).encode())
    _atomic_write(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
    if quarantine:
        log.warning("%d of %d inputs quarantined (%s); see %s", len(quarantine), n_in, dict(reasons),
                    out / "quarantine.jsonl")
    return manifest


def list_shards(spec: str | os.PathLike) -> list[str]:
    """Shard paths from a directory (its sizes.json order, else sorted *.tar), a brace pattern, or a single file."""
    import braceexpand

    path = Path(spec)
    if path.is_dir():
        sizes = path / "sizes.json"
        if sizes.exists():
            return [str(path / name) for name in json.loads(sizes.read_text())]
        found = sorted(str(p) for p in path.glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"no .tar shards in {path}; write some with `clipneg world` or `clipneg shard`")
        return found
    urls = list(braceexpand.braceexpand(str(spec)))
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) not found, e.g. {missing[0]} (pattern {spec})")
    return urls


def _rank_job(make_job: Callable[[], tuple[Iterable[Any], dict[str, Any]]], out_dir: str, rank: int,
              world_size: int) -> dict[str, Any] | None:
    items, kwargs = make_job()
    return write_shards(items, out_dir, rank=rank, world_size=world_size, **{**kwargs, "progress": kwargs.get(
        "progress", True) and rank == 0})


def write_shards_in_processes(make_job: Callable[[], tuple[Iterable[Any], dict[str, Any]]], out_dir: str | os.PathLike,
                              workers: int) -> dict[str, Any]:
    """:func:`write_shards` split over ``workers`` local processes, each writing chunks rank, rank + N, ...

    ``make_job`` (picklable: a module-level function or a ``functools.partial`` of one) runs in each process and
    returns ``(items, write_shards keyword arguments)``; each process builds its own source and stages (spaCy models,
    renderers) there. The result is byte for byte what one process writes. Under ``accelerate launch`` call
    :func:`write_shards` with the launcher's rank and world size instead.
    """
    if workers <= 1:
        items, kwargs = make_job()
        manifest = write_shards(items, out_dir, **kwargs)
    else:
        with ProcessPoolExecutor(workers) as pool:
            jobs = [pool.submit(_rank_job, make_job, str(out_dir), r, workers) for r in range(workers)]
            manifests = [job.result() for job in jobs]
        manifest = next((m for m in reversed(manifests) if m is not None), None)
    if manifest is None:
        raise RuntimeError(f"{out_dir}: some chunks were not committed; rerun to finish them")
    return manifest
