from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from clipneg.commands import main
from clipneg.schema import NegImage, NegText, Paraphrase, Sample, sample_to_members
from clipneg.shards import Quarantined, QuarantineError, write_shards
from clipneg.sources import (
    CocoStats,
    DuplicateStats,
    SourceRecord,
    check_caption,
    filter_duplicates,
    guess_source_kind,
    iter_clipneg_shards,
    iter_coco,
    iter_table,
    iter_webdataset,
    record_to_sample,
    sugarcrepe_image_ids,
)
from tests.conftest import image_bytes


def _coco(tmp_path, image_ids):
    images = tmp_path / "train2014"
    images.mkdir()
    data = {"images": [], "annotations": []}
    for n, image_id in enumerate(image_ids):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        (images / name).write_bytes(image_bytes((n, n, n), fmt="JPEG"))
        data["images"].append({"id": image_id, "file_name": name})
        for a in range(2):
            data["annotations"].append({"id": 1000 * n + a, "image_id": image_id, "caption": f"caption {n} {a}"})
    data["annotations"].append({"id": 99999, "image_id": 424242, "caption": "orphan annotation"})
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    return path, images


def test_sugarcrepe_ids_are_shipped():
    ids = sugarcrepe_image_ids()
    assert len(ids) == 1560
    assert 85329 in ids  # 000000085329.jpg, the first image in SugarCrepe's add_att.json


def test_coco_source_drops_sugarcrepe_images_and_counts_them(tmp_path):
    leak = sorted(sugarcrepe_image_ids())[:2]
    path, images = _coco(tmp_path, [9, 25, *leak])
    stats = CocoStats()
    records = list(iter_coco(path, images, stats=stats))
    assert stats.annotations == 9 and stats.dropped_leakage == 4 and stats.dropped_images == set(leak)
    keys = [r.key for r in records]
    assert keys[:4] == ["000000000009_0", "000000000009_1", "000000000025_1000", "000000000025_1001"]
    assert records[-1].reason.startswith("annotation names image id 424242")
    kept = list(iter_coco(path, images, drop_ids=set()))
    assert len(kept) == 9


