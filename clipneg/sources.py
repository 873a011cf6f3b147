"""Source pairs (image, caption) from the formats researchers have: webdataset/img2dataset shards, COCO captions JSON
with an image folder, and CSV/TSV/JSONL tables with an image column.

Every source yields, in a fixed order, either a :class:`SourceRecord` (image bytes read lazily, so resumed jobs do not
re-read committed inputs) or a :class:`~clipneg.shards.Quarantined` for input that is unreadable at the source level.
:func:`record_to_sample` then checks the image really decodes and the caption is usable, quarantining what is not.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from clipneg.schema import Sample
from clipneg.shards import Quarantined, QuarantineError

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
    extra: dict[str, Any] = field(default_factory=dict)

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


def check_caption(caption: str | bytes) -> str:
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError as e:
            raise QuarantineError(f"undecodable caption: not UTF-8 ({e.reason} at byte {e.start})") from e
    caption = caption.strip()
    if not caption:
        raise QuarantineError("empty caption")
    return caption


def record_to_sample(record: SourceRecord) -> Sample:
    """The default ``process`` for :func:`clipneg.shards.write_shards`: a validated sample with no negatives."""
    caption = check_caption(record.caption)
    data = record.read_image()
    ext = check_image(data)
    return Sample(record.key, data, ext, caption, record.meta)


# --- webdataset / img2dataset shards --------------------------------------------------------------------------


def iter_webdataset(spec: str) -> Iterator[SourceRecord | Quarantined]:
    """Samples from tar shards (a brace pattern like ``data/{00000..00009}.tar``, a folder, or one file).

    Read with ``tarfile`` rather than webdataset's iterator so that a truncated shard or an unreadable member becomes
    a quarantine entry for exactly the samples affected, instead of an exception or a silent skip.
    """
    from clipneg.shards import list_shards

    for url in list_shards(spec):
        yield from _iter_tar(url)


def _group_members(tar: tarfile.TarFile, url: str) -> Iterator[tuple[str, dict[str, bytes], str | None]]:
    key, group = None, {}
    try:
        for info in tar:
            if not info.isfile():
                continue
            name = Path(info.name)
            stem, _, ext = name.name.partition(".")
            full_key = str(name.parent / stem) if str(name.parent) != "." else stem
            if key is not None and full_key != key:
                yield key, group, None
                group = {}
            key = full_key
            fobj = tar.extractfile(info)
            group[ext.lower()] = fobj.read() if fobj else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        if key is not None:
            yield key, group, f"unreadable shard member in {url} after {key}: {e}"
        else:
            yield f"{Path(url).stem}-unreadable", {}, f"unreadable shard {url}: {e}"
        return
    if key is not None:
        yield key, group, None


def _iter_tar(url: str) -> Iterator[SourceRecord | Quarantined]:
    try:
        tar = tarfile.open(url, mode="r|*")
    except (tarfile.TarError, OSError) as e:
        yield Quarantined(None, f"unreadable shard: {e}", url)
        return
    with tar:
        for key, members, error in _group_members(tar, url):
            source = f"{url}:{key}"
            if error:
                yield Quarantined(key, error, source)
                continue
            image_ext = next((e for e in IMAGE_SUFFIXES if e in members), None)
            meta = None
            if "json" in members:
                try:
                    meta = json.loads(members["json"])
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    yield Quarantined(key, f"unreadable json member: {e}", source)
                    continue
            caption = members.get("txt")
            if caption is None and isinstance(meta, dict) and isinstance(meta.get("caption"), str):
                caption = meta["caption"]
            if image_ext is None:
                yield Quarantined(key, f"no image member (have: {sorted(members)})", source)
            elif caption is None:
                yield Quarantined(key, "no caption (no txt member, no json caption)", source)
            else:
                yield SourceRecord(key, caption, source, image_bytes=members[image_ext], meta=meta)


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
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line), None
                except json.JSONDecodeError as e:
                    yield n, None, f"unreadable JSONL line: {e}"
        return
    delimiter = "\t" if path.suffix in (".tsv", ".tab") else ","
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        for n, row in enumerate(csv.DictReader(f, delimiter=delimiter), 2):
            yield n, row, None


def iter_table(path: str | Path, image_root: str | Path | None = None, *, image_col: str | None = None,
               caption_col: str | None = None, key_col: str | None = None) -> Iterator[SourceRecord | Quarantined]:
    """Rows of a CSV, TSV or JSONL file naming an image file and a caption.

    Columns default to the first present of ``image|filepath|file_name|path`` and ``caption|title|text`` (NegCLIP's
    TSV uses filepath/title). Keys come from ``key_col``, else the row number, so they are stable across runs.
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
        if icol is None or not row.get(icol):
            yield Quarantined(key, f"no image column value (columns: {sorted(row)})", source)
            continue
        if ccol is None or row.get(ccol) is None:
            yield Quarantined(key, f"no caption column (columns: {sorted(row)})", source)
            continue
        image_path = Path(row[icol])
        image_path = image_path if image_path.is_absolute() else root / image_path
        meta = {k: v for k, v in row.items() if k not in (icol, ccol)}
        yield SourceRecord(key, row[ccol], source, image_path=image_path, meta=meta or None)


def open_source(kind: str, path: str, *, image_dir: str | None = None, **kw: Any) -> Iterator[Any]:
    """Dispatch on source kind: ``wds`` (shards), ``coco`` (captions JSON + image dir), ``table`` (csv/tsv/jsonl)."""
    if kind == "wds":
        return iter_webdataset(path)
    if kind == "coco":
        if image_dir is None:
            raise ValueError("a COCO source needs --image-dir (the folder holding the images the JSON names)")
        return iter_coco(path, image_dir, **kw)
    if kind == "table":
        return iter_table(path, image_dir, **kw)
    raise ValueError(f"unknown source kind {kind!r}: use wds, coco or table")


def guess_source_kind(path: str) -> str:
    p = Path(path)
    if p.suffix in (".csv", ".tsv", ".jsonl", ".tab"):
        return "table"
    if p.suffix == ".json":
        return "coco"
    return "wds"
