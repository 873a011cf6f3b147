"""Shards read as webdataset reads them, with a faster tar header parser: the same samples in the same order.

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

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import webdataset as wds
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, url_opener

BLOCK = 512
_END = bytes(BLOCK)  # a zero block ends the archive
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file
# webdataset skips "__key__"-style metadata members (tariterators.tar_file_iterator's skip_meta)
_META = re.compile(r"__[^/]*__($|/)")


class TarFormatError(ValueError):
    """A shard that is not a readable tar stream (bad checksum, truncated member, malformed pax record)."""


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _number(field: bytes) -> int:
    """A numeric header field: octal digits padded with NUL or space, or base-256 when the high bit is set (GNU)."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big") - (0x100 ** (len(field) - 1) if field[0] & 0x40 else 0)
    digits = _cstr(field).strip()
    return int(digits, 8) if digits else 0


def _read(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise TarFormatError(f"truncated tar: {what} has {len(data)} of {n} bytes (an interrupted copy or write?)")
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


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular member of a tar stream, in order. Reads sequentially: pipes and sockets work."""
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = stream.read(BLOCK)
        if not header or header == _END:
            return
        if len(header) != BLOCK:
            raise TarFormatError(f"truncated tar: a header has {len(header)} of {BLOCK} bytes")
        # The checksum is the byte sum of the header with its own 8-byte field read as spaces (0x20 * 8 = 256).
        if _number(header[148:156]) != sum(header) - sum(header[148:156]) + 256:
            raise TarFormatError("bad tar header checksum: not a tar file, or corrupted")
        size = int(pax["size"]) if "size" in pax else _number(header[124:136])
        typeflag = header[156:157]
        data = _read(stream, size, f"member {_cstr(header[:100])!r}")
        if size % BLOCK:
            _read(stream, BLOCK - size % BLOCK, "member padding")
        if typeflag == b"x":
            pax = _pax_records(data)
            continue
        if typeflag == b"L":
            long_name = _cstr(data).decode("utf-8", "surrogateescape")
            continue
        name = pax.get("path") or long_name
        if name is None:
            name = _cstr(header[:100]).decode("utf-8", "surrogateescape")
            prefix = _cstr(header[345:500]) if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        long_name, pax = None, {}
        if typeflag in _REGULAR and not _META.match(name):
            yield name, data


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

__all__ = ["TarFormatError", "tar_file_expander", "tar_members", "tarfile_to_samples"]
