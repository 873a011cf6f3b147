from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import webdataset as wds

from clipneg.schema import NegImage, NegText, Sample
from clipneg.shards import Quarantined, QuarantineError, reason_category, write_shards
from clipneg.sources import iter_table, iter_webdataset, record_to_sample
from tests.conftest import image_bytes

ROOT = Path(__file__).resolve().parents[1]


def _samples(n: int):
    for i in range(n):
        yield Sample(f"k{i:04d}", image_bytes((i % 256, 10, 20)), "png", f"a red circle number {i}", {"i": i},
                     [NegText(f"a blue circle number {i}", "replace_att", "test", i),
                      NegText(f"a red square number {i}", "replace_obj", "test", i)],
                     [NegImage(image_bytes((10, 10, i % 256)), "png", "replace_att", "test", i, text=0)])


def test_round_trip_with_negatives_through_webdataset(tmp_path):
    manifest = write_shards(_samples(25), tmp_path, shard_size=10, progress=False, info={"seed": 3})
    assert manifest["counts"] == {"inputs": 25, "written": 25, "quarantined": 0}
    assert manifest["neg_text_kinds"] == {"replace_att": 25, "replace_obj": 25}
    assert manifest["neg_image_kinds"] == {"replace_att": 25}
    assert manifest["info"] == {"seed": 3}
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    assert sizes == {"train-000000.tar": 10, "train-000001.tar": 10, "train-000002.tar": 5}
    urls = [str(tmp_path / n) for n in sizes]
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in got] == [f"k{i:04d}" for i in range(25)]
    s7 = got[7]
    assert set(s7) >= {"png", "txt", "json", "neg.json", "negimg.0.png"}
    assert s7["txt"].decode() == "a red circle number 7"
    neg = json.loads(s7["neg.json"])
    assert neg["images"][0]["member"] == "negimg.0.png" and neg["images"][0]["text"] == 0
    assert neg["texts"][0]["text"] == "a blue circle number 7"
    assert s7["negimg.0.png"] == image_bytes((10, 10, 7))


