"""Typed few-shot prompts, one per negative kind plus a paraphrase prompt, and the JSON the model must answer with.

Each template is data (``templates/<kind>.json``): an id, an instruction, the fields of the edit the model must name,
and a pool of in-context examples. A request samples a few examples from the pool with its own seed, so the same
(caption, kind, seed) always gets the same prompt, and different seeds see different demonstrations (DeGLA's typed
prompts with a curated pool; TripletCLIP's Mistral prompts). The examples are rendered as earlier chat turns, which
instruction-tuned models follow better than examples pasted into one message.

The reply is one JSON object in a single shape for every kind, so one JSON schema can constrain decoding on servers
that support ``response_format`` (vLLM, OpenAI, llama.cpp, Ollama)::

    {"kind": "replace_att", "abstain": false, "reason": "", "edit": {"from": "red", "to": "green"},
     "caption": "A green car parked in front of a house."}
    {"kind": "swap_att", "abstain": true, "reason": "the caption has only one attribute", "edit": {...}, "caption": ""}

The root is an object with every field required and no others, because OpenAI's strict structured outputs refuse a
root ``anyOf``; the client validates the reply anyway (servers that ignore the schema answer HTTP 200 regardless).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

PROMPT_FORMAT = 1  # bump when build_messages changes the text it sends, so caches keyed on template hashes turn over

SUGARCREPE_KINDS: tuple[str, ...] = (
    "replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att",
)
PARAPHRASE = "paraphrase"
TEMPLATE_KINDS: tuple[str, ...] = (*SUGARCREPE_KINDS, PARAPHRASE)

SYSTEM = (
    "You edit image captions to make training data for an image-text model. You get a caption and a kind of edit. "
    "Reply with exactly one JSON object and nothing else: no prose, no code fence. The new caption is one sentence of "
    "at most 40 words. If the caption does not allow this kind of edit, set \"abstain\" to true, give a short "
    "\"reason\", leave the edit fields and \"caption\" empty."
)


@dataclass(frozen=True)
class Template:
    """One kind's prompt: instruction, the edit fields the reply must fill, and the in-context example pool."""

    id: str
    kind: str
    instruction: str
    edit_fields: dict[str, str]
    examples: tuple[dict[str, Any], ...]

    @property
    def sha256(self) -> str:
        """Hash of everything that shapes the prompt (for the manifest and the cache key)."""
        blob = {"format": PROMPT_FORMAT, "system": SYSTEM, "id": self.id, "kind": self.kind,
                "instruction": self.instruction, "edit": self.edit_fields, "examples": list(self.examples)}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def system_message(self) -> str:
        fields = ", ".join(f'"{k}": {v}' for k, v in self.edit_fields.items())
        edit = f' "edit" holds {fields}.' if fields else ' "edit" is an empty object.'
        shape = json.dumps(self.render_reply({k: "..." for k in self.edit_fields}, "..."))
        return f"{SYSTEM}\n\nKind {self.kind}: {self.instruction}\n\nReply shape: {shape}.{edit}"

    def render_reply(self, edit: dict[str, str] | None, caption: str, reason: str = "") -> dict[str, Any]:
        """A reply in the one shape the schema allows; ``edit=None`` renders an abstention."""
        if edit is None:
            return {"kind": self.kind, "abstain": True, "reason": reason,
                    "edit": {k: "" for k in self.edit_fields}, "caption": ""}
        return {"kind": self.kind, "abstain": False, "reason": "", "edit": dict(edit), "caption": caption}

    def example_reply(self, example: dict[str, Any]) -> dict[str, Any]:
        if "abstain" in example:
            return self.render_reply(None, "", example["abstain"])
        return self.render_reply(example.get("edit", {}), example["reply"])

    def json_schema(self) -> dict[str, Any]:
        """The reply's JSON schema (a subset OpenAI strict mode, xgrammar and llama.cpp grammars all accept)."""
        edit = {"type": "object", "properties": {k: {"type": "string"} for k in self.edit_fields},
                "required": list(self.edit_fields), "additionalProperties": False}
        return {"type": "object",
                "properties": {"kind": {"type": "string", "enum": [self.kind]}, "abstain": {"type": "boolean"},
                               "reason": {"type": "string"}, "edit": edit, "caption": {"type": "string"}},
                "required": ["kind", "abstain", "reason", "edit", "caption"], "additionalProperties": False}

    def response_format(self) -> dict[str, Any]:
        return {"type": "json_schema",
                "json_schema": {"name": f"clipneg_{self.kind}", "schema": self.json_schema(), "strict": True}}


def user_message(kind: str, caption: str) -> str:
    """The query turn. tests/openai_server.py parses this exact layout back into (kind, caption)."""
    return f"Kind: {kind}\nCaption: {caption}"


def parse_user_message(text: str) -> tuple[str, str]:
    """Inverse of :func:`user_message` (for scripted servers and debugging)."""
    head, _, caption = text.partition("\nCaption: ")
    return head.removeprefix("Kind: ").strip(), caption


def build_messages(template: Template, caption: str, seed: int, n_examples: int) -> list[dict[str, str]]:
    """System turn, ``n_examples`` demonstrations drawn from the pool with ``seed``, then the query."""
    pool = [e for e in template.examples if e["caption"].strip().lower() != caption.strip().lower()]
    rng = random.Random(seed)
    shots = rng.sample(pool, min(n_examples, len(pool)))
    messages = [{"role": "system", "content": template.system_message()}]
    for ex in shots:
        messages.append({"role": "user", "content": user_message(template.kind, ex["caption"])})
        messages.append({"role": "assistant", "content": json.dumps(template.example_reply(ex))})
    messages.append({"role": "user", "content": user_message(template.kind, caption)})
    return messages


@cache
def load_template(kind: str) -> Template:
    """The project's template for ``kind`` (one of TEMPLATE_KINDS)."""
    if kind not in TEMPLATE_KINDS:
        raise ValueError(f"no LLM prompt template for kind {kind!r}; use one of {', '.join(TEMPLATE_KINDS)}")
    raw = json.loads(resources.files(__package__).joinpath("templates", f"{kind}.json").read_text("utf-8"))
    return Template(raw["id"], raw["kind"], raw["instruction"], dict(raw["edit"]), tuple(raw["examples"]))
