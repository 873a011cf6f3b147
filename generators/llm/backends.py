"""LLM backends behind one interface: a batch of chat requests in, one completion per request out, in order.

| backend          | class                         | where it runs                                                 |
|------------------|-------------------------------|---------------------------------------------------------------|
| ``openai``       | ``client.OpenAIBackend``      | any OpenAI-compatible chat server: ``vllm serve``, Ollama,    |
|                  |                               | llama.cpp server, a hosted API                                |
| ``vllm``         | :class:`VLLMBackend`          | vLLM's offline engine in this process (``LLM.chat``)          |
| ``transformers`` | :class:`TransformersBackend`  | a causal LM by path or hub id, batched ``generate``           |

A backend never raises for one bad request: a request that fails after its retries comes back as a
:class:`Completion` with ``error`` set, and the stage counts it. It raises :class:`BackendError` only for
configuration errors that would fail every request (wrong URL, bad key), with a message that says what to fix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

SEED_MODULUS = 2**31  # llama.cpp and Ollama read the seed as a 32-bit int; vLLM and OpenAI accept any int


class BackendError(RuntimeError):
    """A configuration error that would fail every request; the message says what to change."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request. ``response_format`` is the OpenAI ``json_schema`` form, or None."""

    messages: tuple[dict[str, str], ...]
    seed: int
    max_tokens: int
    temperature: float
    response_format: dict[str, Any] | None = None


@dataclass(frozen=True)
class Completion:
    """The text of a request's first choice, or ``error`` when it failed after ``attempts`` tries."""

    text: str | None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Completion:
        return cls(d.get("text"), d.get("finish_reason"), int(d.get("prompt_tokens", 0)),
                   int(d.get("completion_tokens", 0)), attempts=0)


@runtime_checkable
class Backend(Protocol):
    kind: str  # "openai" | "vllm" | "transformers" (part of the cache key)
    model_id: str

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """One completion per request, in order; failures come back as ``Completion(error=...)``."""
        ...

    def describe(self) -> dict[str, Any]:
        """Identity for the manifest (never secrets)."""
        ...

    def close(self) -> None: ...


def schema_of(request: ChatRequest) -> dict[str, Any] | None:
    if not request.response_format:
        return None
    return request.response_format.get("json_schema", {}).get("schema")


class VLLMBackend:
    """vLLM's offline engine. Not exercised by the CPU tests: keep it thin.

    ``SamplingParams.max_tokens`` defaults to 16, which truncates every reply, so it is always set from the request.
    The JSON schema goes in as structured outputs where this vLLM has them (``StructuredOutputsParams``; older
    releases ``GuidedDecodingParams``); the stage validates every reply regardless.
    """

    kind = "vllm"

    def __init__(self, model: str, **llm_kwargs: Any) -> None:
        try:
            from vllm import LLM
        except ImportError as e:
            raise BackendError("backend 'vllm' needs the vllm package (pip install vllm), or use backend 'openai' "
                               "against a `vllm serve` server") from e
        self.model_id = model
        self.llm = LLM(model=model, **llm_kwargs)

    @staticmethod
    def _structured(schema: dict[str, Any] | None) -> dict[str, Any]:
        if schema is None:
            return {}
        try:
            from vllm.sampling_params import StructuredOutputsParams

            return {"structured_outputs": StructuredOutputsParams(json=schema)}
        except ImportError:
            pass
        try:
            from vllm.sampling_params import GuidedDecodingParams

            return {"guided_decoding": GuidedDecodingParams(json=schema)}
        except ImportError:
            logger.warning("this vllm has no structured outputs; replies are unconstrained (still validated)")
            return {}

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        from vllm import SamplingParams

        params = [SamplingParams(temperature=r.temperature, max_tokens=r.max_tokens, seed=r.seed,
                                 **self._structured(schema_of(r))) for r in requests]
        outputs = self.llm.chat([list(r.messages) for r in requests], sampling_params=params, use_tqdm=False)
        results = []
        for out in outputs:
            choice = out.outputs[0]
            results.append(Completion(choice.text, choice.finish_reason, len(out.prompt_token_ids or ()),
                                      len(choice.token_ids or ())))
        return results

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model_id}

    def close(self) -> None:
        pass


