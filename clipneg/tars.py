"""Shards read as webdataset reads them, with a faster tar header parser: the same samples in the same order.

This is clipneg's one tar reader. :func:`tar_members` yields the regular members of a stream; the training loader
groups them with webdataset's ``group_by_keys`` (:data:`tarfile_to_samples`), and everything else (``clipneg shard``
on webdataset or clipneg shards, ``clipneg inspect``) groups them with :func:`iter_tar_samples`, which follows the
same rule (webdataset's ``base_plus_ext``) but reports damage per sample instead of raising.

webdataset expands a shard with Python's ``tarfile``, which parses every header field in Python (about 0.1 ms a
member). A built-in world sample is 16 members of about 300 bytes (image, caption, metadata, negatives, counterfactual
images), so tar parsing was the largest part of the training loader's time (docs/BENCHMARKS.md). This module replaces
only that expansion step: webdataset still opens the URLs (``url_opener``: files, pipes, http) and groups members into
samples (``group_by_keys``), and errors go to the same handler.

Headers follow POSIX.1-1988 ustar (name, size, typeflag, checksum, prefix), plus the two extensions for long names and
large sizes that writers emit: pax extended headers (POSIX.1-2001, typeflag ``x``: ``path`` and ``size`` records for
the next member) and GNU long names (typeflag ``L``). Python's tarfile, GNU tar and webdataset's TarWriter write
nothing else for regular files. Links, directories and devices are skipped, as webdataset skips them.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import webdataset as wds
from webdataset.handlers import reraise_exception
from webdataset.tariterators import base_plus_ext, group_by_keys, url_opener

log = logging.getLogger(__name__)

BLOCK = 512
_END = bytes(BLOCK)  # a zero block ends the archive
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file
# webdataset skips "__key__"-style metadata members (tariterators.tar_file_iterator's skip_meta)
_META = re.compile(r"__[^/]*__($|/)")


class TarFormatError(ValueError):
    """A shard that is not a readable tar stream (bad checksum, truncated member, malformed pax record).

    ``member`` names the regular member whose data was cut off, when the damage is there (its header was read).
    """

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _number(field: bytes) -> int:
    """A numeric header field: octal digits padded with NUL or space, or base-256 when the high bit is set (GNU)."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big") - (0x100 ** (len(field) - 1) if field[0] & 0x40 else 0)
    digits = _cstr(field).strip()
    return int(digits, 8) if digits else 0


def _read(stream: BinaryIO, n: int, what: str, member: str | None = None) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise TarFormatError(f"truncated tar: {what} has {len(data)} of {n} bytes (an interrupted copy or write?)",
                             member)
    return data


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records, the length counting the whole record (POSIX.1-2001 pax format)."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] not in (b"", b"\0"):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= space - pos:
            raise TarFormatError(f"malformed pax record at byte {pos}")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def tar_members(stream: BinaryIO, *, require_end: bool = False) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular member of a tar stream, in order. Reads sequentially: pipes and sockets work.

    Like tarfile and webdataset, a stream that stops at a member boundary without the end-of-archive blocks is read
    as complete; with ``require_end`` it raises :class:`TarFormatError` instead, since every tar writer emits those
    blocks and a copy cut exactly between two members would otherwise lose the samples after it without a word.
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = stream.read(BLOCK)
        if not header and require_end:
            raise TarFormatError("truncated tar: it ends without the end-of-archive blocks (an interrupted copy "
                                 "or write?)")
        if not header or header == _END:
            return
        if len(header) != BLOCK:
            raise TarFormatError(f"truncated tar: a header has {len(header)} of {BLOCK} bytes")
        # The checksum is the byte sum of the header with its own 8-byte field read as spaces (0x20 * 8 = 256).
        if _number(header[148:156]) != sum(header) - sum(header[148:156]) + 256:
            raise TarFormatError("bad tar header checksum: not a tar file, or corrupted")
        size = int(pax["size"]) if "size" in pax else _number(header[124:136])
        typeflag = header[156:157]
        name = pax.get("path") or long_name
        if name is None:
            name = _cstr(header[:100]).decode("utf-8", "surrogateescape")
            prefix = _cstr(header[345:500]) if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        wanted = typeflag in _REGULAR and not _META.match(name)
        data = _read(stream, size, f"member {name!r}", name if wanted else None)
        if size % BLOCK:
            _read(stream, BLOCK - size % BLOCK, "member padding", name if wanted else None)
        if typeflag == b"x":
            pax = _pax_records(data)
            continue
        if typeflag == b"L":
            long_name = _cstr(data).decode("utf-8", "surrogateescape")
            continue
        long_name, pax = None, {}
        if wanted:
            yield name, data


# --- samples, reported per sample (sources, inspect) --------------------------------------------------------------

TarSample = tuple[str | None, dict[str, bytes], str | None]
# Exceptions of a damaged stream: TarFormatError and malformed pax records (ValueError), and the decompressors'.
_STREAM_ERRORS = (ValueError, OSError, EOFError, zlib.error, lzma.LZMAError)
_COMPRESSED: tuple[tuple[bytes, Callable[[BinaryIO], BinaryIO]], ...] = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    (b"BZh", lambda f: bz2.BZ2File(f, "rb")),
    (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f, "rb")),
)


