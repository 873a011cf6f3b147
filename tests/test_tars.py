"""The one tar reader (clipneg.tars): the fast expansion gives webdataset's own samples, reads the pax and GNU
long-name forms, and rejects broken shards through the pipeline's handler; iter_tar_samples groups members by
webdataset's rule and reports damage for exactly the samples it affects."""

from __future__ import annotations

import io
import logging
import tarfile

import pytest
import webdataset as wds

from clipneg.tars import TarFormatError, iter_tar_samples, tar_members, tarfile_to_samples
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


# --- iter_tar_samples: webdataset's grouping rule, damage reported per sample ----------------------------------

LONG_KEY = "deep/" * 30 + "k1"


def _webdataset_samples(path) -> list[tuple[str, dict[str, bytes]]]:
    """webdataset's own reading (Python's tarfile + group_by_keys), as (key, members)."""
    pipeline = wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples())
    return [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}) for s in pipeline]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_samples_are_grouped_by_webdatasets_rule(tmp_path, fmt):
    """Given long names (pax / GNU), folders with dots, extensions with dots and capitals, and a name without an
    extension, when grouped, then keys keep the folder and end at the basename's first dot, extensions are lowercase,
    the name without an extension is skipped, and the result is exactly webdataset's own grouping."""
    members = [(LONG_KEY + ".jpg", b"i1"), (LONG_KEY + ".TXT", b"t1"), ("a.b/c.d.JPG", b"i2"), ("a.b/c.txt", b"t2"),
               ("README", b"no extension"), ("folder", None), ("Key2.Neg.JSON", b"{}"), ("Key2.negimg.0.PNG", b"p")]
    raw = _tar(fmt, members)
    got = list(iter_tar_samples(io.BytesIO(raw)))
    assert got == [(LONG_KEY, {"jpg": b"i1", "txt": b"t1"}, None),
                   ("a.b/c", {"d.jpg": b"i2", "txt": b"t2"}, None),
                   ("Key2", {"neg.json": b"{}", "negimg.0.png": b"p"}, None)]
    path = tmp_path / "s.tar"
    path.write_bytes(raw)
    assert [(k, m) for k, m, _ in iter_tar_samples(path)] == _webdataset_samples(path)


def test_a_repeated_extension_marks_only_its_sample():
    raw = _tar(tarfile.USTAR_FORMAT, [("s0.txt", b"a"), ("s0.TXT", b"b"), ("s1.txt", b"c")])
    (k0, m0, e0), (k1, m1, e1) = iter_tar_samples(io.BytesIO(raw), name="x.tar")
    assert (k0, m0) == ("s0", {"txt": b"a"}) and e0.startswith("duplicate member: x.tar: s0.TXT")
    assert (k1, m1, e1) == ("s1", {"txt": b"c"}, None)


# Layout of _tar(USTAR, BROKEN): s0.txt header at 0, data at 512; s0.cls 1024 / 1536; s1.txt 2048 / 2560-3583
# (two blocks); s1.cls 3584 / 4096; s2.txt 4608 / 5120.
BROKEN = [("s0.txt", b"a"), ("s0.cls", b"1"), ("s1.txt", b"b" * 600), ("s1.cls", b"2"), ("s2.txt", b"c")]
S0 = ("s0", {"txt": b"a", "cls": b"1"})


def _cut(raw: bytes, n: int) -> list:
    return [(k, m, e and e.split(":")[0]) for k, m, e in iter_tar_samples(io.BytesIO(raw[:n]), name="x.tar")]


def test_damage_is_reported_for_exactly_the_samples_it_affects():
    """Given a shard cut or corrupted at known places, when grouped, then the samples before the damage come back
    whole, the sample at the damage comes back with an error (with the members read before it), and nothing after."""
    raw = _tar(tarfile.USTAR_FORMAT, BROKEN)
    whole = list(iter_tar_samples(io.BytesIO(raw)))
    assert [k for k, _, e in whole if e is None] == ["s0", "s1", "s2"]
    member = "unreadable shard member"
    # inside the data of s1's first member: s0 had ended, s1 is lost
    assert _cut(raw, 2560 + 100) == [(*S0, None), ("s1", {}, member)]
    # inside the data of s1's second member: s1 keeps its first member, with the error
    assert _cut(raw, 4096) == [(*S0, None), ("s1", {"txt": b"b" * 600}, member)]
    # exactly between s1 and s2, without the end-of-archive blocks: s1 may have had more members
    assert _cut(raw, 4608) == [(*S0, None), ("s1", {"txt": b"b" * 600, "cls": b"2"}, member)]
    *_, (_, _, error) = iter_tar_samples(io.BytesIO(raw[:4608]), name="x.tar")
    assert "end-of-archive" in error and "x.tar" in error
    # a corrupt header (s1.txt's): its name is unknown, so s0, the sample being read, may be incomplete
    bad_sum = bytearray(raw)
    bad_sum[2048 + 10] ^= 1
    assert _cut(bytes(bad_sum), len(raw)) == [(*S0, member)]
    # damage before any sample, and a file that does not open
    assert _cut(b"", 0) == [(None, {}, "unreadable shard")]
    assert _cut(raw, 300) == [(None, {}, "unreadable shard")]


def test_compressed_and_missing_shards(tmp_path):
    """gzip, bzip2 and xz shards read like plain ones (tarfile's ``r|*``, as before); a truncated gzip shard reports
    its last sample; a missing file is one error without a key."""
    import bz2
    import gzip
    import lzma

    raw = _tar(tarfile.USTAR_FORMAT, BROKEN)
    plain = list(iter_tar_samples(io.BytesIO(raw)))
    for compress in (gzip.compress, bz2.compress, lzma.compress):
        path = tmp_path / "s.tar.z"
        path.write_bytes(compress(raw))
        assert list(iter_tar_samples(path)) == plain
        assert list(iter_tar_samples(io.BytesIO(compress(raw)))) == plain
    cut = gzip.compress(raw)[:-30]
    *ok, (key, _, error) = iter_tar_samples(io.BytesIO(cut))
    assert all(e is None for _, _, e in ok) and key is not None and error.startswith("unreadable shard member")
    ((key, members, error),) = iter_tar_samples(tmp_path / "missing.tar")
    assert key is None and members == {} and error.startswith("unreadable shard: ")
    assert "No such file" in error
