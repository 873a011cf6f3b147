"""`clipneg data download` logic against a local HTTP server on 127.0.0.1: resume, hash checks, extraction."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from clipneg.eval.download import (
    DATASETS,
    DownloadError,
    RemoteFile,
    download_file,
    expand_names,
    fetch,
    safe_extract,
    verify_dataset,
)

PAYLOAD = bytes(range(256)) * 400  # 100 KiB


class Handler(BaseHTTPRequestHandler):
    honour_range = True
    seen_ranges: list[str | None] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        rng = self.headers.get("Range")
        type(self).seen_ranges.append(rng)
        if self.path == "/missing":
            self.send_error(404, "Not Found")
            return
        body, status = PAYLOAD, 200
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(PAYLOAD):
                self.send_error(416)
                return
            body, status = PAYLOAD[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.seen_ranges = []
    Handler.honour_range = True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_and_verify(server, tmp_path):
    rf = RemoteFile(f"{server}/f.bin", "x/f.bin", sha256=SHA)
    path = download_file(rf, tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and Handler.seen_ranges == [None]
    download_file(rf, tmp_path, progress=False)  # present and verified: no second request
    assert len(Handler.seen_ranges) == 1


def test_resume_with_range(server, tmp_path):
    part = tmp_path / "f.bin.part"
    part.write_bytes(PAYLOAD[:1000])
    fetch(f"{server}/f.bin", tmp_path / "f.bin")
    assert Handler.seen_ranges == ["bytes=1000-"] and (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert not part.exists()


def test_server_ignoring_range_restarts(server, tmp_path):
    Handler.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage")
    fetch(f"{server}/f.bin", tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_complete_part_gets_416_and_is_kept(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    fetch(f"{server}/f.bin", tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_hash_mismatch_keeps_bad_file_and_says_so(server, tmp_path):
    rf = RemoteFile(f"{server}/f.bin", "f.bin", sha256="0" * 64)
    with pytest.raises(DownloadError, match="differs|!= pinned"):
        download_file(rf, tmp_path, progress=False)
    assert (tmp_path / "f.bin.bad").read_bytes() == PAYLOAD and not (tmp_path / "f.bin").exists()


def test_http_error_is_clear(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{server}/missing", tmp_path / "m.bin")


def test_unpinned_file_records_sha256(server, tmp_path):
    download_file(RemoteFile(f"{server}/f.bin", "f.bin"), tmp_path, progress=False)
    assert (tmp_path / "f.bin.sha256").read_text().split()[0] == SHA


def test_zip_extraction_and_traversal_guard(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("val2017/a.jpg", b"x")
    safe_extract(good, tmp_path / "out")
    assert (tmp_path / "out" / "val2017" / "a.jpg").read_bytes() == b"x"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", b"x")
    with pytest.raises(DownloadError, match="escapes"):
        safe_extract(evil, tmp_path / "out")


def test_registry_names_and_pins():
    assert expand_names(["aro"]) == ["aro-vg-relation", "aro-vg-attribution", "aro-images"]
    assert all(rf.sha256 for rf in DATASETS["sugarcrepe"][1]) and len(DATASETS["sugarcrepe"][1]) == 7
    with pytest.raises(DownloadError, match="sign-up"):
        expand_names(["flickr30k"])
    from clipneg.eval.download import SUGARCREPE_SHA256
    from clipneg.eval.sugarcrepe import PINNED_SHA256

    assert PINNED_SHA256 == SUGARCREPE_SHA256


def test_verify_detects_changed_file(tmp_path):
    from clipneg.eval.download import SUGARCREPE_SHA256

    d = tmp_path / "sugarcrepe"
    d.mkdir()
    for s in SUGARCREPE_SHA256:
        (d / f"{s}.json").write_text("{}")
    problems = verify_dataset("sugarcrepe", tmp_path)
    assert len(problems) == 7 and "!= pinned" in problems[0]