def _broken_table(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    (images / "ok.png").write_bytes(image_bytes((1, 2, 3)))
    (images / "ok2.jpg").write_bytes(image_bytes((4, 5, 6), fmt="JPEG"))
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    good_png = image_bytes((7, 8, 9), size=64)
    (images / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (images / "anim.gif").write_bytes(image_bytes((1, 1, 1), fmt="GIF"))
    rows = [
        {"key": "a1", "image": "ok.png", "caption": "a red circle"},
        {"key": "a2", "image": "corrupt.jpg", "caption": "a blue square"},
        {"key": "a3", "image": "truncated.png", "caption": "a green star"},
        {"key": "a4", "image": "ok.png", "caption": "   "},
        {"key": "bad.key", "image": "ok.png", "caption": "a yellow cross"},
        {"key": "a1", "image": "ok2.jpg", "caption": "a duplicate key"},
        {"key": "a5", "image": "missing.png", "caption": "a missing file"},
        {"key": "a6", "image": "anim.gif", "caption": "a gif"},
        {"key": "a7", "image": "ok2.jpg", "caption": "a purple triangle"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    return path


def test_bad_input_is_quarantined_with_reasons_and_reconciled(tmp_path):
    table = _broken_table(tmp_path)
    out = tmp_path / "out"
    manifest = write_shards(iter_table(table, tmp_path / "images", key_col="key"), out, process=record_to_sample,
                            shard_size=4, progress=False)
    assert manifest["counts"] == {"inputs": 10, "written": 2, "quarantined": 8}
    q = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    reasons = {e["key"]: e["reason"] for e in q}
    assert reasons["a2"].startswith("corrupt image")
    assert reasons["a3"].startswith("corrupt image")  # truncation is caught by a full decode
    assert reasons["a4"] == "empty caption"
    assert "invalid sample key 'bad.key'" in reasons["bad.key"]
    assert reasons["a1"].startswith("duplicate key")
    assert reasons["a5"].startswith("unreadable image")
    assert reasons["a6"].startswith("unsupported image format: GIF")
    assert any(e["reason"].startswith("unreadable JSONL line") for e in q)
    assert manifest["quarantine_reasons"] == {
        "corrupt image": 2, "duplicate key": 1, "empty caption": 1, "invalid sample key": 1,
        "unreadable JSONL line": 1, "unreadable image": 1, "unsupported image format": 1}
    written = [m.name for t in out.glob("*.tar") for m in tarfile.open(t)]
    assert sorted(written) == ["a1.json", "a1.png", "a1.txt", "a7.jpg", "a7.json", "a7.txt"]


def test_undecodable_caption_and_broken_shard_members(tmp_path):
    src = tmp_path / "src.tar"
    with tarfile.open(src, "w") as tar:
        for name, data in [("x1.jpg", image_bytes((1, 1, 1), fmt="JPEG")), ("x1.txt", b"ok caption"),
                           ("x2.jpg", image_bytes((2, 2, 2), fmt="JPEG")), ("x2.txt", b"\xff\xfe bad utf8"),
                           ("x3.txt", b"no image here"), ("x4.jpg", image_bytes((4, 4, 4), fmt="JPEG")),
                           ("x4.json", b"{broken")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    truncated = tmp_path / "trunc.tar"
    truncated.write_bytes(src.read_bytes()[:1500])
    manifest = write_shards(iter_webdataset(f"{tmp_path}/{{src,trunc}}.tar"), tmp_path / "out",
                            process=record_to_sample, shard_size=100, progress=False)
    q = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    # the cut (at byte 1500, in the padding after x1.jpg) leaves trunc.tar's x1 unreadable, and nothing after it
    assert [(Path(e["source"]).name, reason_category(e["reason"])) for e in q] == [
        ("src.tar:x2", "undecodable caption"), ("src.tar:x3", "no image member"),
        ("src.tar:x4", "unreadable json member"), ("trunc.tar:x1", "unreadable shard member")]
    assert manifest["counts"] == {"inputs": 5, "written": 1, "quarantined": 4}


RESUMABLE_JOB = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.test_shards import job_items
    from clipneg.shards import write_shards
    slow = sys.argv[2] == "slow"
    def process(s):
        if slow:
            time.sleep(0.03)
        return s
    write_shards(job_items(), sys.argv[1], process=process, shard_size=10, progress=False, info={{"job": 1}})
""")


def job_items():
    """Samples, a quarantined input and a duplicate key, so resume is checked on the quarantine too."""
    for i, s in enumerate(_samples(57)):
        if i == 13:
            yield Quarantined("k0013", "corrupt image: test", "test:13")
        elif i == 31:
            s.key = "k0030"
            yield s
        else:
            yield s


def _run_job(out: Path, slow: bool) -> subprocess.Popen:
    script = out.parent / "job.py"
    script.write_text(RESUMABLE_JOB.format(root=str(ROOT)))
    return subprocess.Popen([sys.executable, str(script), str(out), "slow" if slow else "fast"])


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert _run_job(whole, slow=False).wait(timeout=120) == 0
    proc = _run_job(resumed, slow=True)
    deadline = time.time() + 120
    while not (resumed / "_parts" / "train-000002.json").exists():
        assert time.time() < deadline and proc.poll() is None, "writer finished or hung before it could be killed"
        time.sleep(0.02)
    time.sleep(0.1)  # kill in the middle of the fourth shard
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (resumed / "manifest.json").exists()
    assert not (resumed / "_parts" / "train-000005.json").exists()
    assert _run_job(resumed, slow=False).wait(timeout=120) == 0
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(resumed) for p in resumed.rglob("*") if p.is_file())
    for rel in files:
        assert (whole / rel).read_bytes() == (resumed / rel).read_bytes(), rel
    manifest = json.loads((whole / "manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 57, "written": 55, "quarantined": 2}


def test_resume_into_a_run_with_another_configuration_is_refused(tmp_path):
    import pytest

    info = {"generators": [{"name": "rules", "version": "1.1.0", "config": {"seed": 0}}], "seed": 0}
    first = write_shards(_samples(5), tmp_path, shard_size=2, info=info, progress=False)
    # the same configuration resumes (here: finds every chunk committed) and gives the same manifest
    assert write_shards(_samples(5), tmp_path, shard_size=2, info=info, progress=False) == first
    other = {**info, "seed": 1}
    with pytest.raises(ValueError, match=r"another configuration \(differs in: seed\).*new --out"):
        write_shards(_samples(5), tmp_path, shard_size=2, info=other, progress=False)
    assert json.loads((tmp_path / "manifest.json").read_text()) == first  # nothing was touched


def test_process_errors_other_than_bad_input_propagate(tmp_path):
    def buggy(s):
        raise KeyError("a bug, not bad input")

    import pytest

    with pytest.raises(KeyError):
        write_shards(_samples(3), tmp_path, process=buggy, progress=False)


def test_quarantine_error_from_process(tmp_path):
    def reject_odd(s):
        if int(s.key[1:]) % 2:
            raise QuarantineError("odd sample")
        return s

    manifest = write_shards(_samples(6), tmp_path, process=reject_odd, shard_size=4, progress=False)
    assert manifest["counts"] == {"inputs": 6, "written": 3, "quarantined": 3}
    assert manifest["quarantine_reasons"] == {"odd sample": 3}
