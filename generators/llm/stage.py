"""``clipneg generate --text llm``: typed LLM rewrites of each caption into hard negatives and paraphrases.

For every sample, kind in ``config.kinds`` and slot ``j < config.k``, the stage asks the backend for one rewrite
with the seed ``stable_seed(caption, kind, config.seed, j, attempt) mod 2**31``, validates the reply
(:mod:`.checks`), and on a rejection re-asks at most ``config.reasks`` times with the next attempt's seed. An
accepted negative becomes ``NegText(text, kind, "llm", seed)``; an accepted ``paraphrase`` becomes
``Paraphrase(text, "llm", seed)`` with no negatives (a later stage adds word-order negatives). A sample always
comes back (never quarantined): a caption the LLM cannot edit just keeps the negatives it already had.

Requests go out in rounds (all first attempts of a chunk, then all re-asks), each round one backend call, so an
HTTP backend keeps ``max_in_flight`` requests busy and a local model batches. Completions are cached on disk
(:mod:`.cache`): a rerun with the same config sends zero requests.

Counting (``stats``): ``produced[kind]`` counts replies received, each of which is either ``kept[kind]`` or
``rejected[(kind, "llm", reason)]``, so produced == kept + rejected per kind. Requests that failed outright
(after the client's retries) produce nothing and are counted in ``extra["failures"]``. ``extra`` also holds
``slots`` (kind x k per sample), ``requests`` (sent, not from cache), ``cache_hits``, ``retries``, ``reasks``,
``prompt_tokens`` and ``completion_tokens``; ``slots == kept + extra["unfilled"]``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clipneg.schema import NegText, Paraphrase, Sample

from ..base import StageStats, stable_seed
from .backends import SEED_MODULUS, Backend, BackendError, ChatRequest, Completion
from .cache import CompletionCache, cache_key
from .checks import CLIP_CONTEXT, TOKEN_COUNTERS, check_reply, norm
from .prompts import PARAPHRASE, SUGARCREPE_KINDS, build_messages, load_template

logger = logging.getLogger(__name__)

BACKENDS = ("openai", "vllm", "transformers")


@dataclass(frozen=True)
class LLMConfig:
    """What the LLM rewriter does; all of it goes into the manifest (``api_key_env`` is a variable's name, the key
    itself is read from the environment and never stored)."""

    backend: str = "openai"  # "openai" (any OpenAI-compatible server) | "vllm" (offline engine) | "transformers"
    base_url: str = "http://127.0.0.1:8000/v1"  # openai: where /chat/completions lives (vllm serve, Ollama /v1)
    model: str = ""  # served model name (openai), or a hub id / local path (vllm, transformers)
    api_key_env: str = "OPENAI_API_KEY"  # NAME of the environment variable holding the key (unset: no key sent)
    kinds: tuple[str, ...] = SUGARCREPE_KINDS  # negative kinds to ask for; "paraphrase" adds Paraphrases
    k: int = 1  # accepted rewrites wanted per kind and caption
    seed: int = 0
    temperature: float = 0.7
    max_tokens: int = 160  # explicit: vLLM's offline SamplingParams defaults to 16, which truncates every reply
    n_examples: int = 3  # in-context examples drawn per request from the kind's pool
    reasks: int = 2  # extra attempts (new seed) for a slot whose reply was rejected
    max_in_flight: int = 32  # openai: concurrent requests
    retries: int = 4  # openai: retries per request on connection errors, timeouts, 429, 5xx
    backoff: float = 0.5  # openai: first backoff in seconds, doubled per retry
    max_backoff: float = 30.0  # openai: longest wait, Retry-After included
    timeout: float = 60.0  # openai: seconds per request
    use_response_format: bool = True  # openai: send response_format json_schema (turn off for servers that 400)
    cache_dir: str | None = None  # on-disk completion cache; None: no cache
    token_counter: str = "open_clip"  # CLIP length check: "open_clip" (exact BPE) or "approx" (no open_clip import)
    context: int = CLIP_CONTEXT
    batch_size: int = 16  # transformers: prompts per generate call
    device: str | None = None  # transformers: torch device (default cuda if available)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"llm backend must be one of {', '.join(BACKENDS)} (got: {self.backend!r})")
        bad = [k for k in self.kinds if k != PARAPHRASE and k not in SUGARCREPE_KINDS]
        if bad or not self.kinds:
            allowed = ", ".join((*SUGARCREPE_KINDS, PARAPHRASE))
            raise ValueError(f"llm kinds must be among {allowed} (got: {bad or '()'})")
        if self.k < 1 or self.reasks < 0 or self.n_examples < 0 or self.max_tokens < 1:
            raise ValueError("llm k and max_tokens must be >= 1, reasks and n_examples >= 0")
        if self.token_counter not in TOKEN_COUNTERS:
            raise ValueError(f"token_counter must be one of {', '.join(TOKEN_COUNTERS)} (got: {self.token_counter!r})")


def build_backend(config: LLMConfig) -> Backend:
    """The backend ``config.backend`` names (heavy imports happen here, not at module import)."""
    if config.backend == "openai":
        from .client import OpenAIBackend, RetryPolicy

        return OpenAIBackend(config.base_url, config.model, api_key_env=config.api_key_env,
                             max_in_flight=config.max_in_flight, timeout=config.timeout,
                             retry=RetryPolicy(config.retries, config.backoff, config.max_backoff),
                             use_response_format=config.use_response_format)
    if not config.model:
        raise BackendError(f"backend {config.backend!r} needs model: a hub id or a local path")
    if config.backend == "vllm":
        from .backends import VLLMBackend

        return VLLMBackend(config.model)
    from .backends import TransformersBackend

    return TransformersBackend(config.model, device=config.device, batch_size=config.batch_size)


@dataclass
class _Slot:
    index: int  # sample position in the chunk
    kind: str
    j: int
    attempt: int = 0
    seed: int = 0
    key: str = ""
    parts: dict[str, Any] = field(default_factory=dict)


class LLMRewriter:
    """The ``llm`` caption generator stage (see the module docstring). ``backend`` may be given ready-made (a
    built :class:`TransformersBackend`, a test double); otherwise it is built from ``config`` on first use."""

    name = "llm"
    version = "1"

    def __init__(self, config: LLMConfig, backend: Backend | None = None) -> None:
        self.config = config
        self._backend = backend
        self.templates = {kind: load_template(kind) for kind in config.kinds}
        self.stats = StageStats()
        self._cache = CompletionCache(config.cache_dir) if config.cache_dir else None
        self._count_tokens = TOKEN_COUNTERS[config.token_counter]

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = build_backend(self.config)
        return self._backend

    def _backend_identity(self) -> tuple[str, str]:
        if self._backend is not None:
            return self._backend.kind, self._backend.model_id
        return self.config.backend, self.config.model

    def manifest(self) -> dict[str, Any]:
        kind, model = self._backend_identity()
        backend = self._backend.describe() if self._backend is not None else {"kind": kind, "model": model}
        if kind == "openai" and "base_url" not in backend:
            from .client import public_url

            backend["base_url"] = public_url(self.config.base_url)
        config = dataclasses.asdict(self.config)
        config["base_url"] = backend.get("base_url", config["base_url"])
        return {"name": self.name, "version": self.version, "config": config, "backend": backend,
                "templates": {k: {"id": t.id, "sha256": t.sha256} for k, t in self.templates.items()},
                "sampling": {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens,
                             "seed": self.config.seed, "n_examples": self.config.n_examples,
                             "reasks": self.config.reasks, "response_format": self.config.use_response_format}}

    def _prepare(self, slot: _Slot, caption: str) -> ChatRequest:
        cfg, template = self.config, self.templates[slot.kind]
        slot.seed = stable_seed(caption, slot.kind, cfg.seed, slot.j, slot.attempt) % SEED_MODULUS
        backend_kind, model = self._backend_identity()
        slot.parts = {"backend": backend_kind, "model": model, "template": template.sha256, "caption": caption,
                      "kind": slot.kind, "seed": slot.seed, "temperature": cfg.temperature,
                      "max_tokens": cfg.max_tokens, "n_examples": cfg.n_examples,
                      "response_format": cfg.use_response_format}
        slot.key = cache_key(slot.parts)
        return ChatRequest(tuple(build_messages(template, caption, slot.seed, cfg.n_examples)), slot.seed,
                           cfg.max_tokens, cfg.temperature, template.response_format())

    def _fetch(self, slots: list[_Slot], requests: list[ChatRequest]) -> list[Completion]:
        """Completions for ``requests``: from the cache where there, the rest in one backend call (identical
        requests, e.g. of duplicate captions in a chunk, go out once)."""
        extra = self.stats.extra
        cached = self._cache.get_many([s.key for s in slots]) if self._cache is not None else {}
        first: dict[str, int] = {}
        for i, s in enumerate(slots):
            if s.key not in cached:
                first.setdefault(s.key, i)
        todo = list(first.values())
        fresh = self.backend.complete([requests[i] for i in todo]) if todo else []
        if len(fresh) != len(todo):
            raise BackendError(f"backend {self.backend.kind} returned {len(fresh)} completions for {len(todo)} "
                               "requests")
        extra["cache_hits"] += sum(s.key in cached for s in slots)
        extra["requests"] += len(todo)
        for c in fresh:
            extra["retries"] += max(0, c.attempts - 1)
            extra["failures"] += c.error is not None
            extra["prompt_tokens"] += c.prompt_tokens
            extra["completion_tokens"] += c.completion_tokens
        if self._cache is not None:
            self._cache.put_many((slots[i].key, slots[i].parts, c) for i, c in zip(todo, fresh, strict=True))
        got = {**cached, **{slots[i].key: c for i, c in zip(todo, fresh, strict=True)}}
        return [got[s.key] for s in slots]

    def __call__(self, chunk: Sequence[Sample]) -> list[Sample]:
        cfg, stats = self.config, self.stats
        taken = [{norm(t.text) for t in s.neg_texts} | {norm(p.text) for p in s.paraphrases} for s in chunk]
        accepted: list[list[tuple[_Slot, str]]] = [[] for _ in chunk]
        pending = [_Slot(i, kind, j) for i in range(len(chunk)) for kind in cfg.kinds for j in range(cfg.k)]
        stats.extra["slots"] += len(pending)
        for attempt in range(cfg.reasks + 1):
            if not pending:
                break
            if attempt:
                stats.extra["reasks"] += len(pending)
            requests = [self._prepare(s, chunk[s.index].caption) for s in pending]
            completions = self._fetch(pending, requests)
            retry: list[_Slot] = []
            for slot, c in zip(pending, completions, strict=True):
                if c.error is not None:
                    continue  # the client already retried; the slot stays unfilled
                stats.produced[slot.kind] += 1
                verdict = check_reply(self.templates[slot.kind], chunk[slot.index].caption, c.text, c.finish_reason,
                                      taken=taken[slot.index], count_tokens=self._count_tokens, context=cfg.context)
                if verdict.text is not None:
                    stats.kept[slot.kind] += 1
                    taken[slot.index].add(norm(verdict.text))
                    accepted[slot.index].append((slot, verdict.text))
                    continue
                stats.reject(slot.kind, self.name, verdict.reason or "rejected")
                if verdict.reask and attempt < cfg.reasks:
                    slot.attempt += 1
                    retry.append(slot)
            pending = retry
        n_slots = len(chunk) * len(cfg.kinds) * cfg.k
        stats.extra["unfilled"] += n_slots - sum(len(got) for got in accepted)
        order = {kind: n for n, kind in enumerate(cfg.kinds)}
        out = []
        for sample, got in zip(chunk, accepted, strict=True):
            got.sort(key=lambda sv: (order[sv[0].kind], sv[0].j))
            negs = [NegText(text, s.kind, self.name, s.seed) for s, text in got if s.kind != PARAPHRASE]
            paras = [Paraphrase(text, self.name, s.seed) for s, text in got if s.kind == PARAPHRASE]
            if not got:
                stats.samples_without += 1
            out.append(dataclasses.replace(sample, neg_texts=[*sample.neg_texts, *negs],
                                           paraphrases=[*sample.paraphrases, *paras]))
        return out

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> LLMRewriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
