"""LLM caption rewriter for ``clipneg generate --text llm``: typed prompts, three backends, cache, validation.

Serve a model, then point the stage at it (any OpenAI-compatible server)::

    vllm serve mistralai/Mistral-7B-Instruct-v0.3 --port 8000          # or: ollama serve (base URL :11434/v1)
    clipneg generate pairs.tsv --image-dir images/ --out shards/mine --text rules,llm \\
        --llm-base-url http://127.0.0.1:8000/v1 --llm-model mistralai/Mistral-7B-Instruct-v0.3

From Python::

    stage = LLMRewriter(LLMConfig(base_url="http://127.0.0.1:8000/v1", model="mistralai/Mistral-7B-Instruct-v0.3",
                                  kinds=("replace_att", "swap_att", "paraphrase"), k=2, cache_dir="runs/llm_cache"))
    samples = stage(samples)          # one result per input; stage.stats has kept / rejected-by-reason / extra

Heavy dependencies (httpx, transformers, vllm) are imported by the backend that needs them.
"""

from __future__ import annotations

from .backends import Backend, BackendError, ChatRequest, Completion, TransformersBackend, VLLMBackend
from .cache import CompletionCache, cache_key
from .checks import Verdict, check_reply
from .client import OpenAIBackend, RetryPolicy, parse_retry_after
from .prompts import PARAPHRASE, SUGARCREPE_KINDS, TEMPLATE_KINDS, Template, build_messages, load_template
from .stage import LLMConfig, LLMRewriter, build_backend

__all__ = [
    "PARAPHRASE", "SUGARCREPE_KINDS", "TEMPLATE_KINDS", "Backend", "BackendError", "ChatRequest", "Completion",
    "CompletionCache", "LLMConfig", "LLMRewriter", "OpenAIBackend", "RetryPolicy", "Template",
    "TransformersBackend", "VLLMBackend", "Verdict", "build_backend", "build_messages", "cache_key", "check_reply",
    "load_template", "parse_retry_after",
]
