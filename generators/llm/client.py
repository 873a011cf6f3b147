"""An async client for OpenAI-compatible chat servers (``vllm serve``, Ollama, llama.cpp server, hosted APIs).

Requests go out through one ``httpx.AsyncClient`` with at most ``max_in_flight`` in flight (an
``asyncio.Semaphore``, held only while a request is on the wire, never during a backoff sleep). Each request sets
``max_tokens``, ``temperature`` and its own ``seed`` and asks for one choice: Ollama's OpenAI endpoint has no ``n``,
so k negatives are k seeded requests everywhere (each cached on its own). ``response_format`` carries a
``json_schema`` when ``use_response_format`` is on; vLLM ignores its removed ``guided_json`` field silently, and any
server may ignore the schema, so the stage validates every reply.

Faults: connection errors, timeouts, 408/409/425/429 and 5xx are retried ``RetryPolicy.retries`` times with
exponential backoff and jitter, waiting at least what ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP
date) asks, capped at ``max_backoff``. A 400/422 fails that request only. 401/403/404 raise :class:`BackendError`
at once: they would fail every request.

The API key is read from the environment variable named by ``api_key_env`` and lives only in the request headers;
it is redacted from every message this module logs or raises, and never appears in ``repr`` or ``describe()``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .backends import BackendError, ChatRequest, Completion

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429})
FATAL_STATUS = {401: "the server refused the API key: set the environment variable {env} (see api_key_env)",
                403: "the server refused the API key: set the environment variable {env} (see api_key_env)",
                404: "no chat endpoint at {url}: base_url must end where /chat/completions is served, e.g. "
                     "http://127.0.0.1:8000/v1 for vllm serve or http://127.0.0.1:11434/v1 for Ollama"}


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra tries after the first; the n-th waits ``backoff * 2**n`` times a jitter in [0.5, 1],
    or what the server's Retry-After asks if that is longer, never more than ``max_backoff`` seconds."""

    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = self.backoff * (2**attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self.max_backoff)


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (RFC 9110: seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment (what may go into logs and the manifest)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class OpenAIBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint under ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``).

    ``complete`` is synchronous: it runs the requests on a private event loop in a daemon thread, which keeps
    one connection pool across chunks and works whether or not the caller already runs an event loop.
    ``acomplete`` is the coroutine for callers with their own loop.
    """

    kind = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 max_in_flight: int = 32, timeout: float = 60.0, retry: RetryPolicy | None = None,
                 use_response_format: bool = True, extra_body: dict[str, Any] | None = None,
                 transport: Any = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise BackendError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1 (got: {base_url!r})")
        if not model:
            raise BackendError("the OpenAI backend needs a model id (the name the server serves, e.g. the "
                               "`vllm serve` argument or an Ollama tag)")
        if max_in_flight < 1:
            raise BackendError(f"max_in_flight must be at least 1 (got: {max_in_flight})")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model_id = model
        self.api_key_env = api_key_env
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.use_response_format = use_response_format
        self.extra_body = dict(extra_body or {})
        self._transport = transport
        key = os.environ.get(api_key_env) if api_key_env else None
        self._secrets = tuple(s for s in (key,) if s)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        else:
            logger.info("no API key in $%s: sending requests without Authorization (fine for local servers)",
                        api_key_env)
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={public_url(self.base_url)!r}, model={self.model_id!r})"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "base_url": public_url(self.base_url), "model": self.model_id,
                "api_key_env": self.api_key_env, "response_format": self.use_response_format,
                "max_in_flight": self.max_in_flight, "timeout": self.timeout,
                "retries": self.retry.retries, "backoff": self.retry.backoff, "max_backoff": self.retry.max_backoff}

    def redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_id, "messages": list(request.messages),
                                "max_tokens": request.max_tokens, "temperature": request.temperature,
                                "seed": request.seed, "stream": False, **self.extra_body}
        if self.use_response_format and request.response_format is not None:
            body["response_format"] = request.response_format
        return body

    def _new_client(self) -> Any:
        import httpx

        limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight)
        # No pool timeout: the semaphore already keeps requests in flight <= connections.
        timeout = httpx.Timeout(self.timeout, pool=None)
        return httpx.AsyncClient(limits=limits, timeout=timeout, transport=self._transport)

    async def acomplete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """One completion per request, in order, with at most ``max_in_flight`` requests on the wire."""
        loop = asyncio.get_running_loop()
        if self._client is None:
            self._client, self._client_loop = self._new_client(), loop
        if self._client_loop is not loop:  # a client is bound to the loop that opened its connections
            async with self._new_client() as client:
                return await self._gather(client, requests)
        return await self._gather(self._client, requests)

    async def _gather(self, client: Any, requests: Sequence[ChatRequest]) -> list[Completion]:
        sem = asyncio.Semaphore(self.max_in_flight)
        tasks = [asyncio.ensure_future(self._one(client, sem, r)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:  # a BackendError (bad key, wrong URL) or a cancel: stop the others, then re-raise
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _one(self, client: Any, sem: asyncio.Semaphore, request: ChatRequest) -> Completion:
        import httpx

        content = json.dumps(self.body(request)).encode()
        attempt = 0
        while True:
            retry_after = None
            async with sem:
                try:
                    resp = await client.post(self.url, content=content, headers=self._headers)
                except httpx.TimeoutException:
                    error = f"timeout after {self.timeout:g} s"
                except httpx.RequestError as e:  # connect/read/write errors, a dropped connection, bad encoding
                    error = f"connection error ({type(e).__name__}: {self.redact(str(e))[:200]})"
                else:
                    verdict, result, retry_after = self._handle(resp, attempt)
                    if verdict == "ok":
                        return result
                    if verdict == "fail":
                        return Completion(None, attempts=attempt + 1, error=result)
                    error = result
            if attempt >= self.retry.retries:
                self._warn_once(error.split(" (")[0], f"request failed after {attempt + 1} tries: {error}")
                return Completion(None, attempts=attempt + 1, error=error)
            delay = self.retry.delay(attempt, retry_after)
            logger.debug("retrying in %.2f s after %s", delay, error)
            await asyncio.sleep(delay)
            attempt += 1

    def _handle(self, resp: Any, attempt: int) -> tuple[str, Any, float | None]:
        """("ok", Completion, None), ("retry", error, retry_after) or ("fail", error, None) for one response."""
        status = resp.status_code
        if status in FATAL_STATUS:
            raise BackendError(f"HTTP {status} from {public_url(self.url)}: "
                               + FATAL_STATUS[status].format(env=self.api_key_env, url=public_url(self.url)))
        if status in RETRY_STATUS or status >= 500:
            return "retry", f"HTTP {status}", parse_retry_after(resp.headers)
        if status != 200:
            detail = self.redact(resp.text[:300])
            hint = " (if the server rejects response_format, set use_response_format=False)" \
                if "response_format" in detail or "json_schema" in detail else ""
            self._warn_once(f"HTTP {status}", f"HTTP {status} from {public_url(self.url)}: {detail}{hint}")
            return "fail", f"HTTP {status}", None
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content")
            usage = data.get("usage") or {}
            completion = Completion(text if isinstance(text, str) else "", choice.get("finish_reason"),
                                    int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                                    attempts=attempt + 1)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return "retry", "malformed response body", None
        return "ok", completion, None

    def _warn_once(self, category: str, message: str) -> None:
        if category not in self._warned:
            self._warned.add(category)
            logger.warning("%s (further %s failures are counted, not logged)", self.redact(message), category)

    # -- the synchronous face the stage uses ------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="clipneg-llm", daemon=True)
            self._thread.start()
        return self._loop

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(self.acomplete(requests), loop).result()

    async def aclose(self) -> None:
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            await self._client.aclose()
            self._client = None

    def close(self) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join()
            self._loop.close()
            self._loop = self._thread = None