class _Prefixed:
    """A stream whose first bytes were already read (to sniff the compression), for streams without ``peek``."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head, self._stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(n)
        if n < 0:
            head, self._head = self._head, b""
            return head + self._stream.read()
        head, self._head = self._head[:n], self._head[n:]
        return head + (self._stream.read(n - len(head)) if len(head) < n else b"")


def _decompressed(stream: BinaryIO) -> BinaryIO:
    """The tar inside a gzip, bzip2 or xz stream (tarfile's ``r|*``, which webdataset uses), else the stream."""
    if hasattr(stream, "peek"):
        head = stream.peek(6)[:6]
    else:
        head = stream.read(6)
        stream = _Prefixed(head, stream)
    for magic, opener in _COMPRESSED:
        if head.startswith(magic):
            return opener(stream)
    return stream


def iter_tar_samples(source: str | os.PathLike | BinaryIO, *, name: str | None = None) -> Iterator[TarSample]:
    """``(key, {ext: bytes}, error)`` for each sample of a tar shard (a path or a binary stream), in order.

    Members are grouped as webdataset groups them for training (``base_plus_ext``): the key is the member name up to
    the first dot of its basename, folder prefix included (``a/b.c.JPG`` -> ``a/b``); the extension is the rest,
    lowercased (``c.jpg``); consecutive members with the same key form one sample. A name with no extension belongs to
    no sample and is skipped (logged), as webdataset skips it.

    Damage never raises, it is reported with the samples it affects (``error`` is a quarantine reason): a sample
    with the same extension twice comes back with an error; when the stream breaks (bad checksum, truncated member,
    missing end-of-archive blocks, corrupt compression) the sample being read comes back with the members read so
    far and an error, and reading stops, since nothing after the damage can be located. When the damage is in the
    data of a sample's first member, that sample comes back empty with the error and the one before it is whole.
    ``key`` is None only for an error before the first sample (a file that does not open or is not a tar). ``name``
    names the shard in errors (default: the path, or the stream's ``name``).
    """
    is_path = isinstance(source, str | os.PathLike)
    url = name or (os.fspath(source) if is_path else str(getattr(source, "name", "<stream>")))
    try:
        stream = open(source, "rb") if is_path else source
    except OSError as e:
        yield None, {}, f"unreadable shard: {url}: {e.strerror or e}"
        return
    try:
        yield from _group_samples(stream, url)
    finally:
        if is_path:
            stream.close()


def _group_samples(stream: BinaryIO, url: str) -> Iterator[TarSample]:
    key: str | None = None
    group: dict[str, bytes] = {}
    error: str | None = None
    try:
        for fname, data in tar_members(_decompressed(stream), require_end=True):
            base, ext = base_plus_ext(fname)
            if base is None:
                log.warning("%s: skipped member %r: a name without an extension belongs to no sample", url, fname)
                continue
            ext = ext.lower()
            if base != key:
                if key is not None:
                    yield key, group, error
                key, group, error = base, {}, None
            if ext in group:  # webdataset raises here, which drops the whole shard
                error = error or f"duplicate member: {url}: {fname} is the second {ext!r} of sample {key}"
                continue
            group[ext] = data
    except _STREAM_ERRORS as e:
        broken = base_plus_ext(e.member)[0] if getattr(e, "member", None) else None
        if broken is not None and broken != key:
            # The data of a new sample's first member was cut off: the sample before it had ended cleanly.
            if key is not None:
                yield key, group, error
            key, group = broken, {}
        if key is None:
            yield None, {}, f"unreadable shard: {url}: {e}"
        else:
            yield key, group, (f"unreadable shard member: {url}: {e} (sample {key} may be incomplete, and nothing "
                               "after it could be read)")
        return
    if key is not None:
        yield key, group, error


# --- the training loader's expansion step ------------------------------------------------------------------------


def tar_file_expander(data: Iterable[dict[str, Any]],
                      handler: Callable[[Exception], bool] = reraise_exception) -> Iterator[dict]:
    """webdataset's ``tar_file_expander`` contract: ``{"fname", "data", "__url__"}`` per member and ``{}`` after each
    shard, so samples of two shards never merge; an unreadable shard goes to ``handler`` with its URL."""
    for source in data:
        url = source["url"]
        try:
            for fname, payload in tar_members(source["stream"]):
                yield {"fname": fname, "data": payload, "__url__": url}
            yield {}
        except Exception as exn:  # noqa: BLE001 - the handler decides (log and skip the shard, or raise)
            exn.args = (*exn.args, url)
            if not handler(exn):
                break
        finally:
            close = getattr(source["stream"], "close", None)
            if close is not None:
                close()


def _samples(src: Iterable[dict[str, Any]],
             handler: Callable[[Exception], bool] = reraise_exception) -> Iterator[dict[str, Any]]:
    files = tar_file_expander(url_opener(src, handler=handler), handler=handler)
    return group_by_keys(files, handler=handler)


# A drop-in for ``wds.tarfile_to_samples(handler=...)`` in a wds.DataPipeline.
tarfile_to_samples = wds.filters.pipelinefilter(_samples)

__all__ = ["TarFormatError", "TarSample", "iter_tar_samples", "tar_file_expander", "tar_members", "tarfile_to_samples"]
