"""A real HTTP server on 127.0.0.1 that speaks ``POST /v1/chat/completions`` with scripted replies.

Tests (and bench/llm_client.py) drive the LLM client against it: no model, no network. A *script* maps each
request to a :class:`Reply`: a completion, an HTTP error with headers (429 + Retry-After), a delay longer than the
client's timeout, a malformed body, or a dropped connection. The script gets the parsed request body and how many
times an identical body was seen before, so "fail twice, then answer" is deterministic under any concurrency.
Every request is recorded (headers lower-cased, parsed body, arrival time) and the peak number in flight is kept.

Run standalone (the benchmark does, so the server's threads do not share the client's GIL)::

    python -m tests.openai_server --delay 0.02        # prints the base URL on its first line, serves until killed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the assistant message of a 200 reply
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    raw: bytes | None = None  # a body sent as is (malformed JSON, an HTML error page ...)
    drop: bool = False  # close the connection without answering
    usage: tuple[int, int] = (50, 20)  # prompt_tokens, completion_tokens

    @classmethod
    def json(cls, obj: dict[str, Any], **kw: Any) -> Reply:
        return cls(content=json.dumps(obj), **kw)

    @classmethod
    def error(cls, status: int, retry_after: str | None = None, **kw: Any) -> Reply:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls(status=status, raw=json.dumps({"error": {"message": f"scripted {status}"}}).encode(),
                   headers=headers, **kw)


class _HTTPServer(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a burst of new connections beyond it has its SYNs dropped and the client
    # sees a connect timeout that no real server would cause.
    request_queue_size = 256


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    time: float


Script = Callable[[dict[str, Any], int], Reply]


def last_user_message(body: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


def query_of(body: dict[str, Any]) -> tuple[str, str]:
    """(kind, caption) of a request built by clipneg.generators.llm.prompts."""
    from clipneg.generators.llm.prompts import parse_user_message

    return parse_user_message(last_user_message(body))


def fixed_script(body: dict[str, Any], seen: int) -> Reply:
    """The benchmark's script: the same small valid completion for every request."""
    return Reply.json({"kind": "replace_att", "abstain": False, "reason": "", "edit": {"from": "red", "to": "green"},
                       "caption": "a green cube"})


class ScriptedServer:
    """``with ScriptedServer(script) as server: ... server.url ... server.requests``."""

    def __init__(self, script: Script = fixed_script, delay: float = 0.0) -> None:
        self.script = script
        self.delay = delay  # added to every reply (benchmark latency)
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._seen: Counter = Counter()
        self._lock = threading.Lock()
        self._httpd = _HTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="scripted-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _reply_for(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return Reply.error(400)
        ident = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._lock:
            self.requests.append(Recorded(path, headers, body, time.monotonic()))
            seen = self._seen[ident]
            self._seen[ident] += 1
        if path != "/v1/chat/completions":
            return Reply.error(404)
        return self.script(body, seen)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
            # Headers and body go out in two writes; with Nagle on, the client's delayed ACK stalls each reply
            # by ~40 ms.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests capture logs themselves
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                try:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    reply = server._reply_for(self.path, headers, raw)
                    if reply.delay or server.delay:
                        time.sleep(reply.delay + server.delay)
                    if reply.drop:
                        self.close_connection = True
                        return
                    self._send(reply, json.loads(raw).get("model", "") if raw.startswith(b"{") else "")
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                    self.close_connection = True
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, reply: Reply, model: str) -> None:
                if reply.raw is not None:
                    data = reply.raw
                else:
                    data = json.dumps({
                        "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
                        "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                                     "finish_reason": reply.finish_reason}],
                        "usage": {"prompt_tokens": reply.usage[0], "completion_tokens": reply.usage[1],
                                  "total_tokens": sum(reply.usage)},
                    }).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(Reply.error(404), "")

        return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every reply")
    args = parser.parse_args(argv)
    server = ScriptedServer(fixed_script, delay=args.delay)
    print(server.url, flush=True)
    try:
        server._httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