def test_shard_command_on_coco_reports_leakage_in_manifest(tmp_path, capsys):
    leak = sorted(sugarcrepe_image_ids())[:1]
    path, images = _coco(tmp_path, [9, *leak])
    out = tmp_path / "shards"
    assert main(["shard", str(path), "--image-dir", str(images), "--out", str(out), "--shard-size", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 3, "written": 2, "quarantined": 1}
    assert manifest["info"]["source"]["coco_dropped_leakage"] == {"annotations": 2, "images": 1}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == manifest["counts"]


def test_table_source_defaults_follow_negclip_tsv_columns(tmp_path):
    (tmp_path / "im.jpg").write_bytes(image_bytes((3, 3, 3), fmt="JPEG"))
    tsv = tmp_path / "valid_neg_clip.tsv"
    tsv.write_text("\ttitle\tfilepath\tneg_caption\n0\ta dog on a bed\tim.jpg\ta bed on a dog\n")
    (record,) = list(iter_table(tsv))
    assert record.key == "000000002" and record.caption == "a dog on a bed"
    assert record.meta["neg_caption"] == "a bed on a dog"
    sample = record_to_sample(record)
    assert sample.image_ext == "jpg" and sample.image == (tmp_path / "im.jpg").read_bytes()  # bytes unchanged
    manifest = write_shards([record], tmp_path / "out", process=record_to_sample, progress=False)
    assert manifest["counts"]["written"] == 1


# --- tar shards: one grouping rule, damage quarantined per sample -----------------------------------------------


def _shard(path, members: list[tuple[str, bytes]]) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return tar.getmembers()


def _pairs(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [m for i in range(start, start + n)
            for m in ((f"x{i}.jpg", image_bytes((i, i, i), fmt="JPEG")), (f"x{i}.txt", f"caption {i}".encode()))]


def _write(items, out):
    manifest = write_shards(items, out, process=record_to_sample, shard_size=100, progress=False)
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    written = sorted(m.name for t in out.glob("*.tar") for m in tarfile.open(t))
    return manifest["counts"], quarantine, written


def test_truncated_shards_quarantine_exactly_the_affected_samples(tmp_path):
    """Given a shard of four pairs cut inside the third pair's image, and one cut exactly between the second and the
    third pair, when sharded, then the pairs before the damage are written, exactly the pair at the damage is
    quarantined (nothing after it can be located), and a good shard beside them is written in full."""
    good, src = tmp_path / "good.tar", tmp_path / "src.tar"
    _shard(good, _pairs(2, start=10))
    members = _shard(src, _pairs(4))
    x2_jpg = next(m for m in members if m.name == "x2.jpg")
    raw = src.read_bytes()
    (tmp_path / "in_image.tar").write_bytes(raw[:x2_jpg.offset_data + 100])
    (tmp_path / "between.tar").write_bytes(raw[:x2_jpg.offset])

    counts, quarantine, written = _write(iter_webdataset(f"{tmp_path}/{{good,in_image}}.tar"), tmp_path / "a")
    assert counts == {"inputs": 5, "written": 4, "quarantined": 1}
    assert written == sorted(f"x{i}.{e}" for i in (10, 11, 0, 1) for e in ("jpg", "txt"))
    (q,) = quarantine
    assert q["key"] == "x2" and q["reason"].startswith("unreadable shard member: ") and "truncated" in q["reason"]
    assert q["source"].endswith("in_image.tar:x2")

    counts, quarantine, _ = _write(iter_webdataset(str(tmp_path / "between.tar")), tmp_path / "b")
    assert counts == {"inputs": 2, "written": 1, "quarantined": 1}
    assert quarantine[0]["key"] == "x1" and "end-of-archive" in quarantine[0]["reason"]

    (tmp_path / "not_a_tar.tar").write_bytes(b"\0" * 100)
    counts, quarantine, _ = _write(iter_webdataset(str(tmp_path / "not_a_tar.tar")), tmp_path / "c")
    assert counts == {"inputs": 1, "written": 0, "quarantined": 1}
    assert quarantine[0]["key"] is None and quarantine[0]["reason"].startswith("unreadable shard: ")


def test_webdataset_source_groups_like_webdataset(tmp_path):
    """Uppercase extensions are lowercased (the image keeps its bytes, the shard names it .jpg); a member in a folder
    keeps the folder in its key, which the shard contract rejects with advice; a long pax name groups like a short
    one."""
    long_key = "k" * 150
    img = image_bytes((5, 5, 5), fmt="JPEG")
    _shard(tmp_path / "s.tar", [("X5.JPG", img), ("X5.TXT", b"upper case"), ("sub/x6.jpg", img),
                                ("sub/x6.txt", b"in a folder"), (f"{long_key}.jpg", img),
                                (f"{long_key}.txt", b"long")])
    records = list(iter_webdataset(str(tmp_path / "s.tar")))
    assert [(r.key, r.caption, r.image_bytes) for r in records] == [
        ("X5", b"upper case", img), ("sub/x6", b"in a folder", img), (long_key, b"long", img)]
    # (the shard writer's ustar headers cannot hold a 150-character key yet, so only the first two are written)
    counts, quarantine, written = _write(records[:2], tmp_path / "out")
    assert counts == {"inputs": 2, "written": 1, "quarantined": 1}
    assert written == ["X5.jpg", "X5.txt"]
    assert quarantine[0]["key"] == "sub/x6" and "invalid sample key 'sub/x6'" in quarantine[0]["reason"]
    with tarfile.open(next((tmp_path / "out").glob("*.tar"))) as tar:
        assert tar.extractfile("X5.jpg").read() == img


# --- tables: bytes that are not UTF-8 -------------------------------------------------------------------------


def _images(tmp_path, n: int = 4) -> None:
    for i in range(n):
        (tmp_path / f"im{i}.jpg").write_bytes(image_bytes((i, 2 * i, 3 * i), fmt="JPEG"))


def _captions(out) -> dict[str, str]:
    with tarfile.open(next(out.glob("*.tar"))) as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")}


def test_latin1_csv_row_is_quarantined_with_its_reason_and_the_others_are_written(tmp_path):
    """Given a UTF-8 CSV (with a byte order mark) where one caption is latin-1 ('caf\\xe9') and one other column of
    another row is, when sharded, then those two rows are quarantined with check_caption's wording and the column
    named, and the other rows (one with real UTF-8 accents, one with a quoted newline) are written unchanged."""
    _images(tmp_path)
    table = tmp_path / "pairs.csv"
    table.write_bytes(b"\xef\xbb\xbfimage,caption,note\n"
                      b"im0.jpg,a red cube,ok\n"
                      b"im1.jpg,caf\xe9,ok\n"
                      + "im2.jpg,un caf\u00e9 na\u00efve,ok\n".encode() +
                      b'im3.jpg,"two\nlines",ok\n'
                      b"im0.jpg,a blue ball,d\xe9j\xe0\n")
    out = tmp_path / "out"
    counts, quarantine, _ = _write(iter_table(table), out)
    assert counts == {"inputs": 5, "written": 3, "quarantined": 2}
    with pytest.raises(QuarantineError) as expected:
        check_caption(b"caf\xe9")
    assert [(q["key"], q["reason"], q["source"]) for q in quarantine] == [
        ("000000003", str(expected.value), "pairs.csv:3"),
        ("000000006", "undecodable column 'note': not UTF-8 (invalid continuation byte at byte 1)", "pairs.csv:6")]
    assert str(expected.value) == "undecodable caption: not UTF-8 (unexpected end of data at byte 3)"
    assert _captions(out) == {"000000002.txt": "a red cube", "000000004.txt": "un caf\u00e9 na\u00efve",
                              "000000005.txt": "two\nlines"}
    assert json.loads((out / "manifest.json").read_text())["quarantine_reasons"] == {
        "undecodable caption": 1, "undecodable column": 1}


def test_latin1_jsonl_line_is_quarantined_and_the_others_are_written(tmp_path):
    _images(tmp_path)
    table = tmp_path / "pairs.jsonl"
    table.write_bytes(b'{"image": "im0.jpg", "caption": "a red cube"}\n'
                      b'{"image": "im1.jpg", "caption": "caf\xe9"}\n'
                      b'{"image": "im2.jpg", "caption": "caf\\u00e9 ok"}\n'
                      b'{"image": "im3.jpg", "caption": "lone \\udce9 surrogate"}\n'
                      b'["not", "an object"]\n')
    out = tmp_path / "out"
    counts, quarantine, _ = _write(iter_table(table), out)
    assert counts == {"inputs": 5, "written": 2, "quarantined": 3}
    assert [(q["key"], q["reason"]) for q in quarantine] == [
        ("000000002", "undecodable caption: not UTF-8 (unexpected end of data at byte 3)"),
        ("000000004", "undecodable caption: not UTF-8 (invalid continuation byte at byte 5)"),
        (None, "unreadable JSONL line: a JSON object per line expected, got list")]
    assert _captions(out) == {"000000001.txt": "a red cube", "000000003.txt": "caf\u00e9 ok"}


def test_csv_with_a_latin1_header_or_a_long_row(tmp_path):
    table = tmp_path / "bad_header.csv"
    table.write_bytes(b"image,l\xe9gende\nim0.jpg,x\n")
    with pytest.raises(ValueError, match="header row .* not UTF-8"):
        list(iter_table(table))
    table = tmp_path / "long_row.csv"
    table.write_text("image,caption\nim0.jpg,a cube,surplus\n")
    (q,) = iter_table(table)
    assert q.reason == "row has more fields than the header's 2"


# --- duplicates -----------------------------------------------------------------------------------------------


def _duplicates_table(tmp_path):
    _images(tmp_path, 2)
    table = tmp_path / "pairs.csv"
    table.write_text("image,caption\n"
                     "im0.jpg,a red cube\n"     # row 2
                     "im0.jpg,a red cube\n"     # row 3: duplicate of row 2
                     "im0.jpg,a blue ball\n"    # same image, other caption
                     "im1.jpg,a red cube\n"     # same caption, other image
                     "./im0.jpg,a red cube\n")  # row 6: the same file again
    return table


@pytest.mark.parametrize("policy", ["quarantine", "keep"])
def test_duplicate_rows_follow_the_policy_and_are_counted(tmp_path, policy, capsys):
    """Given a table where row 2's image and caption come back twice, when sharded with --duplicates quarantine, then
    the two later copies are quarantined naming row 2; with keep, all five are written; both count 2 in the
    manifest's info."""
    out = tmp_path / "out"
    assert main(["shard", str(_duplicates_table(tmp_path)), "--out", str(out), "--duplicates", policy]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["info"]["source"]["duplicates"] == {"policy": policy, "found": 2}
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    if policy == "quarantine":
        assert manifest["counts"] == {"inputs": 5, "written": 3, "quarantined": 2}
        assert [(q["key"], q["reason"]) for q in quarantine] == [
            ("000000003", "duplicate pair: same image and caption as pairs.csv:2"),
            ("000000006", "duplicate pair: same image and caption as pairs.csv:2")]
        assert manifest["quarantine_reasons"] == {"duplicate pair": 2}
    else:
        assert manifest["counts"] == {"inputs": 5, "written": 5, "quarantined": 0} and quarantine == []
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == manifest["counts"]


def test_duplicate_filter_works_on_any_source():
    """Records carrying bytes (webdataset) compare by bytes, Samples (clipneg shards) too; quarantined inputs pass
    through; an unknown policy is an error that names the choices."""
    img, other = image_bytes((1, 1, 1)), image_bytes((2, 2, 2))
    items = [SourceRecord("a", b"cap", "s.tar:a", image_bytes=img),
             SourceRecord("b", "cap", "s.tar:b", image_bytes=img),  # same bytes, same text as bytes or str
             SourceRecord("c", "cap", "s.tar:c", image_bytes=other),
             Quarantined("d", "corrupt image", "s.tar:d"),
             Sample("e", other, "png", "cap"),
             Sample("f", other, "png", "cap ")]
    stats = DuplicateStats()
    out = list(filter_duplicates(items, stats=stats))
    assert out[0] is items[0] and out[2:4] == items[2:4] and out[5] is items[5]
    assert out[1] == Quarantined("b", "duplicate pair: same image and caption as s.tar:a", "s.tar:b")
    assert out[4] == Quarantined("e", "duplicate pair: same image and caption as s.tar:c", "key e")
    assert stats.found == 2
    kept = DuplicateStats()
    assert list(filter_duplicates(items, policy="keep", stats=kept)) == items and kept.found == 2
    with pytest.raises(ValueError, match="quarantine, keep"):
        list(filter_duplicates(items, policy="drop"))


# --- clipneg shards read back (chaining) ----------------------------------------------------------------------


def _rich_samples(n: int):
    for i in range(n):
        texts = [NegText(f"a blue cube {i}", "replace_att", "rules", i, 0.25 + i),
                 NegText(f"a red ball {i}", "replace_obj", "llm", None)]
        images = [NegImage(image_bytes((9, i, 9)), "png", "replace_att", "render", i, text=0, score=0.5),
                  NegImage(image_bytes((i, 9, 9), fmt="JPEG"), "jpg", "mined", "mined", None)]
        paraphrases = [Paraphrase(f"a cube, red, number {i}", "para", 7, (f"a cube, number, red {i}",))]
        yield Sample(f"s{i:03d}", image_bytes((i, 1, 2)), "png", f"a red cube {i}", {"i": i, "z": [1, "\u00e9"]},
                     texts if i % 3 else [], images if i % 3 == 1 else [], paraphrases if i % 2 else [])


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_clipneg_shards_round_trip_to_identical_bytes(tmp_path):
    """Given clipneg shards with negative texts, negative images (png and jpg) and paraphrases, when read back and
    written again (by the library and by `clipneg shard`, which finds them by their manifest), then the samples equal
    the originals and every tar has the same sha256."""
    samples = list(_rich_samples(7))
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_shards(samples, a, shard_size=3, progress=False)
    back = list(iter_clipneg_shards(str(a)))
    assert back == samples
    assert write_shards(back, b, process=lambda s: s, shard_size=3, progress=False)["counts"]["written"] == 7
    assert len(_digests(a)) == 3 and _digests(a) == _digests(b)
    assert guess_source_kind(str(a)) == "clipneg"
    assert guess_source_kind(str(a / "train-000000.tar")) == "clipneg"
    assert main(["shard", str(a), "--out", str(c), "--shard-size", "3"]) == 0
    assert _digests(c) == _digests(a)
    manifest = json.loads((c / "manifest.json").read_text())
    assert manifest["info"]["source"]["kind"] == "clipneg" and manifest["neg_text_kinds"] == {
        "replace_att": 4, "replace_obj": 4}


def test_source_kind_from_the_manifest(tmp_path):
    """Plain webdataset shards stay wds (also beside another tool's manifest.json); a clipneg manifest of another
    schema version is an error rather than a silent read without negatives."""
    plain = tmp_path / "plain"
    plain.mkdir()
    _shard(plain / "000.tar", _pairs(1))
    assert guess_source_kind(str(plain)) == "wds"
    (plain / "manifest.json").write_text(json.dumps({"files": ["000.tar"]}))
    assert guess_source_kind(str(plain)) == "wds"
    (plain / "manifest.json").write_text(json.dumps({"schema_version": 99, "counts": {}, "shards": []}))
    with pytest.raises(ValueError, match="schema version 99"):
        guess_source_kind(str(plain))


def test_clipneg_samples_that_break_the_schema_are_quarantined(tmp_path):
    good = next(_rich_samples(2))
    members = {k: v for k, v in sample_to_members(good).items() if k != "__key__"}
    bad_neg = json.dumps({"v": 1, "texts": [], "images": [{"member": "negimg.0.png", "kind": "mined", "gen": "m"}]})
    _shard(tmp_path / "s.tar", [*((f"{good.key}.{e}", v if isinstance(v, bytes) else v.encode())
                                  for e, v in members.items()),
                                ("k1.png", good.image), ("k1.txt", b"x"), ("k1.neg.json", bad_neg.encode()),
                                ("k2.png", good.image), ("k2.txt", b"caf\xe9"),
                                ("k3.png", good.image), ("k3.txt", b"x"), ("k3.json", b"{broken")])
    got = list(iter_clipneg_shards(str(tmp_path / "s.tar")))
    assert got[0] == good
    assert [(q.key, q.reason.split(":")[0]) for q in got[1:]] == [
        ("k1", "schema error"), ("k2", "undecodable caption"), ("k3", "unreadable json member")]
    assert "neg.json names negimg.0.png" in got[1].reason
