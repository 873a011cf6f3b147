"""Source pairs (image, caption) from the formats researchers have: webdataset/img2dataset shards, COCO captions JSON
with an image folder, and CSV/TSV/JSONL tables with an image column; and clipneg's own shards read back with the
negatives they carry, so each generator stage can be a separate, resumable run.

Every source yields, in a fixed order, either a :class:`SourceRecord` (image bytes read lazily, so resumed jobs do not
re-read committed inputs), a :class:`~clipneg.schema.Sample` (clipneg shards), or a
:class:`~clipneg.shards.Quarantined` for input that is unreadable at the source level. :func:`record_to_sample` then
checks the image really decodes and the caption is usable, quarantining what is not. :func:`filter_duplicates` wraps
any source to quarantine (or count) exact duplicate pairs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from clipneg.schema import SCHEMA_VERSION, Sample, SchemaError, members_to_sample
from clipneg.shards import Quarantined, QuarantineError, list_shards
from clipneg.tars import iter_tar_samples

log = logging.getLogger(__name__)

PIL_TO_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


@dataclass
class SourceRecord:
    key: str
    caption: str | bytes
    source: str
    image_path: Path | None = None
    image_bytes: bytes | None = None
    meta: dict[str, Any] | None = None

    def read_image(self) -> bytes:
        if self.image_bytes is not None:
            return self.image_bytes
        if self.image_path is None:
            raise QuarantineError("no image for this record")
        try:
            return self.image_path.read_bytes()
        except OSError as e:
            raise QuarantineError(f"unreadable image: {self.image_path}: {e.strerror or e}") from e


def check_image(data: bytes) -> str:
    """Fully decode the image (catches truncation, which ``verify`` misses) and return its shard extension."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise QuarantineError(f"corrupt image: {e}") from e
    if fmt not in PIL_TO_EXT:
        raise QuarantineError(f"unsupported image format: {fmt}; convert to JPEG, PNG or WebP")
    return PIL_TO_EXT[fmt]


def _not_utf8(e: UnicodeDecodeError) -> str:
    return f"not UTF-8 ({e.reason} at byte {e.start})"


