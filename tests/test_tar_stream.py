"""The fast tar expansion gives webdataset's own samples, reads the pax and GNU long-name forms, and rejects broken
shards through the pipeline's handler."""

from __future__ import annotations

import io
import logging
import tarfile

import pytest
import webdataset as wds

from clipneg.tars import TarFormatError, tar_members, tarfile_to_samples
from tests.test_data import _samples

LONG = "deep/" * 30 + "long_key.txt"  # 162 characters: past ustar's 100-byte name and 155-byte prefix


def _tar(fmt: int, members: list[tuple[str, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        link = tarfile.TarInfo("a.link")
        link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
        tar.addfile(link)
    return buf.getvalue()


MEMBERS = [("a.txt", b"first"), ("dir", None), (LONG, b"x" * 700), ("b/caf\u00e9.json", b"{}"), ("c.bin", b"")]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_members_equal_pythons_tarfile_for_pax_and_gnu_long_names(fmt):
    """Given a tar with a 162-character name, a non-ASCII name, an empty file, a directory and a symlink, when read,
    then the regular members come back with tarfile's names and bytes, in order, and nothing else."""
    raw = _tar(fmt, MEMBERS)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    got = list(tar_members(io.BytesIO(raw)))
    assert got == expected
    assert [n for n, _ in got] == ["a.txt", LONG, "b/caf\u00e9.json", "c.bin"]


def test_base256_size_and_ustar_prefix():
    """GNU base-256 sizes (used past 8 GiB) and ustar's name prefix field are read."""
    raw = bytearray(_tar(tarfile.USTAR_FORMAT, [("p/" * 60 + "k.txt", b"hello")]))
    assert raw[345:347] == b"p/"  # tarfile split the 125-character name into prefix + name
    raw[124:136] = b"\x80" + (5).to_bytes(11, "big")
    raw[148:156] = b" " * 8
    raw[148:156] = f"{sum(raw[:512]):06o}\0 ".encode()
    assert list(tar_members(io.BytesIO(bytes(raw)))) == [("p/" * 60 + "k.txt", b"hello")]


def test_samples_equal_webdatasets_on_clipneg_shards(tmp_path):
    """Given shards written by clipneg, when expanded by both readers, then every sample has the same keys, members
    and bytes, in the same order."""
    from clipneg.shards import list_shards, write_shards

    write_shards(_samples(12), tmp_path, shard_size=5, progress=False)
    urls = list_shards(str(tmp_path))
    ours = list(wds.DataPipeline(wds.SimpleShardList(urls), tarfile_to_samples()))
    theirs = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    assert len(ours) == 12 and ours == theirs
    assert {"png", "txt", "neg.json"} <= ours[5].keys() and ours[5]["__url__"] == urls[1]


def test_broken_shards_raise_or_go_to_the_handler(tmp_path, caplog):
    """A flipped header byte fails the checksum and a cut file is reported as truncated; in a pipeline whose handler
    logs and continues, the good shard's samples and the broken shard's samples before the damage still come out."""
    raw = _tar(tarfile.USTAR_FORMAT, [("s0.txt", b"a"), ("s0.cls", b"1"), ("s1.txt", b"b" * 600), ("s2.txt", b"c")])
    bad_sum = bytearray(raw)
    bad_sum[2048 + 10] ^= 1  # the name of the third member's header (after 2 x (header + 1 data block))
    with pytest.raises(TarFormatError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(bad_sum))))
    with pytest.raises(TarFormatError, match="truncated"):
        list(tar_members(io.BytesIO(raw[:2048 + 100])))  # inside the third header
    with pytest.raises(TarFormatError, match="truncated"):
        list(tar_members(io.BytesIO(raw[:2560 + 100])))  # inside the third member's data

    good, broken = tmp_path / "good.tar", tmp_path / "broken.tar"
    good.write_bytes(_tar(tarfile.USTAR_FORMAT, [("g0.txt", b"g")]))
    broken.write_bytes(bytes(bad_sum))

    def log_and_continue(exn: Exception) -> bool:
        logging.getLogger("test").warning("skipped: %s", exn)
        return True

    with caplog.at_level(logging.WARNING):
        out = list(wds.DataPipeline(wds.SimpleShardList([str(broken), str(good)]),
                                    tarfile_to_samples(handler=log_and_continue)))
    assert [(s["__key__"], s["txt"]) for s in out] == [("s0", b"a"), ("g0", b"g")]
    assert out[0]["cls"] == b"1" and out[0]["__url__"] == str(broken)
    assert "checksum" in caplog.text and str(broken) in caplog.text
    with pytest.raises(TarFormatError):
        list(wds.DataPipeline(wds.SimpleShardList([str(broken)]), tarfile_to_samples()))