class TransformersBackend:
    """A local causal LM (``AutoModelForCausalLM``) by path or hub id, or an already built model and tokenizer.

    The prompt is the tokenizer's chat template when it has one (a system turn is folded into the first user turn
    for templates that refuse the system role), else a plain ``role: content`` transcript. Requests are batched
    with left padding. Sampling is seeded per request, not per batch: a logits processor draws each row's token
    with that row's own ``torch.Generator`` and greedy decoding then picks it, so a reply does not depend on which
    requests shared its batch. Temperature 0 is plain greedy decoding.
    """

    kind = "transformers"

    def __init__(self, model: Any, tokenizer: Any = None, *, device: str | None = None, dtype: Any = None,
                 batch_size: int = 8, model_id: str | None = None) -> None:
        import torch
        import transformers

        if isinstance(model, str):
            kw: dict[str, Any] = {}
            if dtype is not None:
                major_minor = tuple(int(p) for p in transformers.__version__.split(".")[:2])
                kw["dtype" if major_minor >= (4, 56) else "torch_dtype"] = dtype
            model_id = model_id or model
            tokenizer = tokenizer or transformers.AutoTokenizer.from_pretrained(model)
            model = transformers.AutoModelForCausalLM.from_pretrained(model, **kw)
        elif tokenizer is None:
            raise BackendError("TransformersBackend got a model object but no tokenizer; pass tokenizer=...")
        self.model_id = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise BackendError(f"tokenizer of {self.model_id} has neither a pad nor an eos token; set one")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
        self.tokenizer = tokenizer
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size

    def _prompt(self, messages: Sequence[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            try:
                return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            except Exception as e:  # jinja raises TemplateError for "system role not supported" and the like
                if messages and messages[0]["role"] == "system":
                    merged = [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"},
                              *messages[2:]]
                    return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
                raise BackendError(f"chat template of {self.model_id} failed: {e}") from e
        return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        # One generate call per batch of requests with the same length limit and temperature.
        groups: dict[tuple[int, float], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_tokens, r.temperature), []).append(i)
        for (max_tokens, temperature), idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                part = idx[start:start + self.batch_size]
                done = self._generate([requests[i] for i in part], max_tokens, temperature)
                for i, c in zip(part, done, strict=True):
                    results[i] = c
        return results  # type: ignore[return-value]

    def _generate(self, requests: list[ChatRequest], max_tokens: int, temperature: float) -> list[Completion]:
        import torch

        templated = bool(getattr(self.tokenizer, "chat_template", None))
        enc = self.tokenizer([self._prompt(r.messages) for r in requests], return_tensors="pt", padding=True,
                             add_special_tokens=not templated).to(self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": False,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if self.tokenizer.eos_token_id is not None:
            kwargs["eos_token_id"] = self.tokenizer.eos_token_id
        if temperature > 0:
            from transformers import LogitsProcessorList

            sampler = _seeded_sampler([r.seed for r in requests], temperature)
            kwargs["logits_processor"] = LogitsProcessorList([sampler])
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        eos = self.tokenizer.eos_token_id
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, n_prompt in zip(new, prompt_lens, strict=True):
            ended = eos is not None and eos in row
            tokens = row[:row.index(eos)] if ended else row
            finish = "stop" if ended else "length"
            results.append(Completion(self.tokenizer.decode(tokens, skip_special_tokens=True), finish,
                                      int(n_prompt), len(tokens)))
        return results

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model_id, "device": str(self.device)}

    def close(self) -> None:
        pass


def _seeded_sampler(seeds: list[int], temperature: float) -> Any:
    """A logits processor that samples row i with its own generator seeded by ``seeds[i]`` and leaves only that
    token finite, so the greedy step that follows takes it."""
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators: list[torch.Generator] | None = None

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if self.generators is None:
                self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in seeds]
            probs = torch.softmax(scores.float() / temperature, dim=-1)
            picks = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, picks, 0.0)

    return SeededSampler()