def _utf8_problem(text: str) -> str | None:
    """Why ``text`` (decoded with ``surrogateescape``, so undecodable bytes survive as lone surrogates) is not valid
    UTF-8, or None. A lone surrogate from a JSON ``\\udcxx`` escape is caught too: it cannot be written as UTF-8."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeDecodeError as e:
        return _not_utf8(e)
    except UnicodeEncodeError as e:
        return f"not UTF-8 (lone surrogate at character {e.start})"
    return None


def _value_utf8_problem(value: Any) -> str | None:
    """:func:`_utf8_problem` of the first bad string in a JSON-like value (strings, keys, lists, dicts)."""
    if isinstance(value, str):
        return _utf8_problem(value)
    if isinstance(value, dict):
        items: Iterable[Any] = (x for kv in value.items() for x in kv)
    elif isinstance(value, list):
        items = value
    else:
        return None
    return next((p for p in map(_value_utf8_problem, items) if p), None)


def check_caption(caption: str | bytes) -> str:
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError as e:
            raise QuarantineError(f"undecodable caption: {_not_utf8(e)}") from e
    elif problem := _utf8_problem(caption):
        raise QuarantineError(f"undecodable caption: {problem}")
    caption = caption.strip()
    if not caption:
        raise QuarantineError("empty caption")
    return caption


def record_to_sample(record: SourceRecord | Sample) -> Sample:
    """The default ``process`` for :func:`clipneg.shards.write_shards`: a validated sample with no negatives.

    A :class:`Sample` (read back from clipneg shards by :func:`iter_clipneg_shards`) passes unchanged, negatives and
    all: it was validated when it was written, and the writer validates it against the schema again.
    """
    if isinstance(record, Sample):
        return record
    caption = check_caption(record.caption)
    data = record.read_image()
    ext = check_image(data)
    return Sample(record.key, data, ext, caption, record.meta)


# --- webdataset / img2dataset shards --------------------------------------------------------------------------


def iter_webdataset(spec: str) -> Iterator[SourceRecord | Quarantined]:
    """Samples from tar shards (a brace pattern like ``data/{00000..00009}.tar``, a folder, or one file).

    Members are grouped by webdataset's rule (:func:`clipneg.tars.iter_tar_samples`), and a truncated shard or an
    unreadable member becomes a quarantine entry for exactly the samples affected, instead of an exception or a
    silent skip. Only the positive pair is read (image, ``txt`` or the json's ``caption``, json metadata); to keep
    the negatives of clipneg shards, read them with :func:`iter_clipneg_shards`.
    """
    for url in list_shards(spec):
        for key, members, error in iter_tar_samples(url):
            source = url if key is None else f"{url}:{key}"
            if error:
                yield Quarantined(key, error, source)
            else:
                yield _wds_record(key, members, source)


def _wds_record(key: str, members: dict[str, bytes], source: str) -> SourceRecord | Quarantined:
    image_ext = next((e for e in IMAGE_SUFFIXES if e in members), None)
    meta = None
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return Quarantined(key, f"unreadable json member: {e}", source)
    caption = members.get("txt")
    if caption is None and isinstance(meta, dict) and isinstance(meta.get("caption"), str):
        caption = meta["caption"]
    if image_ext is None:
        return Quarantined(key, f"no image member (have: {sorted(members)})", source)
    if caption is None:
        return Quarantined(key, "no caption (no txt member, no json caption)", source)
    return SourceRecord(key, caption, source, image_bytes=members[image_ext], meta=meta)


# --- clipneg shards (chaining generator stages) ----------------------------------------------------------------


def iter_clipneg_shards(spec: str) -> Iterator[Sample | Quarantined]:
    """Samples of clipneg shards with everything they carry: ``neg.json`` (negative captions, images, paraphrases)
    and the negative images, so ``shards -> + caption negatives -> + image negatives`` can be separate runs.

    A sample that breaks the shard contract (:func:`clipneg.schema.members_to_sample`), or that damage in its shard
    makes unreadable, comes back as a :class:`Quarantined` with the reason. ``write_shards(iter_clipneg_shards(a),
    b, process=lambda s: s)`` writes byte-identical shards.
    """
    for url in list_shards(spec):
        for key, members, error in iter_tar_samples(url):
            source = url if key is None else f"{url}:{key}"
            if error:
                yield Quarantined(key, error, source)
                continue
            try:
                sample = _clipneg_sample(key, members)
            except QuarantineError as e:
                yield Quarantined(key, str(e), source)
                continue
            yield sample


def _clipneg_sample(key: str, members: dict[str, bytes]) -> Sample:
    if "txt" in members:
        try:
            members["txt"].decode("utf-8")
        except UnicodeDecodeError as e:
            raise QuarantineError(f"undecodable caption: {_not_utf8(e)}") from e
    try:
        return members_to_sample({"__key__": key, **members})
    except SchemaError as e:  # the message starts with the key: prefix it so the manifest counts one reason
        raise QuarantineError(f"schema error: {e}") from e
    except ValueError as e:  # the json member (JSONDecodeError, UnicodeDecodeError); neg.json raises SchemaError
        raise QuarantineError(f"unreadable json member: {e}") from e


def is_clipneg_manifest(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``manifest.json`` written by clipneg's shard writer. A clipneg manifest of another
    schema version raises: reading it as plain webdataset shards would drop its negatives without a word."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s is not JSON: not a clipneg manifest", path)
        return False
    if not isinstance(manifest, dict) or not {"schema_version", "counts", "shards"} <= manifest.keys():
        return False
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"{path} was written by clipneg with shard schema version {manifest['schema_version']!r}; "
                         f"this clipneg reads version {SCHEMA_VERSION}: rewrite the shards with a matching clipneg")
    return True


# --- COCO captions ---------------------------------------------------------------------------------------------


def sugarcrepe_image_ids() -> set[int]:
    """The 1,560 COCO val2017 ids whose images SugarCrepe evaluates on (shipped with the package)."""
    text = resources.files("clipneg").joinpath("resources/sugarcrepe_coco_val2017_ids.txt").read_text()
    return {int(line) for line in text.splitlines() if line and not line.startswith("#")}


def load_exclude_ids(path: str | Path) -> set[int]:
    """Image ids to exclude, from a COCO annotation JSON (its ``images[].id``) or a text file of ids."""
    path = Path(path)
    if path.suffix == ".json":
        return {int(im["id"]) for im in json.loads(path.read_text())["images"]}
    return {int(x) for x in path.read_text().split() if x.strip().isdigit()}


@dataclass
class CocoStats:
    annotations: int = 0
    dropped_leakage: int = 0
    dropped_images: set[int] = field(default_factory=set)


def iter_coco(captions_json: str | Path, image_dir: str | Path, *, drop_ids: set[int] | None = None,
              stats: CocoStats | None = None) -> Iterator[SourceRecord | Quarantined]:
    """One record per caption annotation of a COCO captions file (``captions_train2014.json`` and friends).

    By default drops SugarCrepe's COCO val2017 images: they overlap the COCO 2014 train/restval images used for
    fine-tuning, and training on them leaks the benchmark (PROTOCOLS.md §4, Leakage). Pass ``drop_ids`` to drop a
    larger set (all of val2017: :func:`load_exclude_ids` on ``captions_val2017.json``) or ``set()`` to keep all.
    """
    captions_json, image_dir = Path(captions_json), Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"--image-dir must be the folder holding the COCO images (got: {image_dir})")
    data = json.loads(captions_json.read_text())
    files = {int(im["id"]): im["file_name"] for im in data["images"]}
    drop = sugarcrepe_image_ids() if drop_ids is None else drop_ids
    stats = stats if stats is not None else CocoStats()
    for ann in sorted(data["annotations"], key=lambda a: (int(a["image_id"]), int(a["id"]))):
        stats.annotations += 1
        image_id = int(ann["image_id"])
        if image_id in drop:
            stats.dropped_leakage += 1
            stats.dropped_images.add(image_id)
            continue
        key = f"{image_id:012d}_{int(ann['id'])}"
        source = f"{captions_json.name}:annotation {ann['id']}"
        if image_id not in files:
            yield Quarantined(key, f"annotation names image id {image_id}, which is not in images[]", source)
            continue
        meta = {"coco_image_id": image_id, "coco_annotation_id": int(ann["id"]), "file_name": files[image_id]}
        yield SourceRecord(key, ann.get("caption") or "", source, image_path=image_dir / files[image_id], meta=meta)


# --- tables ----------------------------------------------------------------------------------------------------


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(row number, row, error) per row. Text is decoded with ``surrogateescape``, so a row with bytes that are not
    UTF-8 keeps them (as lone surrogates) for :func:`iter_table` to quarantine, and the other rows are unaffected."""
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                if n == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8", "surrogateescape"))
                except json.JSONDecodeError as e:
                    yield n, None, f"unreadable JSONL line: {e}"
                    continue
                if not isinstance(row, dict):
                    yield n, None, f"unreadable JSONL line: a JSON object per line expected, got {type(row).__name__}"
                    continue
                yield n, row, None
        return
    delimiter = "\t" if path.suffix in (".tsv", ".tab") else ","
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for name in reader.fieldnames or ():
            if problem := _utf8_problem(name):
                raise ValueError(f"the header row of {path} is {problem}: save the table as UTF-8")
        n = 1
        while True:
            n += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # the reader resumes at the next line
                yield n, None, f"unreadable CSV row: {e}"
                continue
            yield n, row, None


def iter_table(path: str | Path, image_root: str | Path | None = None, *, image_col: str | None = None,
               caption_col: str | None = None, key_col: str | None = None) -> Iterator[SourceRecord | Quarantined]:
    """Rows of a CSV, TSV or JSONL file naming an image file and a caption.

    Columns default to the first present of ``image|filepath|file_name|path`` and ``caption|title|text`` (NegCLIP's
    TSV uses filepath/title). Keys come from ``key_col``, else the row number, so they are stable across runs.
    The file must be UTF-8: a row with bytes that are not is quarantined with the reason (``undecodable caption``,
    or ``undecodable column`` for another column), and the other rows are read as usual.
    """
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    def pick(row: dict, want: str | None, options: tuple[str, ...]) -> (str | None):
        return want or next(
            (c for c in options if c in row), None)
    for n, row, error in _read_rows(path):
        source = f"{path.name}:{n}"
        if error:
            yield Quarantined(None, error, source)
            continue
        icol = pick(row, image_col, ("image", "filepath", "file_name", "path", "image_path"))
        ccol = pick(row, caption_col, ("caption", "title", "text"))
        key = str(row[key_col]) if key_col and row.get(key_col) is not None else f"{n:09d}"
        if None in row:  # csv.DictReader's restkey: more fields than the header names
            yield Quarantined(key, f"row has more fields than the header's {len(row) - 1}", source)
            continue
        if icol is None or not row.get(icol):
            yield Quarantined(key, f"no image column value (columns: {sorted(row)})", source)
            continue
        if ccol is None or row.get(ccol) is None:
            yield Quarantined(key, f"no caption column (columns: {sorted(row)})", source)
            continue
        if not isinstance(row[icol], str) or not isinstance(row[ccol], str):
            yield Quarantined(key, f"image path and caption must be text (got {type(row[icol]).__name__} and "
                                   f"{type(row[ccol]).__name__})", source)
            continue
        if problem := _utf8_problem(row[ccol]):
            yield Quarantined(key, f"undecodable caption: {problem}", source)
            continue
        if bad := next(((c, p) for c, v in row.items() if (p := _value_utf8_problem(v) or _utf8_problem(c))), None):
            yield Quarantined(key, f"undecodable column {bad[0]!r}: {bad[1]}", source)
            continue
        image_path = Path(row[icol])
        image_path = image_path if image_path.is_absolute() else root / image_path
        meta = {k: v for k, v in row.items() if k not in (icol, ccol)}
        yield SourceRecord(key, row[ccol], source, image_path=image_path, meta=meta or None)


# --- duplicates -----------------------------------------------------------------------------------------------

DUPLICATE_POLICIES = ("quarantine", "keep")


@dataclass
class DuplicateStats:
    """Exact duplicate pairs :func:`filter_duplicates` found (quarantined or kept, as its policy says)."""

    policy: str = "quarantine"
    found: int = 0


def _pair_identity(item: Any) -> bytes | None:
    """A digest of (image, caption): the image path when the record reads from a file, else the image bytes."""
    if isinstance(item, Sample):
        kind, image, caption = b"bytes", item.image, item.caption
    elif isinstance(item, SourceRecord):
        if item.image_bytes is not None:
            kind, image = b"bytes", item.image_bytes
        elif item.image_path is not None:
            kind, image = b"path", os.fsencode(os.path.normpath(item.image_path))
        else:
            return None
        caption = item.caption
    else:
        return None
    # "surrogatepass": a caption that is not UTF-8 still has an identity (it is quarantined later)
    text = caption if isinstance(caption, bytes) else str(caption).encode("utf-8", "surrogatepass")
    h = hashlib.blake2b(kind + len(image).to_bytes(8, "little"), digest_size=16)
    h.update(image)  # no concatenation: images can be large
    h.update(text)
    return h.digest()


def _describe(item: Any) -> str:
    return getattr(item, "source", None) or f"key {item.key}"


def filter_duplicates(items: Iterable[Any], *, policy: str = "quarantine",
                      stats: DuplicateStats | None = None) -> Iterator[Any]:
    """``items`` with exact duplicate pairs handled: the same image (same file, or same bytes for sources that carry
    bytes) with the same caption as an earlier item. ``quarantine`` replaces each later copy by a
    :class:`Quarantined` naming the first; ``keep`` passes it on. Either way ``stats.found`` counts them.

    Works on any source's items (:class:`SourceRecord`, :class:`Sample`; :class:`Quarantined` pass through) and
    judges on input order alone, so resumed and multi-rank writes agree. Keeps 16 bytes and a source name per
    distinct pair in memory.
    """
    if policy not in DUPLICATE_POLICIES:
        raise ValueError(f"the duplicates policy must be one of {', '.join(DUPLICATE_POLICIES)} (got: {policy!r})")
    stats = stats if stats is not None else DuplicateStats()
    stats.policy = policy
    first: dict[bytes, str] = {}
    for item in items:
        identity = None if isinstance(item, Quarantined) else _pair_identity(item)
        if identity is not None:
            earlier = first.get(identity)
            if earlier is None:
                first[identity] = _describe(item)
            else:
                stats.found += 1
                if policy == "quarantine":
                    yield Quarantined(item.key, f"duplicate pair: same image and caption as {earlier}",
                                      _describe(item))
                    continue
        yield item


def open_source(kind: str, path: str, *, image_dir: str | None = None, **kw: Any) -> Iterator[Any]:
    """Dispatch on source kind: ``wds`` (shards), ``clipneg`` (clipneg shards, negatives kept), ``coco`` (captions
    JSON + image dir), ``table`` (csv/tsv/jsonl)."""
    if kind == "wds":
        return iter_webdataset(path)
    if kind == "clipneg":
        return iter_clipneg_shards(path)
    if kind == "coco":
        if image_dir is None:
            raise ValueError("a COCO source needs --image-dir (the folder holding the images the JSON names)")
        return iter_coco(path, image_dir, **kw)
    if kind == "table":
        return iter_table(path, image_dir, **kw)
    raise ValueError(f"unknown source kind {kind!r}: use wds, clipneg, coco or table")


def guess_source_kind(path: str) -> str:
    """``table`` (.csv/.tsv/.tab/.jsonl), ``coco`` (.json), ``clipneg`` (a folder of shards with clipneg's
    manifest.json, or shards inside one), else ``wds``."""
    p = Path(path)
    if p.suffix in (".csv", ".tsv", ".jsonl", ".tab"):
        return "table"
    if p.suffix == ".json":
        return "coco"
    if is_clipneg_manifest((p if p.is_dir() else p.parent) / "manifest.json"):
        return "clipneg"
    return "wds"
